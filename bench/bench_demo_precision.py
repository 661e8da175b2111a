#!/usr/bin/env python
"""The demo's stage 1 (tools/make_demo_data.py's DIR/stage1.json: tiny Whisper + tiny Llama, 2 CPU
ranks, ZeRO-2, as launch/quickstart.sh runs it) in fp32 and in bf16 on this CPU, one after the
other in one run, alternating when --repeats > 1: step time and train / validation loss after
the same steps.

  python bench/bench_demo_precision.py [--steps N] [--repeats R] [--demo DIR]

Step time is the loop's own (summary.json train_seconds / steps, and the median of the logged
steps' step_time_s), so DeepSpeed's start-up is excluded. The machine is shared: the load average
is printed; compare the ratio within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(demo: Path, precision: str, steps: int | None, out: Path) -> dict:
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [str(deepspeed), "--num_gpus", "2", "--master_port", str(free_port()),
           str(REPO / "launch" / "stage1.py"), "--config", str(demo / "stage1.json"),
           "--ds", str(REPO / "ds_configs" / "zero2.json"), "--set", f"precision={precision}",
           "--set", f"output_dir={out}"] + (["--set", f"optim.max_steps={steps}"] if steps else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if run.returncode:
        raise SystemExit(f"stage 1 ({precision}) failed:\n{run.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_times = [r["train/step_time_s"] for r in rows if "train/step_time_s" in r]
    return {"steps": summary["steps"], "mean_s": summary["train_seconds"] / summary["steps"],
            "median_s": statistics.median(step_times), "train_loss": summary["final_loss"],
            "val_loss": summary["evals"][-1]["loss"] if summary["evals"] else None,
            "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the demo's, 240)")
    ap.add_argument("--repeats", type=int, default=1, help="fp32/bf16 pairs, alternating")
    ap.add_argument("--demo", type=Path, help="an existing make_demo_data.py folder (default: a new one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = args.demo or Path(tmp) / "demo"
        if not args.demo:
            subprocess.run([sys.executable, str(REPO / "tools" / "make_demo_data.py"), "--out", str(demo)],
                           check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        print(f"load average {os.getloadavg()[0]:.2f} (other jobs share this machine)")
        results: dict[str, list[dict]] = {"fp32": [], "bf16": []}
        for r in range(args.repeats):
            for precision in results:
                results[precision].append(train(demo, precision, args.steps, Path(tmp) / f"{precision}{r}"))
        print(f"{'':6s} {'steps':>5s} {'mean step':>10s} {'median step':>12s} {'train loss':>11s} "
              f"{'val loss':>9s} {'load':>5s}")
        for precision, runs in results.items():
            for x in runs:
                print(f"{precision:6s} {x['steps']:5d} {1e3 * x['mean_s']:8.1f}ms {1e3 * x['median_s']:10.1f}ms "
                      f"{x['train_loss']:11.4f} {x['val_loss']:9.4f} {x['load']:5.2f}")
        best = {p: min(x["mean_s"] for x in runs) for p, runs in results.items()}
        print(f"bf16 / fp32 mean step time (best of {args.repeats}): {best['bf16'] / best['fp32']:.2f}")


if __name__ == "__main__":
    main()
