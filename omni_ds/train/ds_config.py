"""DeepSpeed config loading: `"auto"` values are filled from the training config, explicit values
must agree with it, so the two never disagree. The learning-rate schedule belongs to the training
config (a `scheduler` section in the DeepSpeed file is refused)."""
from __future__ import annotations

import copy
from typing import Any, Optional

from omni_ds.train.config import ConfigError, TrainConfig
from omni_ds.train.config.loading import read_json_object


def read_ds_config(path: str) -> dict:
    return read_json_object(path, "--ds")


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
    if "scheduler" in ds:
        raise ConfigError(f"{source}: remove the 'scheduler' section; the schedule comes from the "
                          "training config (optim.lr_scheduler_type, optim.warmup_ratio, optim.learning_rate)")
    fill = _Filler(source)
    micro, gas, global_batch = cfg.batch_geometry(world_size)
    for key, value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", gas),
                       ("train_batch_size", global_batch), ("gradient_clipping", float(cfg.optim.max_grad_norm))):
        fill.settle(ds, key, value, key)
    fill.precision(ds, cfg.precision)
    if ds.get("optimizer") is not None:
        fill.optimizer(ds["optimizer"].setdefault("params", {}), cfg.optim)
    if ds.get("zero_optimization") is not None:
        _zero_buckets(ds["zero_optimization"], hidden_size or 4096)
    ds.setdefault("steps_per_print", 10 ** 9)
    ds.setdefault("wall_clock_breakdown", False)
    left = _find_auto(ds)
    if left:
        raise ConfigError(f"{source}: no training-config value to fill \"auto\" at {left}")
    return ds


class _Filler:
    """Sets "auto" keys from the training config; a set key must agree with it."""

    def __init__(self, source: str):
        self.source = source

    def settle(self, section: dict, key: str, value: Any, path: str) -> None:
        cur = section.get(key, "auto")
        if cur == "auto":
            section[key] = value
        elif cur != value and not (isinstance(cur, (int, float)) and isinstance(value, (int, float))
                                   and abs(cur - value) <= 1e-12 * max(abs(cur), abs(value), 1)):
            raise ConfigError(f"{self.source}: {path} = {cur!r} disagrees with the training config "
                              f"({value!r}); set it to \"auto\" or change the training config")

    def precision(self, ds: dict, precision: str) -> None:
        for name in ("bf16", "fp16"):
            self.settle(ds.setdefault(name, {}), "enabled", precision == name, f"{name}.enabled")
        if precision == "fp16":                # dynamic loss scaling, DeepSpeed's usual settings
            for k, v in (("loss_scale", 0), ("initial_scale_power", 16), ("loss_scale_window", 1000),
                         ("hysteresis", 2), ("min_loss_scale", 1)):
                if ds["fp16"].get(k, "auto") == "auto":
                    ds["fp16"][k] = v

    def optimizer(self, params: dict, optim) -> None:
        self.settle(params, "lr", optim.learning_rate, "optimizer.params.lr")
        self.settle(params, "weight_decay", optim.weight_decay, "optimizer.params.weight_decay")
        self.settle(params, "eps", optim.adam_epsilon, "optimizer.params.eps")
        betas, want = params.get("betas", "auto"), [optim.adam_beta1, optim.adam_beta2]
        if betas == "auto":
            params["betas"] = want
        elif list(betas) != want:
            raise ConfigError(f"{self.source}: optimizer.params.betas = {betas!r} disagrees with the "
                              f"training config (optim.adam_beta1/2 = {want}); set it to \"auto\"")


def _zero_buckets(zero: dict, hidden: int) -> None:
    """ZeRO bucket sizes left "auto": the sizes DeepSpeed's HF integration derives from the width."""
    defaults = {"reduce_bucket_size": hidden * hidden, "allgather_bucket_size": max(hidden * hidden, 5 * 10 ** 8),
                "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                "stage3_param_persistence_threshold": 10 * hidden}
    for k, v in defaults.items():
        if zero.get(k) == "auto":
            zero[k] = v


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
