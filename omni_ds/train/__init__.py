"""Training on DeepSpeed, one concept per file:

config/          TrainConfig: typed sections (sections.py: model, data, batch, optim, checkpoint,
                 eval, log, debug), their checks (checks.py), JSON + `--set a.b=c` + older spellings
                 (loading.py), docs/CONFIG.md generated from them (reference.py)
ds_config.py     DeepSpeed JSON: "auto" filled from the training config, conflicts refused
param_groups.py  trainable parameters and optimizer groups by name (projector / LLM / decoder, no-decay)
schedule.py      warmup + cosine from the real optimizer-step count
data.py          the step stream over the data pipeline's sampler; (epoch, step) data position
trainer.py       Trainer: parts built in dependency order, train() over train_step(), run() to the
                 final checkpoint / evaluation / LLaMA-Omni folder and summary.json
parts.py         the Trainer's parts, one thing each: distributed start, model (and the effective
                 OmniConfig the dry run plans with), data + sampler, engine, stage-2 cache, memory check
loop.py          what the step is made of: loop state, cross-rank sums, batch to device; the loss
                 normalisation across ranks and micro-batches (its docstring)
evaluator.py     Evaluator (owns its cadence): loss (stage 1), CTC loss + unit edit distance (stage 2)
sample_answers.py a few greedy validation answers per evaluation (the evaluation package's batched
                 generation; ZeRO-3: every rank), vocoded in stage 2 with eval.vocoder
debug.py         test instruments behind the `debug` section: fault injection, the per-rank sample trace
checkpointing.py DeepSpeed checkpoints + our state, atomic `latest`, keep-last-K, resume, the save
                 cadence, output_dir/final
hidden_cache.py  stage 2: the frozen LLM's response states cached on disk, keyed by model + data + settings
edit_distance.py stage 2 validation: unit edit distance (Levenshtein, numpy rows)
metrics.py       rank-0 tqdm / TensorBoard / wandb / metrics.jsonl / summary.json
flops.py         FLOPs model and MFU
memory.py        per-GPU memory estimate (DeepSpeed's model-state formulas + activations)
dry_run.py       --dry-run (DryRun: one method per section) and the memory report the run shares
recipe.py        the CLI shared by launch/stage1.py and launch/stage2.py
demo.py          demo / test configs on tiny models
"""
