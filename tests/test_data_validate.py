"""Validation pass: every bad-record kind reported with its id; skip / error policy; cached index."""
import os

import pytest
from transformers import AutoTokenizer

from data_fixtures import copy_real, flat, write_jsonl, write_tone
from omni_ds.data.manifest import load_manifest
from omni_ds.data.prompt import PromptBuilder
from omni_ds.data.validate import DataError, ValidationConfig, validate_manifest
from omni_ds.tiny.tokenizer import write_tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


def _bad_manifest(root):
    """One good record and one record of each bad kind, ids telling which is which."""
    a, b = copy_real(root / "audio", 2)
    write_tone(root / "audio/long.wav", 12.0)
    write_tone(root / "audio/low_sr.wav", 1.0, sr=4000)
    (root / "audio/corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    recs = [
        dict(flat(f"audio/{a.name}"), id="good"),
        dict(flat(f"audio/{b.name}", units=[0, 5, 999]), id="good_units"),
        dict(flat("audio/missing.wav"), id="missing"),
        dict(flat("audio/corrupt.wav"), id="corrupt"),
        dict(flat(f"audio/{a.name}", response="   "), id="empty"),
        dict(flat("audio/long.wav"), id="long"),
        dict(flat(f"audio/{a.name}", units=[1, 1000]), id="units_hi"),
        dict(flat(f"audio/{a.name}", units=[-1, 3]), id="units_neg"),
        dict(flat("audio/low_sr.wav"), id="low_sr"),
        {"id": "too_many_tokens", "speech": f"audio/{a.name}",        # prompt alone overflows
         "conversations": [{"from": "human", "value": "<speech>\n" + "word " * 100},
                           {"from": "gpt", "value": "Yes."}]},
        dict(flat(f"audio/{a.name}", response="word " * 400), id="long_answer"),   # truncated
    ]
    return write_jsonl(root / "m.jsonl", recs)


EXPECTED = {"missing": "missing file", "corrupt": "corrupt audio", "empty": "empty text",
            "long": "too long", "units_hi": "units out of range", "units_neg": "units out of range",
            "low_sr": "sample rate"}


def test_every_bad_kind_reported_and_skipped(tmp_path, tok):
    m = load_manifest(_bad_manifest(tmp_path))
    builder = PromptBuilder(tok, model_max_length=380)     # 300 speech positions + ~75 prompt
    report = validate_manifest(m, ValidationConfig(max_seconds=10.0), builder)
    got = {b.id: b.reason for b in report.bad}
    expected = dict(EXPECTED, too_many_tokens="too long")
    assert set(got) == set(expected)
    for rid, kind in expected.items():
        assert got[rid].startswith(kind), (rid, got[rid])
    assert "model_max_length 380" in got["too_many_tokens"] and "12.00 s > max_seconds" in got["long"]
    assert str(tmp_path / "audio/missing.wav") in got["missing"]
    assert [m.ids[i] for i in report.good] == ["good", "good_units", "long_answer"]
    assert [m.ids[i] for i in report.truncated] == ["long_answer"]
    assert report.lengths[report.truncated[0]] == 380
    assert "11 records, 3 good, 8 bad" in report.summary() and not report.ok
    assert "1 good record(s) will have their response truncated" in report.summary()


def test_error_policy_raises_naming_ids(tmp_path):
    m = load_manifest(_bad_manifest(tmp_path))
    with pytest.raises(DataError) as e:
        validate_manifest(m, ValidationConfig(on_bad="error", max_seconds=10.0))
    for rid in EXPECTED:
        assert f"  {rid}: " in str(e.value)


def test_long_clip_kept_without_limit_and_stage2_needs_units(tmp_path):
    m = load_manifest(_bad_manifest(tmp_path))
    report = validate_manifest(m, ValidationConfig())
    assert "long" not in {b.id for b in report.bad}            # default policy: truncate to 30 s
    stage2 = {b.id: b.reason for b in validate_manifest(m, ValidationConfig(stage=2)).bad}
    assert stage2["good"].startswith("units missing") and "good_units" not in stage2


def test_index_cached_audio_not_decoded_again(tmp_path, tok):
    a, = copy_real(tmp_path / "audio", 1)
    m = load_manifest(write_jsonl(tmp_path / "m.jsonl", [flat(f"audio/{a.name}")]))
    first = validate_manifest(m, ValidationConfig(), PromptBuilder(tok))
    assert first.ok and first.from_cache == {"audio": False, "tokens": False}
    os.remove(a)              # a later run must answer from the index, not from the audio
    again = validate_manifest(load_manifest(tmp_path / "m.jsonl"), ValidationConfig(), PromptBuilder(tok))
    assert again.ok and again.from_cache == {"audio": True, "tokens": True}
    assert (again.instr_samples == first.instr_samples).all() and (again.lengths == first.lengths).all()
    # different prompt settings -> different token index; audio index still reused
    other = validate_manifest(m, ValidationConfig(), PromptBuilder(tok, system_prompt="Short."))
    assert other.from_cache == {"audio": True, "tokens": False}
    assert other.n_prompt[0] < first.n_prompt[0]


def test_lengths_follow_mel_mode(tmp_path, tok):
    a, = copy_real(tmp_path / "audio", 1)          # helpful_base_1: 2.16 s -> 216 frames
    m = load_manifest(write_jsonl(tmp_path / "m.jsonl", [flat(f"audio/{a.name}")]))
    padded = validate_manifest(m, ValidationConfig(), PromptBuilder(tok))
    trimmed = validate_manifest(m, ValidationConfig(mel_mode="trimmed"), PromptBuilder(tok))
    text = padded.n_prompt[0] - 1 + padded.n_answer[0]
    assert padded.lengths[0] == 300 + text and trimmed.lengths[0] == 21 + text


def test_token_counts_equal_built_ids(tmp_path, tok):
    a, = copy_real(tmp_path / "audio", 1)
    recs = [flat(f"audio/{a.name}", response=r) for r in ["Yes.", "Ünïcode ✓ and 12345 digits!", "a b " * 50]]
    recs.append({"id": "llava", "speech": f"audio/{a.name}", "conversations": [
        {"from": "human", "value": "<speech>\nOwn instruction."}, {"from": "gpt", "value": "Fine."}]})
    m = load_manifest(write_jsonl(tmp_path / "m.jsonl", recs))
    builder = PromptBuilder(tok)
    report = validate_manifest(m, ValidationConfig(), builder)
    for i in range(len(m)):
        out = builder.build(m[i]["response_text"], m[i]["prompt_instruction"])
        assert report.n_prompt[i] == out["n_prompt"]
        assert report.n_answer[i] == len(out["input_ids"]) - out["n_prompt"]


def test_stage2_answers_ctc_cannot_align_are_bad_with_their_lengths(tmp_path, tok):
    """Output frames are max(25 x states, units): a long answer of distinct units is stretched
    and fine; repeated neighbours need a blank each, beyond what 25 x states gives."""
    a, = copy_real(tmp_path / "audio", 1)
    speech = f"audio/{a.name}"
    distinct = [i % 1000 for i in range(300)]                  # no repeats: always alignable
    repeated = [7] * 200                                        # 199 repeats
    dialogue = {"id": "dialogue", "speech": [speech, speech], "conversations": [
        {"from": "human", "value": "<speech>\nOne."}, {"from": "gpt", "value": "Yes.", "units": [1, 2, 3]},
        {"from": "human", "value": "<speech>\nTwo."}, {"from": "gpt", "value": "No.", "units": repeated}]}
    recs = [dict(flat(speech, response="Yes.", units=distinct), id="stretched"),
            dict(flat(speech, response="Yes.", units=repeated), id="single"),
            dict(flat(speech, response="word " * 20, units=repeated), id="enough_states"), dialogue]
    m = load_manifest(write_jsonl(tmp_path / "m.jsonl", recs))
    builder = PromptBuilder(tok)
    report = validate_manifest(m, ValidationConfig(stage=2), builder)
    got = {b.id: b.reason for b in report.bad}
    assert set(got) == {"single", "dialogue"}, got
    n_yes = builder.tokenize_dialogue([(None, "Yes.")])[0][2]               # supervised ids of "Yes."
    n_no = builder.tokenize_dialogue([(None, "Yes."), (None, "No.")])[1][2]
    assert got["single"] == (f"ctc infeasible: {n_yes} states x 25 = {25 * n_yes} frames, stretched to 200 "
                             "< 200 units + 199 repeats")
    assert got["dialogue"].startswith(f"ctc infeasible: turn 2: {n_no} states x 25 = {25 * n_no} frames")
    assert "ctc infeasible: 2" in report.summary()
    # the model's own factor decides: at 400 frames per state even one state has room for 399 blanks
    assert validate_manifest(m, ValidationConfig(stage=2, ctc_upsample_factor=400), builder).ok
    with pytest.raises(DataError, match="single: ctc infeasible"):
        validate_manifest(m, ValidationConfig(stage=2, on_bad="error"), builder)
