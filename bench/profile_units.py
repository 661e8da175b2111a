#!/usr/bin/env python
"""Where the time of one full-size mHuBERT Base forward goes on this CPU (torch.profiler, ops by
self time): fp32, bf16 by autocast, and the prepared bf16 forward of omni_ds/units/cpu_bf16.py
that --dtype bf16 runs. Random weights (768 wide, 12 layers), the longest real clip.

  python bench/profile_units.py [--threads 1] [--seconds 4] [--rows 12]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=4.0, help="audio from the longest real clip")
    ap.add_argument("--rows", type=int, default=12)
    args = ap.parse_args()
    import torch
    from torch.profiler import profile
    from units_fixtures import CLIPS
    from omni_ds.data.audio import load_audio
    from omni_ds.tiny.hubert import write_tiny_hubert
    from omni_ds.units.cpu_bf16 import CpuBf16Forward
    from omni_ds.units.hubert import load_hubert
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_hubert(write_tiny_hubert(Path(tmp) / "full.pt", seed=0, conv_dim=512, width=768,
                                              heads=12, ffn=3072, layers=12))
    longest = max((load_audio(p, 16000) for p in CLIPS), key=len)
    wave = torch.from_numpy(longest)[None, : int(16000 * args.seconds)]
    lengths = torch.tensor([wave.shape[1]])
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    runs = {"fp32": (model, nullcontext), "bf16 autocast": (model, autocast),
            "bf16 prepared (cpu_bf16.py)": (CpuBf16Forward(model), nullcontext)}
    for name, (forward, ctx) in runs.items():
        with ctx():
            forward(wave, lengths)                     # warm-up: oneDNN primitive caches
            start = time.perf_counter()
            forward(wave, lengths)
            seconds = time.perf_counter() - start
            with profile() as prof:
                forward(wave, lengths)
        print(f"=== {name}: {seconds * 1e3:.0f} ms for {wave.shape[1] / 16000:.1f} s of audio")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
