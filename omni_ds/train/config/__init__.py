"""The training configuration: typed sections (sections.py), their checks (checks.py), the run-wide
TrainConfig (train_config.py) and reading it from JSON + `--set` (loading.py).

docs/CONFIG.md lists every key, its section and what it does."""
from omni_ds.train.config.checks import ConfigError
from omni_ds.train.config.loading import build_config, dotted_place, load_config, parse_value, set_key
from omni_ds.train.config.sections import SECTIONS
from omni_ds.train.config.train_config import TrainConfig

__all__ = ["ConfigError", "SECTIONS", "TrainConfig", "build_config", "dotted_place", "load_config", "parse_value", "set_key"]
