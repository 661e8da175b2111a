"""Training on DeepSpeed, one concept per file:

config.py        TrainConfig: typed, validated, `--set key=value` overrides
ds_config.py     DeepSpeed JSON: "auto" filled from the training config, conflicts refused
param_groups.py  trainable parameters and optimizer groups by name (projector / LLM / decoder, no-decay)
schedule.py      warmup + cosine from the real optimizer-step count
data.py          the step stream over the data pipeline's sampler; (epoch, step) data position
loop.py          fit(): the loop, step-level loss normalisation across ranks and micro-batches;
                 evaluate_loss (stage 1), evaluate_units (stage 2: CTC loss + unit edit distance)
checkpointing.py DeepSpeed checkpoints + our state, atomic `latest`, keep-last-K, resume
hidden_cache.py  stage 2: the frozen LLM's response states cached on disk, keyed by model + data + settings
edit_distance.py stage 2 validation: unit edit distance (Levenshtein, numpy rows)
metrics.py       rank-0 tqdm / TensorBoard / wandb / metrics.jsonl / summary.json
flops.py         FLOPs model and MFU
memory.py        per-GPU memory estimate (DeepSpeed's model-state formulas + activations)
plan.py          --dry-run
recipe.py        setup() -> Run, run(), the CLI shared by launch/stage1.py and launch/stage2.py
demo.py          demo / test configs on tiny models
"""
