"""Stage 2: epoch time with the hidden-state cache vs without, and the disk cost of the cache.

    python bench/bench_stage2_cache.py [--epochs 20] [--ds ds_configs/zero2.json]

Measured (tiny config, 1 CPU process, fp32): two trainers are set up in one process with
the Trainer on the same data (10 real clips, synthetic units, a tiny stage-1 folder) and the
same seed — one with `cache_hidden_states` (the cache is built once during its setup, not timed),
one without (`cache_in_memory`, so the uncached side does not pay audio decoding: the ratio
isolates the frozen encoder + projector + LLM forward that the cache removes). Whole epochs of
Trainer.train() alternate between the two so machine load hits both alike; the epoch time is the loop's
own step timing (data fetch + forward + backward + step), the fastest epoch of each is the
estimate (medians printed beside it).

Computed (full size, the FLOPs model of omni_ds/train/flops.py): Llama-3.1-8B (7.50 B matmul
params, embedding excluded) + Whisper-large-v3 encoder (0.637 B) + projector (21.5 M) + decoder
"(2,4096,32,11008)" (425.6 M), per InstructS2S sample (REFERENCE.md): 7.5 s instruction, ~60
prompt + ~55 response tokens, 554 units; decoder positions max(25 x 55, 554) = 1375. Padded mode:
1500 encoder frames, 300 speech positions; trimmed: 375 frames, 75 positions. The cached step
runs only the decoder (6 x params x positions); the uncached one adds 2 x params x positions of
the frozen parts.
"""
import argparse
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# full-size shapes (REFERENCE.md)
LLM_MATMUL = 8.030e9 - 128256 * 4096      # Llama-3.1-8B without the input embedding (lm_head untied)
ENCODER = 0.637e9
PROJECTOR = 6400 * 2048 + 2048 + 2048 * 4096 + 4096
DECODER = 425.6e6
PROMPT_TOKENS, RESPONSE_TOKENS, UNITS, LAMBDA = 60, 55, 554, 25
WIDTH = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_inputs(root: Path) -> Path:
    from omni_ds.train.demo import write_tiny_stage2_setup
    return write_tiny_stage2_setup(root, n_clips=10, val_clips=1)


def full_size_ratio(padded: bool) -> tuple[float, float, float]:
    from omni_ds.train.flops import FlopsModel
    fm = FlopsModel(int(ENCODER), int(PROJECTOR), int(LLM_MATMUL), int(DECODER), stage=2,
                    llm_trainable=False, encoder_padded=padded, upsample=LAMBDA)
    frames = 1500 if padded else 375
    speech = frames // 5
    dec = max(LAMBDA * RESPONSE_TOKENS, UNITS)
    uncached = {"encoder_frames": frames, "speech_positions": speech, "samples": 1,
                "llm_positions": speech + PROMPT_TOKENS + RESPONSE_TOKENS, "decoder_positions": dec}
    cached = {"encoder_frames": 0, "speech_positions": 0, "llm_positions": 0, "samples": 1,
              "decoder_positions": dec}
    fu, fc = fm.step_flops(uncached)[0], fm.step_flops(cached)[0]
    return fc / fu, fc, fu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20, help="timed epochs per side (alternating)")
    ap.add_argument("--ds", default="ds_configs/zero2.json")
    args = ap.parse_args(argv)

    from omni_ds.train.config import build_config
    from omni_ds.train.demo import demo_stage2_config
    from omni_ds.train.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="bench_stage2_cache_"))
    d = write_inputs(tmp / "demo")
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "1"})
    total = 100_000
    runs = {}
    for name, cached in (("cached", True), ("uncached", False)):
        raw = demo_stage2_config(d, output_dir=str(tmp / name), val_manifest=None, max_steps=total,
                                 save_steps=0, logging_steps=10, report_to=[], progress_bar=False,
                                 cache_hidden_states=cached, cache_in_memory=not cached,
                                 per_device_train_batch_size=2, global_batch_size=2)
        raw.pop("_comment")
        cfg = build_config(raw)
        runs[name] = Trainer(cfg, args.ds)

    def epoch(name: str) -> float:
        r = runs[name]
        before = r.state.train_seconds
        n = r.stream.steps_in_epoch(r.stream.epoch)
        r.train(until=r.state.step + n)
        return r.state.train_seconds - before

    epoch("cached"), epoch("uncached")          # warm-up (first touch of features, allocator)
    times = {"cached": [], "uncached": []}
    for _ in range(args.epochs):
        for name in ("cached", "uncached"):
            times[name].append(epoch(name))
    for r in runs.values():
        r.close()

    print("epoch times (s):", {k: [round(x, 3) for x in v] for k, v in times.items()})
    c, u = min(times["cached"]), min(times["uncached"])
    cm, um = statistics.median(times["cached"]), statistics.median(times["uncached"])
    info = runs["cached"].info["hidden_cache"]["train"]
    n_samples = len(runs["cached"].train_set)
    width = runs["cached"].model.llm.config.hidden_size
    print(f"stage-2 epoch time, tiny config ({n_samples} samples, {runs['cached'].stream.steps_in_epoch(0)} "
          f"steps of batch 2, 1 CPU process, fp32, {args.epochs} epochs each, alternating):")
    print(f"  with cache    {c:.3f} s/epoch (median {cm:.3f})")
    print(f"  without cache {u:.3f} s/epoch (median {um:.3f})   [cache_in_memory: no audio decoding]")
    print(f"  ratio with / without = {c / u:.3f} (medians {cm / um:.3f})")
    for padded in (True, False):
        ratio, fc, fu = full_size_ratio(padded)
        print(f"FLOPs model, full size, {'padded' if padded else 'trimmed'} encoder: per sample "
              f"{fc / 1e12:.2f} TFLOP cached vs {fu / 1e12:.2f} TFLOP uncached -> ratio {ratio:.3f} "
              f"({1 / ratio:.2f}x faster epochs)")
    print(f"cache disk cost: tiny config {info['bytes'] / n_samples / 1e3:.2f} kB/sample measured "
          f"({info['bytes']} B for {n_samples} samples, fp32, width {width}, incl. index files)")
    per = RESPONSE_TOKENS * WIDTH * 2
    print(f"  full size (bf16, {RESPONSE_TOKENS} response states x {WIDTH}): {per / 1e6:.2f} MB/sample, "
          f"{per * 200_000 / 1e9:.0f} GB for InstructS2S-200K (fp32: twice that)")
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
