#!/usr/bin/env python
"""Evaluation throughput of the demo-sized model on this CPU: answers generated 8 at a time
(tools/evaluate.py's default --batch-size) against one at a time, as samples per minute and their
ratio (target >= 3x), then the streaming first-chunk latency p50 / p90 (Omega = 10, batch 1).

  python bench/bench_evaluate.py [--samples 16] [--max-new-tokens 40] [--threads 1] [--repeat 2]

The model is the demo's shape (tiny Whisper 64 wide, tiny Llama, 2x64 CTC decoder, trimmed
encoder), random weights: an untrained model never says EOS, so every answer runs to
--max-new-tokens, which is what makes the comparison fair. Instructions are the 10 real clips of
../shared, cycled to --samples. Timed: log-mel + encoder + LLM + CTC decoder for every sample
(the pipeline's `generate` stage), model loading excluded; the best of --repeat runs is kept; the
same again for the model without its speech decoder (text only). The
machine is shared with other jobs: the load average is printed; figures move between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(tmp: Path, samples: int) -> tuple[Path, Path]:
    """A stage-2-shaped tiny model folder (DIR/model; DIR/model_text: the same without the speech
    decoder, as a stage-1 folder) and a manifest of `samples` real clips (cycled)."""
    import torch
    from omni_ds.model.checkpoint import build_from_parts, save_omni_folder
    from omni_ds.tiny.models import tiny_omni_config
    from omni_ds.train.demo import ANSWERS, SHARED_CLIPS, write_tiny_setup
    d = write_tiny_setup(tmp, n_clips=8, val_clips=2)
    torch.manual_seed(0)
    model, tok = build_from_parts(d / "models" / "whisper", d / "models" / "llm",
                                  tiny_omni_config(encoder_mode="trimmed"))
    save_omni_folder(d / "model", model, tok)
    model.speech_generator = None
    model.omni_config = model.omni_config.replace(with_speech_generator=False)
    save_omni_folder(d / "model_text", model, tok)
    clips = sorted(SHARED_CLIPS.glob("*.wav"))
    rows = [{"id": f"{clips[i % len(clips)].stem}_{i}", "speech_instruction_path": str(clips[i % len(clips)]),
             "text_response": ANSWERS[i % len(ANSWERS)]} for i in range(samples)]
    (d / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "model", d / "bench.jsonl"


def timed_generation(model_dir: Path, manifest: Path, out: Path, batch_size: int, args) -> tuple[float, dict]:
    """(samples per minute of the generate stage, the run's summary), best of args.repeat."""
    from omni_ds.evaluation.pipeline import EvalConfig, generate, load_records, load_tools, prepare
    cfg = EvalConfig(model=str(model_dir), manifest=str(manifest), out=str(out), batch_size=batch_size,
                     max_new_tokens=args.max_new_tokens, measure_latency=False, progress=False)
    tools = load_tools(cfg)
    records = load_records(cfg.manifest, None)
    best = None
    for _ in range(args.repeat):
        start = time.perf_counter()
        rows, requests = prepare(cfg, tools, records)           # log-mel is part of the cost
        generate(cfg, tools, rows, requests, records)
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return 60.0 * len(records) / best, {"rows": rows}


def first_chunk_latency(model_dir: Path, manifest: Path, out: Path, args) -> dict:
    from omni_ds.evaluation.pipeline import EvalConfig, load_records, load_tools, measure_latencies, prepare
    from omni_ds.evaluation.stats import distribution
    cfg = EvalConfig(model=str(model_dir), manifest=str(manifest), out=str(out), omega=10,
                     max_new_tokens=args.max_new_tokens, progress=False)
    tools = load_tools(cfg)
    records = load_records(cfg.manifest, None)
    rows, _ = prepare(cfg, tools, records)
    measure_latencies(cfg, tools, rows, records)
    return {k: distribution(r.get(k) for r in rows) for k in ("first_token_latency_s", "first_chunk_latency_s")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: tiny ops do not parallelise)")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch threads {args.threads}; "
          f"{args.samples} samples, {args.max_new_tokens} new tokens each")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, manifest = build(Path(tmp), args.samples)
        one, _ = timed_generation(model_dir, manifest, Path(tmp) / "o1", 1, args)
        eight, _ = timed_generation(model_dir, manifest, Path(tmp) / "o8", 8, args)
        print(f"generation, one at a time: {one:8.1f} samples/min")
        print(f"generation, batch 8:       {eight:8.1f} samples/min   ratio {eight / one:.2f}x (target >= 3x)")
        text = model_dir.parent / "model_text"
        one_t, _ = timed_generation(text, manifest, Path(tmp) / "t1", 1, args)
        eight_t, _ = timed_generation(text, manifest, Path(tmp) / "t8", 8, args)
        print(f"text only (stage-1 folder, no CTC decoder): {one_t:.1f} -> {eight_t:.1f} samples/min, "
              f"ratio {eight_t / one_t:.2f}x")
        lat = first_chunk_latency(model_dir, manifest, Path(tmp) / "lat", args)
    for key, d in lat.items():
        print(f"{key} (Omega 10, batch 1): p50 {d['p50'] * 1000:.0f} ms, p90 {d['p90'] * 1000:.0f} ms (n {d['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
