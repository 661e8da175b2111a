"""Dialogues: the released InstructS2S-200K layout read as it is, one speech segment per human
turn, labels on every answer and its end-of-turn token, whole trailing turns dropped to fit, each
bad turn named, one CTC sequence per answer."""
import json

import pytest
import torch
from transformers import AutoTokenizer

from omni_ds.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omni_ds.data.collator import OmniCollator
from omni_ds.data.dataset import OmniSpeechDataset
from omni_ds.data.manifest import load_manifest
from omni_ds.data.prompt import PromptBuilder
from omni_ds.data.validate import ValidationConfig, validate_manifest
from omni_ds.tiny.tokenizer import write_tiny_tokenizer
from released_instructs2s import write_released_set


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return write_released_set(tmp_path_factory.mktemp("instructs2s"))


def test_the_released_form_reads_with_relative_paths_and_unit_strings(released, tmp_path):
    m = load_manifest(released)
    assert len(m) == 6 and [len(m.turns(i)) for i in range(6)] == [1, 2, 3, 1, 3, 2]
    raw = m.raw(2)["conversation"]
    turns = m.turns(2)
    for k, t in enumerate(turns):
        assert t["speech_path"] == str(released.parent / raw[2 * k]["speech"])
        assert t["response_path"] == str(released.parent / raw[2 * k + 1]["speech"])
        assert t["response_text"] == raw[2 * k + 1]["text"] and t["instruction_text"] == raw[2 * k]["text"]
        assert t["dataset_units"] == [int(u) for u in raw[2 * k + 1]["unit"].strip("<>").split("><")]
        assert t["units"] is None
    assert m[2]["speech_path"] == turns[0]["speech_path"]          # m[i]: the first turn, single-turn tools
    # audio_root: the same manifest moved away from its wavs still finds them
    moved = tmp_path / "meta" / released.name
    moved.parent.mkdir()
    moved.write_text(released.read_text())
    assert load_manifest(moved, audio_root=str(released.parent)).turns(2) == turns


def _supervised_spans(labels: list[int]) -> list[list[int]]:
    spans, cur = [], []
    for v in labels + [IGNORE_INDEX]:
        if v != IGNORE_INDEX:
            cur.append(v)
        elif cur:
            spans, cur = spans + [cur], []
    return spans


def test_labels_cover_exactly_each_answer_and_its_end_of_turn(released, tok):
    m = load_manifest(released)
    turns = m.turns(2)                                               # three turns
    b = PromptBuilder(tok)
    out = b.build_dialogue([(t["prompt_instruction"], t["response_text"]) for t in turns], [7, 9, 5])
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    spans = _supervised_spans(out["labels"])
    assert [tok.decode(s[:-1]) for s in spans] == [t["response_text"] for t in turns]
    assert all(s[-1] == eot for s in spans) and out["input_ids"].count(SPEECH_TOKEN_INDEX) == 3
    assert out["n_turns"] == 3 and out["dropped_turns"] == 0
    # the text is the Llama-3 chat format of the whole conversation, one BOS, system once
    text = tok.decode([i for i in out["input_ids"] if i != SPEECH_TOKEN_INDEX])
    assert text.count("<|begin_of_text|>") == 1 and text.count("<|start_header_id|>system") == 1
    assert text.count("<|start_header_id|>user") == 3 == text.count("<|start_header_id|>assistant")
    last = b.build_dialogue([(t["prompt_instruction"], t["response_text"]) for t in turns], [7, 9, 5], "last")
    assert last["input_ids"] == out["input_ids"] and _supervised_spans(last["labels"]) == spans[-1:]
    # the tokenizer's own template (here the same Llama-3 format) gives the same ids and labels
    assert PromptBuilder(tok, template="tokenizer").build_dialogue(
        [(t["prompt_instruction"], t["response_text"]) for t in turns], [7, 9, 5]) == out


def test_too_long_dialogues_lose_whole_trailing_turns(released, tok):
    m = load_manifest(released)
    turns = [(t["prompt_instruction"], t["response_text"]) for t in m.turns(2)]
    full = PromptBuilder(tok).build_dialogue(turns, [10, 10, 10])
    per_turn = [len(p) + 10 - 1 + len(a) for p, a, _ in PromptBuilder(tok).tokenize_dialogue(turns)]
    b = PromptBuilder(tok, model_max_length=per_turn[0] + per_turn[1] + 3)  # two turns fit, not three
    out = b.build_dialogue(turns, [10, 10, 10])
    assert (out["n_turns"], out["dropped_turns"], out["truncated"]) == (2, 1, False)
    assert out["input_ids"] == full["input_ids"][:len(out["input_ids"])]    # a prefix: whole turns
    assert len(_supervised_spans(out["labels"])) == 2
    # the validation pass plans the same: lengths of the kept turns, the dropped turn counted
    report = validate_manifest(m, ValidationConfig(mel_mode="trimmed"), b)
    assert report.dropped_turns[2] >= 1 and "trailing turn(s) to model_max_length" in report.summary()
    data = OmniSpeechDataset(m, b, ValidationConfig(mel_mode="trimmed"), n_mels=80, report=report)
    item = data[list(data.indices).index(2)]
    assert len(item["speech_mel"]) == int(report.n_turns[2] - report.dropped_turns[2])
    assert item["input_ids"].eq(SPEECH_TOKEN_INDEX).sum() == len(item["speech_mel"])


def _with(released, tmp_path, edit) -> object:
    records = json.loads(released.read_text())
    edit(records)
    path = released.parent / f"{tmp_path.name}.json"
    path.write_text(json.dumps(records))
    return load_manifest(path)


@pytest.mark.parametrize("edit, rid, reason", [
    (lambda r: r[2]["conversation"][2].update(speech="data/gone.wav"), "instruct_en_2",
     "missing file: instruction audio (turn 2)"),
    (lambda r: r[1]["conversation"].reverse(), "instruct_en_1", "bad dialogue: conversation[0]: expected from='human'"),
    (lambda r: r[4]["conversation"].pop(), "instruct_en_4", "bad dialogue: the conversation does not end with an answer"),
    (lambda r: r[5]["conversation"][3].update(text="  "), "instruct_en_5", "empty text: the answer of turn 2 is empty"),
    (lambda r: r[2]["conversation"][5].update(unit="<12><x>"), "instruct_en_2",
     "bad dialogue: conversation[5].unit: unit string does not parse"),
])
def test_each_bad_turn_is_named_with_its_dialogue_and_turn(released, tmp_path, tok, edit, rid, reason):
    m = _with(released, tmp_path, edit)
    report = validate_manifest(m, ValidationConfig(), PromptBuilder(tok))
    got = {b.id: b.reason for b in report.bad}
    assert list(got) == [rid] and got[rid].startswith(reason), got
    with pytest.raises(Exception, match=rid):
        validate_manifest(m, ValidationConfig(on_bad="error"), PromptBuilder(tok))


def test_stage2_on_cosyvoice_strings_says_what_to_do_or_trains_on_them(released, tok):
    m = load_manifest(released)
    report = validate_manifest(m, ValidationConfig(stage=2), PromptBuilder(tok))
    assert len(report.bad) == 6 and "CosyVoice2 speech tokens" in report.bad[0].reason
    assert "tools/extract_units.py" in report.bad[0].reason and 'data.unit_source "dataset"' in report.bad[0].reason
    cfg = ValidationConfig(stage=2, unit_source="dataset", unit_vocab_size=6561, mel_mode="trimmed")
    assert validate_manifest(m, cfg, PromptBuilder(tok)).ok
    data = OmniSpeechDataset(m, PromptBuilder(tok), cfg, n_mels=80)
    item = data[2]
    assert [u.tolist() for u in item["units"]] == [t["dataset_units"] for t in m.turns(2)]


def test_a_dialogue_answer_sees_the_states_of_its_prefix(released, tok, tiny_parts):
    """Causal LLM: the states that feed the decoder for turn 1 of a 3-turn dialogue equal those of
    the dialogue cut after turn 1; a batch mixing 1- and 3-turn rows gives one sequence per answer."""
    from omni_ds.model.checkpoint import build_from_parts
    from omni_ds.tiny.models import tiny_omni_config
    _, whisper, llm = tiny_parts
    torch.manual_seed(0)
    model, tokenizer = build_from_parts(whisper, llm, tiny_omni_config(encoder_mode="trimmed"))
    model.set_stage(2).eval()
    m = load_manifest(released)
    cfg = ValidationConfig(stage=2, unit_source="dataset", unit_vocab_size=6561, mel_mode="trimmed")
    data = OmniSpeechDataset(m, PromptBuilder(tokenizer), cfg, n_mels=model.speech_encoder.config.num_mel_bins)
    collate = OmniCollator(tokenizer.pad_token_id)
    batch = collate([data[0], data[2]])                               # 1 turn + 3 turns
    assert batch["speech_mel"].shape[0] == 4 and batch["units"].shape[0] == 4
    states, lengths = model.response_hidden_states(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                                   batch["speech_mel"], batch["speech_frames"])
    assert states.shape[0] == 4
    turns = m.turns(2)
    first = PromptBuilder(tokenizer).build_dialogue([(turns[0]["prompt_instruction"], turns[0]["response_text"])],
                                                   [int(batch["speech_frames"][1] + 1) // 2 // 5])
    ids = torch.tensor([first["input_ids"]])
    alone, n = model.response_hidden_states(ids, torch.ones_like(ids), torch.tensor([first["labels"]]),
                                            batch["speech_mel"][1:2], batch["speech_frames"][1:2])
    torch.testing.assert_close(states[1, : int(lengths[1])], alone[0, : int(n[0])], rtol=1e-5, atol=1e-5)
    out = model(**batch)
    assert int(out["n_targets"]) == int(batch["units"].ne(IGNORE_INDEX).sum())


def test_the_released_layout_trains_both_stages_on_two_ranks(tmp_path):
    """Stage 1 on 1- to 3-turn dialogues as released, then stage 2 (per-turn hidden-state cache)
    on the data set's own CosyVoice2 units, 2 CPU ranks each, at the shipped recipes' settings:
    stage 1 bf16 under ZeRO-3 (the paper's), stage 2 bf16 under ZeRO-2 with a bf16 cache."""
    import subprocess
    from launcher import DEEPSPEED, free_port, launcher_env
    from omni_ds.train.demo import demo_stage1_config, demo_stage2_config, write_tiny_setup
    from omni_ds.train.recipe import REPO
    d = write_tiny_setup(tmp_path / "demo", n_clips=2, val_clips=1)
    released = write_released_set(tmp_path / "instructs2s")
    common = {"data.val_manifest": str(released), "data.train_manifest": str(released), "optim.max_steps": 2,
              "batch.per_device_train_batch_size": 2, "batch.global_batch_size": 4, "log.report_to": [],
              "log.progress_bar": False, "eval.max_samples": 2, "precision": "bf16"}
    s1 = demo_stage1_config(d, **common, output_dir=str(tmp_path / "s1"), **{"data.cache_in_memory": False})
    s2 = demo_stage2_config(d, **common, output_dir=str(tmp_path / "s2"), **{
        "model.init_from": str(tmp_path / "s1" / "final"), "data.unit_source": "dataset",
        "model.omni.unit_vocab_size": 6561, "data.cache_dir": str(tmp_path / "cache"), "data.cache_dtype": "bf16"})
    for stage, cfg, ds in ((1, s1, "zero3"), (2, s2, "zero2")):
        path = tmp_path / f"stage{stage}.json"
        path.write_text(json.dumps(cfg))
        proc = subprocess.run([DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), f"launch/stage{stage}.py",
                               "--config", str(path), "--ds", f"ds_configs/{ds}.json"],
                              cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads((tmp_path / f"s{stage}" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2
        assert summary["data"]["train"] == {"records": 6, "good": 6, "bad": 0, "turns": 12,
                                            "answers_cut_to_model_max_length": 0, "dialogues_losing_turns": 0,
                                            "turns_dropped": 0, "clips_cut_to_30s": 0}
    evals = summary["evals"][-1]
    assert evals["targets"] > 0 and 0 <= evals["unit_edit_distance"]
    assert summary["hidden_cache"]["train"]["built"]


def test_a_users_data_error_after_start_is_one_line_from_rank_zero(tmp_path):
    """data.on_bad = "error" with a bad dialogue, 2 ranks: exit 2, one 'error:' line, no traceback."""
    import subprocess
    from launcher import DEEPSPEED, free_port, launcher_env
    from omni_ds.train.demo import demo_stage1_config, write_tiny_setup
    from omni_ds.train.recipe import REPO
    d = write_tiny_setup(tmp_path / "demo", n_clips=2, val_clips=1)
    released = write_released_set(tmp_path / "instructs2s")
    records = json.loads(released.read_text())
    records[1]["conversation"].pop()                        # ends with a question
    released.write_text(json.dumps(records))
    cfg = demo_stage1_config(d, output_dir=str(tmp_path / "out"), **{
        "data.train_manifest": str(released), "data.val_manifest": None, "data.on_bad": "error",
        "optim.max_steps": 1, "log.report_to": []})
    path = tmp_path / "stage1.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run([DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "launch/stage1.py",
                           "--config", str(path), "--ds", "ds_configs/zero2.json"],
                          cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if "error: " in line and "instruct_s2s" not in line]
    assert len([e for e in errors if 'data.on_bad = "error"' in e]) == 1, errors
    assert "bad record instruct_en_1" in text and "does not end with an answer" in text
