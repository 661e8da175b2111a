"""LoRA stage 1 vs full stage 1: step time, peak RSS and validation loss, side by side.

    python bench/bench_lora.py [--steps 10] [--rank 16] [--precision fp32] [--hidden 512] [--layers 8]

Both variants train the same model through the real Trainer and DeepSpeed (ZeRO-2, 1 process,
CPU) on the same batches: the tiny Whisper and tokenizer of omni_ds.tiny with a wider Llama
(--hidden, --layers; the tiny 64-wide one is too small for the adapters to matter), the 10 real
clips, micro 2 x GAS 2. "full" trains the projector and the whole LLM; "lora" the projector and
rank --rank adapters on every attention and MLP projection (config section `lora`). Each variant
runs in its own process (peak RSS is a process's high-water mark), twice, alternating, so
machine load hits both alike; the faster run's median step time is taken. After the steps each
validates on the tiny setup's val manifest (2 of the 10 training clips: a measure of fit, not of
generalisation), the same samples for both. Ratios are lora / full.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]


def write_data(root: Path, hidden: int, layers: int) -> Path:
    from omni_ds.tiny.models import write_tiny_llm, write_tiny_whisper
    from omni_ds.tiny.tokenizer import write_tiny_tokenizer
    from omni_ds.train.demo import write_tiny_setup
    models = root / "models"
    write_tiny_tokenizer(models / "tokenizer")
    write_tiny_whisper(models / "whisper")
    write_tiny_llm(models / "llm", models / "tokenizer", hidden=hidden, layers=layers, heads=8, kv_heads=4)
    return write_tiny_setup(root, n_clips=10, val_clips=2)       # the models above are kept


def child(args) -> int:
    """One variant in this process: warm-up, timed steps, validation, peak RSS; one JSON line."""
    from omni_ds.train.config import build_config
    from omni_ds.train.demo import demo_stage1_config
    from omni_ds.train.trainer import Trainer
    from omni_ds.train.param_groups import count_params
    extra = {"lora.rank": args.rank} if args.child == "lora" else {}
    raw = demo_stage1_config(args.data, output_dir=tempfile.mkdtemp(prefix=f"bench_lora_{args.child}_"),
                             per_device_train_batch_size=2, global_batch_size=4, max_steps=args.steps + 3,
                             save_steps=0, logging_steps=1000, report_to=[], progress_bar=False,
                             precision=args.precision, learning_rate=1e-3, **extra)
    raw.pop("_comment")
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(args.port), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "1"})
    run = Trainer(build_config(raw), "ds_configs/zero2.json")
    run.train(until=3)                                   # warm-up: features into memory, buffers
    times = []
    for _ in range(args.steps):
        before = run.state.train_seconds
        run.train(until=run.state.step + 1)
        times.append(run.state.train_seconds - before)
    val = run.evaluate()
    counts = count_params(run.model)
    run.close()
    print(json.dumps({"variant": args.child, "step_s": statistics.median(times), "val_loss": val["loss"],
                      "train_loss": run.state.last_loss, "trainable": counts["trainable"], "total": counts["total"],
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(variant: str, data: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--data", str(data), "--steps", str(args.steps),
           "--rank", str(args.rank), "--precision", args.precision, "--port", str(free_port())]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if p.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--child", choices=("full", "lora"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    data = write_data(Path(tempfile.mkdtemp(prefix="bench_lora_")), args.hidden, args.layers)
    runs = {"full": [], "lora": []}
    for _ in range(2):
        for variant in ("full", "lora"):
            runs[variant].append(run_child(variant, data, args))
    best = {v: min(rs, key=lambda r: r["step_s"]) for v, rs in runs.items()}
    f, lo = best["full"], best["lora"]
    print(f"stage 1, 1 process, ZeRO-2, {args.precision}, LLM {args.hidden} wide x {args.layers} layers, "
          f"micro 2 x GAS 2, {args.steps} timed steps (median; faster of 2 runs each)")
    for v, r in best.items():
        print(f"  {v:4s}: trainable {r['trainable'] / 1e6:6.2f} M of {r['total'] / 1e6:.2f} M params, step "
              f"{r['step_s'] * 1e3:7.1f} ms, peak RSS {r['peak_rss_mib']:7.0f} MiB, train loss {r['train_loss']:.3f}, "
              f"validation loss {r['val_loss']:.3f}")
    print(f"  lora / full: step time {lo['step_s'] / f['step_s']:.2f}, peak RSS {lo['peak_rss_mib'] / f['peak_rss_mib']:.2f}, "
          f"trainable params {lo['trainable'] / f['trainable']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
