#!/usr/bin/env python
"""tools/synthesize_data.py throughput on this machine: clips per second (and per core) and the
real-time factor of Piper (en_US-joe-medium, CPU, one ONNX thread per worker process).

  python bench/bench_synthesize.py [--dialogues 24] [--workers 1 2]

Each run synthesizes the same dialogues into a fresh folder through the library call the tool
makes (omni_ds.data.synthesize.synthesize): a spoken-style question of about 15 words and an answer
of about 45 (InstructS2S-like lengths) per dialogue, so 2 clips each. Reported per run:
  clips/s            clips made / wall time (worker start-up and voice loading included)
  clips/s per core   the same over min(workers, cores)
  RTF                synthesis time per clip / audio seconds, one worker (voice loading excluded)
  wall RTF           wall time / audio seconds made: what a whole data set costs per hour of speech
The machine is shared: the load average is printed, and figures move between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = ("Um, so I was wondering, could you tell me how long I should boil an egg if I want the "
            "yolk to stay soft, number {i}?")
ANSWER = ("Sure. For a soft yolk, put the egg into water that is already boiling and keep it there for "
          "about six minutes. Then move it straight into cold water for a minute, so that it stops cooking "
          "and the shell comes off more easily. Number {i}.")


def one_run(n: int, workers: int) -> dict:
    from omni_ds.data.synthesize import SynthesisJob, synthesize
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.jsonl"
        inp.write_text("".join(json.dumps({"instruction": QUESTION.format(i=i), "output": ANSWER.format(i=i)}) + "\n"
                               for i in range(n)))
        t = time.perf_counter()
        s = synthesize(SynthesisJob([inp], Path(tmp) / "out" / "m.json", workers=workers, progress=False))
        wall = time.perf_counter() - t
    made, audio = s["clips"]["made_now"], s["audio_seconds_made"]
    cores = min(workers, os.cpu_count() or 1)
    return {"workers": workers, "clips": made, "audio_s": audio, "wall_s": round(wall, 2),
            "clips_per_s": round(made / wall, 2), "clips_per_s_per_core": round(made / wall / cores, 2),
            "rtf": s["real_time_factor"], "wall_rtf": round(wall / audio, 3), "failed": s["clips"]["failed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialogues", type=int, default=24)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, {args.dialogues} dialogues "
          f"({2 * args.dialogues} clips) per run")
    for w in args.workers:
        r = one_run(args.dialogues, w)
        print(f"workers {w}: {r['clips']} clips, {r['audio_s']:.0f} s of audio in {r['wall_s']:.1f} s: "
              f"{r['clips_per_s']:.2f} clips/s ({r['clips_per_s_per_core']:.2f} per core), "
              f"RTF {r['rtf']:.3f} per worker, wall RTF {r['wall_rtf']:.3f}  {json.dumps(r)}")


if __name__ == "__main__":
    main()
