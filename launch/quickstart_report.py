#!/usr/bin/env python
"""The quickstart's closing report: losses before/after per stage, the held-out answer and its
units, time per phase. Reads what the runs wrote under DEMO_DIR."""
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


def unit_edit_distance(hyp: list[int], ref: list[int]) -> float:
    from omni_ds.train.edit_distance import levenshtein
    return levenshtein(hyp, ref) / max(1, len(ref))


def main(demo: Path) -> int:
    times = {r["phase"]: r["seconds"] for r in map(json.loads, (demo / "quickstart_times.jsonl").read_text().splitlines())}
    print("\n=== quickstart report ===")
    for stage, what in ((1, "text cross-entropy"), (2, "CTC per unit")):
        first, last, summary = losses(demo / "runs" / f"stage{stage}")
        evals = summary.get("evals") or []
        val = "" if not evals else "; validation: " + ", ".join(
            f"{k} {v:.3f}" for k, v in evals[-1].items() if k != "step" and isinstance(v, float))
        print(f"stage {stage} ({what}): train loss {first:.3f} -> {last:.3f} over {summary['steps']} steps{val}")
    trained = json.loads((demo / "answer_train.json").read_text())
    seen = json.loads((demo / "train_units.jsonl").read_text().splitlines()[0])
    distance = unit_edit_distance(trained["units"] or [], seen["units"])
    print(f"training clip {seen['id']}: answer {trained['text']!r} (taught: {seen['text_response']!r}); "
          f"{len(trained['units'] or [])} units, edit distance to its target units {distance:.2f}")
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
