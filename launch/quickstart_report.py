#!/usr/bin/env python
"""The quickstart's closing report: losses before/after per stage, what tools/evaluate.py measured
on the stage-1 and stage-2 folders (DEMO_DIR/eval/stage{1,2}/report.json), the held-out answer,
time per phase. Reads what the runs wrote under DEMO_DIR."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def losses(run: Path) -> tuple[float, float, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("status") != "completed":
        raise SystemExit(f"{run}: run did not complete: {summary.get('status')} {summary.get('error')}")
    return train[0], train[-1], summary


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def evaluation_line(report_json: Path) -> str:
    """One line of tools/evaluate.py's summary: the numbers that say whether the stage learned."""
    s = json.loads(report_json.read_text())["summary"]
    parts = [f"{s['evaluated']}/{s['samples']} samples ({s['failed']} failed)",
             f"text WER {_fmt(s['text_wer']['rate'], '.1%')}"]
    if s["unit_edit_distance"]["corpus"]["n"]:
        parts.append(f"unit edit distance {_fmt(s['unit_edit_distance']['corpus']['rate'], '.2f')}")
    for key, name in (("first_token_latency_s", "first token"), ("first_chunk_latency_s", "first chunk"),
                      ("first_audio_latency_s", "first audio")):
        d = s["latency"][key]
        if d["n"]:
            parts.append(f"{name} p50 {d['p50'] * 1000:.0f} ms")
    return ", ".join(parts) + f"  ({report_json.parent}/report.md)"


def calibration_line(report_json: Path) -> str:
    """The ASR's own error on the reference answer audio (tools/evaluate.py's calibration row)."""
    report = json.loads(report_json.read_text())
    c, asr = report["summary"]["calibration"], report["summary"]["asr"]
    if not c["n"]:
        return f"calibration: none (ASR {asr or 'not given'}; no reference answer audio in the manifest)"
    return (f"calibration (ASR {Path(asr).name} on the reference answer audio): WER {_fmt(c['rate'], '.1%')} "
            f"({c['errors']} word edits / {c['total']} words, {c['n']} clips)")


def main(demo: Path) -> int:
    times = {r["phase"]: r["seconds"] for r in map(json.loads, (demo / "quickstart_times.jsonl").read_text().splitlines())}
    print("\n=== quickstart report ===")
    for stage, what in ((1, "text cross-entropy"), (2, "CTC per unit")):
        first, last, summary = losses(demo / "runs" / f"stage{stage}")
        evals = summary.get("evals") or []
        val = "" if not evals else "; validation: " + ", ".join(
            f"{k} {v:.3f}" for k, v in evals[-1].items() if k != "step" and isinstance(v, float))
        print(f"stage {stage} ({what}): train loss {first:.3f} -> {last:.3f} over {summary['steps']} steps{val}")
    for stage, manifest in ((1, "train.jsonl"), (2, "train_units.jsonl")):
        print(f"evaluation, stage {stage} on {manifest}: {evaluation_line(demo / 'eval' / f'stage{stage}' / 'report.json')}")
    answer = json.loads((demo / "answer.json").read_text())
    held_out = json.loads((demo / "val.jsonl").read_text().splitlines()[0])
    print(f"held-out clip {held_out['id']} (never trained on; 16 training samples teach no generalisation):")
    print(f"  answer text: {answer['text']!r}")
    print(f"  units ({len(answer['units'] or [])}): {(answer['units'] or [])[:30]}"
          f"{' ...' if len(answer['units'] or []) > 30 else ''}  (also in answer_units.txt)")
    total = sum(times.values())
    print("time per phase: " + ", ".join(f"{k} {v} s" for k, v in times.items()) + f"; total {total} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
