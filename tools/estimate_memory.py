"""Per-GPU memory estimate for omni_ds training, for any model size, GPU count and GPU.

    python tools/estimate_memory.py --llm llama-3.1-8b --gpus 4 --gpu L40              # stage 1, all ZeRO setups
    python tools/estimate_memory.py --params 8.05e9 --zero 2 --gpus 4 --gpu-memory-gib 45
    python tools/estimate_memory.py --llm llama-3.2-1b --stage 2 --gpus 1 --gpu 4090
    python tools/estimate_memory.py --llm llama-3.1-8b --gpus 1 --gpu-memory-gib 24 --zero 2 --lora-rank 64   # LoRA
    python tools/estimate_memory.py --llm llama-3.1-8b --gpus 1 --gpu 4090 --zero 2 --lora-rank 64 --qlora

Model states follow DeepSpeed's estimator (estimate_zero2/3_model_states_mem_needs); see
omni_ds/train/memory.py for every term. The training entry points print the same estimate in
--dry-run with the exact parameter counts of the configured model.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omni_ds.train import memory as mem  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default="llama-3.1-8b", choices=sorted(mem.LLM_PRESETS))
    ap.add_argument("--params", type=float, default=None,
                    help="override: total LLM params (e.g. 8.03e9); width/depth scaled from --llm")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=1)
    ap.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=None, help="one ZeRO stage (default: all)")
    ap.add_argument("--offload-optimizer", action="store_true")
    ap.add_argument("--offload-params", action="store_true")
    ap.add_argument("--gpus", type=int, default=4, help="GPUs in total (all nodes)")
    ap.add_argument("--gpu", default=None, help=f"one of {sorted(mem.GPU_MEMORY_GIB)}")
    ap.add_argument("--gpu-memory-gib", type=float, default=None)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=415,
                    help="LLM positions per sample (415: padded 30 s speech + prompt + answer)")
    ap.add_argument("--no-recompute", action="store_true", help="activation checkpointing off")
    ap.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--answer-tokens", type=int, default=128,
                    help="supervised (answer) tokens per sample, the only positions the LM head sees (128: a "
                         "long InstructS2S answer; of the 415 positions ~300 are speech); --answer-tokens "
                         "equal to --seq-len gives the all-positions bound")
    ap.add_argument("--freeze-backbone", action="store_true")
    ap.add_argument("--lora-rank", type=int, default=None,
                    help="stage 1 with LoRA of this rank on the LLM (frozen 16-bit base; projector trained)")
    ap.add_argument("--lora-targets", default=",".join(mem.LLAMA_LINEARS),
                    help="comma-separated linear layers that get adapters (default: attention + MLP)")
    ap.add_argument("--qlora", action="store_true", help="with --lora-rank: the frozen base in 4-bit NF4")
    args = ap.parse_args(argv)
    args.error = ap.error
    if args.lora_rank is not None and (args.stage != 1 or args.freeze_backbone or args.lora_rank < 1):
        ap.error("--lora-rank R (R >= 1) is for stage 1 without --freeze-backbone")
    if args.qlora and args.lora_rank is None:
        ap.error("--qlora needs --lora-rank")
    return args


def planned_shape(args) -> mem.ModelShape:
    """The preset's shape, scaled to --params, with the adapters of --lora-rank."""
    shape = mem.shape_for(mem.LLM_PRESETS[args.llm], with_decoder=True)
    if args.params:
        scale = args.params / shape.llm_params
        shape.llm_params = int(args.params)
        shape.llm_largest_layer = int(shape.llm_largest_layer * scale)
    if args.lora_rank is not None:
        targets = [t for t in args.lora_targets.split(",") if t]
        unknown = sorted(set(targets) - set(mem.LLAMA_LINEARS))
        if unknown:
            args.error(f"--lora-targets: {unknown} are not linear layers of a Llama layer {list(mem.LLAMA_LINEARS)}")
        mem.with_lora(shape, mem.LLM_PRESETS[args.llm], args.lora_rank, targets)
    return shape


def main(argv=None) -> int:
    args = parse_args(argv)
    shape = planned_shape(args)
    gpu_gib = args.gpu_memory_gib or (mem.GPU_MEMORY_GIB.get(args.gpu.upper()) if args.gpu else None)
    if args.gpu and gpu_gib is None:
        args.error(f"--gpu {args.gpu!r}: unknown; known: {sorted(mem.GPU_MEMORY_GIB)} (or --gpu-memory-gib)")
    name = args.gpu or "GPU"
    print(f"{args.llm}: LLM {shape.llm_params / 1e9:.3f} B, Whisper encoder {shape.encoder_params / 1e9:.3f} B "
          f"(frozen), projector {shape.projector_params / 1e6:.1f} M, CTC decoder {shape.decoder_params / 1e6:.1f} M; "
          f"stage {args.stage}, {args.gpus} GPU(s)"
          + (f"; LoRA r={args.lora_rank}: {shape.lora_params / 1e6:.1f} M adapter params" if args.lora_rank else "")
          + (", base in 4-bit NF4 (QLoRA)" if args.qlora else ""))
    setups = ([(args.zero, args.offload_optimizer, args.offload_params)] if args.zero is not None else
              [(2, False, False), (2, True, False), (3, False, False), (3, True, False), (3, True, True)])
    if args.qlora:
        setups = [s for s in setups if s[0] != 3] or args.error("--qlora: a 4-bit base cannot be partitioned by ZeRO-3")
    run = mem.RunSettings(args.stage, args.gpus, args.micro_batch, args.seq_len, args.precision,
                          args.freeze_backbone, lora=args.lora_rank is not None, quantized_base=args.qlora,
                          answer_len=args.answer_tokens)
    any_fit = False
    for z, oo, op in setups:
        plan = mem.estimate(shape, run, mem.MemorySetup(z, not args.no_recompute, oo, op))
        print(plan.describe())
        print("  -> " + mem.verdict(plan, gpu_gib, name))
        any_fit |= gpu_gib is None or plan.total_gib <= gpu_gib
    return 0 if any_fit else 1


if __name__ == "__main__":
    sys.exit(main())
