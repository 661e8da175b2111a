"""DeepSpeed config loading: `"auto"` values are filled from the training config, explicit values
must agree with it, so the two never disagree. The learning-rate schedule belongs to the training
config (a `scheduler` section in the DeepSpeed file is refused)."""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Optional

from omni_ds.train.config import ConfigError, TrainConfig


def read_ds_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"--ds {path!r}: no such file")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--ds {path!r}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--ds {path!r}: the top level must be a JSON object")
    return data


def zero_stage(ds: dict) -> int:
    return int((ds.get("zero_optimization") or {}).get("stage", 0))


def offload_optimizer(ds: dict) -> bool:
    dev = ((ds.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device", "none")
    return dev not in (None, "none")


def offload_params(ds: dict) -> bool:
    dev = ((ds.get("zero_optimization") or {}).get("offload_param") or {}).get("device", "none")
    return dev not in (None, "none")


def fill_ds_config(ds_in: dict, cfg: TrainConfig, world_size: int, hidden_size: Optional[int] = None,
                   source: str = "<ds config>") -> dict:
    """Return a copy of `ds_in` with every "auto" replaced; raise naming the key on any conflict."""
    ds = copy.deepcopy(ds_in)
    micro, gas, global_batch = cfg.batch_geometry(world_size)

    def settle(section: dict, key: str, value: Any, path: str):
        cur = section.get(key, "auto")
        if cur == "auto":
            section[key] = value
        elif cur != value and not (isinstance(cur, (int, float)) and isinstance(value, (int, float))
                                   and abs(cur - value) <= 1e-12 * max(abs(cur), abs(value), 1)):
            raise ConfigError(f"{source}: {path} = {cur!r} disagrees with the training config "
                              f"({value!r}); set it to \"auto\" or change the training config")

    if "scheduler" in ds:
        raise ConfigError(f"{source}: remove the 'scheduler' section; the schedule comes from the "
                          "training config (lr_scheduler_type, warmup_ratio, learning_rate)")
    settle(ds, "train_micro_batch_size_per_gpu", micro, "train_micro_batch_size_per_gpu")
    settle(ds, "gradient_accumulation_steps", gas, "gradient_accumulation_steps")
    settle(ds, "train_batch_size", global_batch, "train_batch_size")
    settle(ds, "gradient_clipping", float(cfg.optim.max_grad_norm), "gradient_clipping")

    for name in ("bf16", "fp16"):
        sec = ds.setdefault(name, {})
        settle(sec, "enabled", cfg.precision == name, f"{name}.enabled")
    if cfg.precision == "fp16":
        fp16 = ds["fp16"]
        for k, v in (("loss_scale", 0), ("initial_scale_power", 16), ("loss_scale_window", 1000),
                     ("hysteresis", 2), ("min_loss_scale", 1)):
            if fp16.get(k, "auto") == "auto":
                fp16[k] = v

    opt = ds.get("optimizer")
    if opt is not None:
        params = opt.setdefault("params", {})
        settle(params, "lr", cfg.optim.learning_rate, "optimizer.params.lr")
        settle(params, "weight_decay", cfg.optim.weight_decay, "optimizer.params.weight_decay")
        settle(params, "eps", cfg.optim.adam_epsilon, "optimizer.params.eps")
        betas = params.get("betas", "auto")
        want = [cfg.optim.adam_beta1, cfg.optim.adam_beta2]
        if betas == "auto":
            params["betas"] = want
        elif list(betas) != want:
            raise ConfigError(f"{source}: optimizer.params.betas = {betas!r} disagrees with the "
                              f"training config (adam_beta1/2 = {want}); set it to \"auto\"")

    z = ds.get("zero_optimization")
    if z is not None:
        h = hidden_size or 4096
        defaults = {
            "reduce_bucket_size": h * h,
            "allgather_bucket_size": max(h * h, 5 * 10 ** 8),
            "stage3_prefetch_bucket_size": int(0.9 * h * h),
            "stage3_param_persistence_threshold": 10 * h,
        }
        for k, v in defaults.items():
            if z.get(k) == "auto":
                z[k] = v

    ds.setdefault("steps_per_print", 10 ** 9)
    ds.setdefault("wall_clock_breakdown", False)
    left = _find_auto(ds)
    if left:
        raise ConfigError(f"{source}: no training-config value to fill \"auto\" at {left}")
    return ds


def _find_auto(d: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _find_auto(v, f"{prefix}{k}.")
    elif d == "auto":
        out.append(prefix.rstrip("."))
    return out


def load_ds_config(path: str, cfg: TrainConfig, world_size: int, hidden_size: Optional[int] = None) -> dict:
    return fill_ds_config(read_ds_config(path), cfg, world_size, hidden_size, source=f"--ds {path}")
