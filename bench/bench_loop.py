"""Step time of the omni_ds training loop vs a bare PyTorch loop, and the MFU estimate.

    python bench/bench_loop.py [--steps 40] [--ds ds_configs/zero0.json] [--micro 2] [--gas 2]

Both loops train the same tiny model (omni_ds.tiny factories) on the same batches (the 10 real
clips, in-memory features), fp32, 1 process:
  - omni_ds: Trainer.train() — DeepSpeed engine, step-level target all-reduce,
    grad clipping, scheduler, logging to metrics.jsonl + TensorBoard + tqdm every step;
  - bare: model(**batch), (loss_sum / N_step).backward(), clip_grad_norm_, AdamW.step(),
    LambdaLR.step(), zero_grad().
They alternate in blocks of --block steps so machine load hits both alike; the fastest block of
each (least interference from other processes) gives the ratio, medians are printed beside it.
MFU: the FLOPs model (omni_ds/train/flops.py) over the measured step time, against this CPU's
measured fp32 GEMM throughput (and, for reference, what the model says for the paper's run).
"""
import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gemm_tflops(n: int = 1024, reps: int = 10) -> float:
    from omni_ds.train.flops import measured_gemm_tflops
    return measured_gemm_tflops("fp32", n, reps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="measured steps per loop")
    ap.add_argument("--block", type=int, default=10, help="steps per alternation block")
    ap.add_argument("--ds", default="ds_configs/zero0.json",
                    help="zero0 (default): one process has nothing to partition; zero2 adds ZeRO's "
                         "per-parameter gradient hooks, a fixed per-tensor cost that dominates a tiny model")
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--gas", type=int, default=2)
    ap.add_argument("--logging-steps", type=int, default=10,
                    help="metrics.jsonl/TensorBoard rows every N steps (launch/configs/stage1.json: 10)")
    args = ap.parse_args(argv)

    import torch
    from omni_ds.train.config import build_config
    from omni_ds.train.demo import demo_stage1_config, write_tiny_setup
    from omni_ds.train.flops import mfu
    from omni_ds.train.param_groups import build_param_groups, for_optimizer
    from omni_ds.train.parts import build_model
    from omni_ds.train.trainer import Trainer
    from omni_ds.train.schedule import make_scheduler_factory

    tmp = Path(tempfile.mkdtemp(prefix="bench_loop_"))
    data = write_tiny_setup(tmp / "data", n_clips=10, val_clips=1)
    total = 10_000
    raw = demo_stage1_config(data, output_dir=str(tmp / "out"), per_device_train_batch_size=args.micro,
                             global_batch_size=args.micro * args.gas, max_steps=total, save_steps=0,
                             logging_steps=args.logging_steps, val_manifest=None, cache_in_memory=True)
    raw.pop("_comment")
    cfg = build_config(raw)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "1"})

    # --- omni_ds loop ---------------------------------------------------------------------------
    run = Trainer(cfg, args.ds)

    def omni_block(n: int) -> list[float]:
        # one train() call per block, as in training; the loop times each step itself (train_seconds)
        before = run.state.train_seconds
        run.train(until=run.state.step + n)
        return [(run.state.train_seconds - before) / n]

    # --- bare PyTorch loop: same model, same batches, same precision --------------------------------
    from omni_ds.data.collator import OmniCollator
    from omni_ds.data.sampler import Batching, DistributedBatchSampler
    from omni_ds.train.data import StepStream, count_targets
    torch.manual_seed(cfg.seed)
    model, tok = build_model(cfg, {})
    model.train()
    opt = torch.optim.AdamW(for_optimizer(build_param_groups(model, cfg)), lr=cfg.optim.learning_rate)
    sched = make_scheduler_factory(total, 0, "cosine", 0.0)(opt)
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = DistributedBatchSampler(run.train_set.lengths, args.micro, 1, 0, cfg.seed, Batching(grad_accum=args.gas))
    stream = StepStream(run.train_set, sampler, args.gas, OmniCollator(tok.pad_token_id))

    def bare_block(n: int) -> list[float]:
        t = time.perf_counter()
        for _ in range(n):
            _, _, micro = stream.next_step()
            n_step = sum(count_targets(b, 1) for b in micro)
            for b in micro:
                out = model(**b)
                (out["loss_sum"] / n_step).backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        return [(time.perf_counter() - t) / n]

    omni_block(3)            # warm-up: first-touch features into memory, allocator, DeepSpeed buffers
    bare_block(3)
    omni_t, bare_t = [], []
    while len(omni_t) * args.block < args.steps:
        omni_t += omni_block(args.block)
        bare_t += bare_block(args.block)
    run.close()
    # per-block mean step times; the machine is shared, so the fastest block of each loop (least
    # interference) is the estimate, the medians are printed beside it
    o, b = min(omni_t), min(bare_t)
    om, bm = statistics.median(omni_t), statistics.median(bare_t)

    # MFU from the FLOPs model, over the measured omni_ds step time
    _, _, micro = run.stream.next_step()
    pos = {k: sum(run.flops_model.positions(m)[k] for m in micro) for k in run.flops_model.positions(micro[0])}
    flops, _ = run.flops_model.step_flops(pos)
    peak = gemm_tflops()
    print(f"omni_ds loop ({args.ds}, micro {args.micro} x GAS {args.gas}, fp32, 1 process, "
          f"{torch.get_num_threads()} threads): step {o * 1e3:.1f} ms (best block; median {om * 1e3:.1f}) over {len(omni_t) * args.block} steps")
    print(f"bare PyTorch loop (same model, batches, precision): step {b * 1e3:.1f} ms (best block; median {bm * 1e3:.1f}) over {len(bare_t) * args.block} steps")
    print(f"ratio omni_ds / bare = {o / b:.3f} best blocks, {om / bm:.3f} medians  (target <= 1.15)")
    print(f"FLOPs model: {flops / 1e9:.2f} GFLOP per step -> {flops / o / 1e12:.4f} TFLOPS; this CPU's fp32 "
          f"GEMM peak {peak:.3f} TFLOPS -> MFU {mfu(flops, o, 1, peak) * 100:.1f} %")
    # the paper's stage 1 through the same model: 200 K samples x 3 epochs, ~415 LLM positions and
    # 1500 encoder frames per sample, ~32 h on 4 x L40 (181 dense bf16 TFLOPS each)
    from omni_ds.train.flops import FlopsModel
    from omni_ds.train.memory import LLM_PRESETS, shape_for
    s = shape_for(LLM_PRESETS["llama-3.1-8b"])
    embed = 128256 * 4096
    paper = FlopsModel(s.encoder_params, s.projector_params, s.llm_params - embed, recompute=True)
    n = 200_000 * 3
    pf, hf = paper.step_flops({"encoder_frames": 1500 * n, "speech_positions": 300 * n,
                               "llm_positions": 415 * n, "decoder_positions": 0})
    print(f"paper stage 1 via the FLOPs model: {pf:.3g} model FLOPs in ~32 h on 4 x L40 -> MFU "
          f"{pf / (32 * 3600 * 4 * 181e12) * 100:.1f} % (HFU with recompute {hf / (32 * 3600 * 4 * 181e12) * 100:.1f} %)")
    json.dump({"omni_ms": o * 1e3, "bare_ms": b * 1e3, "ratio": o / b, "cpu_gemm_tflops": peak,
               "mfu": mfu(flops, o, 1, peak)}, open(tmp / "bench_loop.json", "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
