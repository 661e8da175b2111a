"""Sample answers during training (eval.sample_answers, eval.vocoder), for real: 2-rank launches
of launch/stage1.py and launch/stage2.py under the deepspeed launcher, read back from their
TensorBoard event files with tensorboard's own event reader.

Runs (tiny models, the real clips of shared/, 2 validation records, eval every step, 2 steps):
    s1_z3   stage 1, ZeRO-3, bf16 (the paper recipe's stage and precision)
    s1_z2   stage 1, ZeRO-2, fp32
    s2_z3   stage 2, ZeRO-3, bf16, no hidden-state cache (the frozen LLM partitioned), tiny vocoder
    s2_z2   stage 2, ZeRO-2, fp32, hidden-state cache (frozen parts parked), tiny vocoder
The samples of the last evaluation (after the last step) must be what the saved final folder
answers on its own, through the evaluation package; the audio must be the vocoder's waveform of
the logged units.
"""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launcher import DEEPSPEED, free_port, launcher_env
from omni_ds.train.demo import demo_stage1_config, demo_stage2_config, write_tiny_stage2_setup

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 420
NEW_TOKENS = 6
SAMPLES = {"eval.every_steps": 1, "eval.sample_answers": 2, "eval.sample_max_new_tokens": NEW_TOKENS,
           "max_steps": 2, "save_steps": 0, "logging_steps": 1, "report_to": ["tensorboard"],
           "progress_bar": False, "global_batch_size": 2, "per_device_train_batch_size": 1}


def launch(stage: int, cfg: dict, path: Path, ds: str, n: int = 2):
    path.write_text(json.dumps(cfg))
    cmd = [DEEPSPEED, "--num_gpus", str(n), "--master_port", str(free_port()), f"launch/stage{stage}.py",
           "--config", str(path), "--ds", f"ds_configs/{ds}.json"]
    return subprocess.run(cmd, cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=TIMEOUT)


def _ok(proc, what):
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from omni_ds.tiny.vocoder import write_tiny_vocoder
    root = tmp_path_factory.mktemp("samples")
    d = write_tiny_stage2_setup(root / "demo", n_clips=6, val_clips=2)
    vocoder = write_tiny_vocoder(root / "vocoder")
    cfgs = {
        "s1_z3": (1, demo_stage1_config(d, output_dir=str(root / "s1_z3"), precision="bf16", **SAMPLES), "zero3"),
        "s1_z2": (1, demo_stage1_config(d, output_dir=str(root / "s1_z2"), **SAMPLES), "zero2"),
        "s2_z3": (2, demo_stage2_config(d, output_dir=str(root / "s2_z3"), precision="bf16", cache_hidden_states=False,
                                        **{"eval.vocoder": str(vocoder)}, **SAMPLES), "zero3"),
        "s2_z2": (2, demo_stage2_config(d, output_dir=str(root / "s2_z2"), **{"eval.vocoder": str(vocoder)},
                                        **SAMPLES), "zero2"),
    }
    for name, (stage, cfg, ds) in cfgs.items():
        _ok(launch(stage, cfg, root / f"{name}.json", ds), name)
    return {"root": root, "demo": d, "vocoder": vocoder, "cfgs": cfgs}


def events(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0, "audio": 0, "scalars": 0})
    acc.Reload()
    return acc


def logged_samples(out: Path) -> dict[int, list[dict]]:
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return {r["step"]: r["eval/sample_answers"] for r in rows if "eval/sample_answers" in r}


def text_of(acc, tag: str) -> dict[int, str]:
    """SummaryWriter.add_text's summaries (the text plugin's tag carries a /text_summary suffix)."""
    return {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{tag}/text_summary")}


def final_answers(folder: Path, records: list[dict], precision: str) -> list[dict]:
    """What the saved final folder answers alone, through the evaluation package."""
    from omni_ds.evaluation.generation import Request, generate_answers
    from omni_ds.inference import PromptOptions, eos_token_ids, instruction_features
    from omni_ds.model.checkpoint import load_omni_folder
    model, tok = load_omni_folder(folder, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    prompt = PromptOptions().prompt_ids(tok)          # the demo trains on the default prompt
    requests = [Request(*instruction_features(model, r["speech_path"]), prompt) for r in records]
    return generate_answers(model.eval(), tok, requests, NEW_TOKENS, eos_token_ids(model, tok))


@pytest.mark.parametrize("name", ["s1_z3", "s1_z2", "s2_z3", "s2_z2"])
def test_sample_answers_in_tensorboard_are_the_final_models_answers(runs, name):
    stage, cfg, _ = runs["cfgs"][name]
    out = Path(cfg["output_dir"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    samples = logged_samples(out)
    assert sorted(samples) == [1, 2]                 # eval.every_steps 1, and the final evaluation
    val_ids = [json.loads(line)["id"] for line in open(cfg["data"]["val_manifest"])]
    acc = events(out)
    for step, rows in samples.items():
        assert [r["id"] for r in rows] == val_ids
        for r in rows:
            assert r["status"] == "ok" and 1 <= len(r["token_ids"]) <= NEW_TOKENS
            assert r["text_wer"] == r["text_word_errors"] / r["reference_words"]
            shown = text_of(acc, f"eval_answers/{r['id']}")[step]
            assert f"reference: {r['reference_text']}" in shown and f"answer: {r['text']}" in shown
    expected = final_answers(out / "final", samples[2], cfg["precision"])
    for row, want in zip(samples[2], expected):
        assert row["token_ids"] == want["token_ids"], name
        if stage == 2:
            assert row["units"] == want["units"] and row["units"], name
            assert row["unit_edit_distance"] == pytest.approx(row["unit_edits"] / row["reference_units"])
        else:
            assert "units" not in row
    tags = acc.Tags()
    assert ("eval_audio/" + val_ids[0] in tags["audio"]) == (stage == 2)


@pytest.mark.parametrize("name", ["s2_z3", "s2_z2"])
def test_stage2_audio_is_the_vocoded_units(runs, name):
    import soundfile as sf
    from omni_ds.vocoder import load_vocoder
    out = Path(runs["cfgs"][name][1]["output_dir"])
    vocoder = load_vocoder(runs["vocoder"])
    acc = events(out)
    for step, rows in logged_samples(out).items():
        for r in rows:
            (event,) = [e for e in acc.Audio(f"eval_audio/{r['id']}") if e.step == step]
            assert event.sample_rate == 16000 and event.content_type == "audio/wav"
            heard, rate = sf.read(io.BytesIO(event.encoded_audio_string), dtype="float32")
            want = vocoder(r["units"]).numpy()
            assert rate == 16000 and heard.shape == want.shape
            assert abs(heard - want).max() < 2 / 32767           # TensorBoard stores 16-bit PCM
            on_disk, _ = sf.read(r["wav"], dtype="float32")
            assert on_disk.shape == want.shape and Path(r["wav"]).parent.name == f"step{step:07d}"


def test_vocoder_rules_in_the_config():
    from omni_ds.train.config import ConfigError, build_config
    base = {"stage": 2, "model": {"init_from": "x"}, "data": {"train_manifest": "t.jsonl", "val_manifest": "v.jsonl"}}
    build_config(dict(base, eval={"vocoder": "voc"}))
    with pytest.raises(ConfigError, match="'eval.vocoder'.*stage 2 option"):
        build_config({"stage": 1, "model": {"init_from": "x"}, "data": base["data"], "eval": {"vocoder": "voc"}})
    with pytest.raises(ConfigError, match="'eval.vocoder'.*data.val_manifest"):
        build_config(dict(base, data={"train_manifest": "t.jsonl"}, eval={"vocoder": "voc"}))
    with pytest.raises(ConfigError, match="'eval.vocoder'.*sample_answers must be >= 1"):
        build_config(dict(base, eval={"vocoder": "voc", "sample_answers": 0}))
    with pytest.raises(ConfigError, match="'eval.sample_max_new_tokens' = 0: must be >= 1"):
        build_config(dict(base, eval={"sample_max_new_tokens": 0}))


def test_a_bad_vocoder_stops_the_dry_run_and_the_run_at_start(runs, tmp_path):
    from omni_ds.tiny.vocoder import write_tiny_vocoder
    stage, cfg, _ = runs["cfgs"]["s2_z2"]
    small = write_tiny_vocoder(tmp_path / "vocoder500", num_embeddings=500)
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, why in ((small, "unit vocabulary 500 (config.json num_embeddings) does not match the model's 1000"),
                        (empty, "no vocoder checkpoint")):
        bad = dict(cfg, output_dir=str(tmp_path / f"out_{folder.name}"), eval=dict(cfg["eval"], vocoder=str(folder)))
        path = tmp_path / f"{folder.name}.json"
        path.write_text(json.dumps(bad))
        dry = subprocess.run([sys.executable, "launch/stage2.py", "--config", str(path), "--ds", "ds_configs/zero2.json",
                              "--dry-run", "--world-size", "2"], cwd=REPO, env=launcher_env(), capture_output=True,
                             text=True, timeout=TIMEOUT)
        assert dry.returncode == 1 and "dry run: NOT READY" in dry.stdout, dry.stdout + dry.stderr
        assert f"ERROR config key 'eval.vocoder' = '{folder}'" in dry.stdout and why in dry.stdout
    proc = launch(2, bad, path, "zero2")               # the empty folder, 2 ranks
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert errors == [f"error: config key 'eval.vocoder' = '{empty}': FileNotFoundError: {empty}: "
                      "no vocoder checkpoint (g_* or *.pt)"], proc.stderr[-3000:]
    assert "world 2, micro" not in proc.stdout and not (Path(bad["output_dir"]) / "metrics.jsonl").exists()
