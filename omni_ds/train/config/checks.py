"""Type and range checks of a config section, driven by its field annotations.

Every message has one form: "config key 'optim.warmup_ratio' = 1.5: must be in [0, 1)".
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A training-config problem; the message names the key, the value and what is allowed."""


def bad(key: str, value: Any, allowed: str):
    raise ConfigError(f"config key {key!r} = {value!r}: {allowed}")


def check_section(prefix: str, section) -> None:
    """Check (and normalise: an int where a float is expected becomes a float) every plain field of
    a section dataclass, then its RANGES. Fields that are sections themselves are left to the caller."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        setattr(section, f.name, check_value(key, hints[f.name], getattr(section, f.name)))
    for name, (accepts, allowed) in getattr(type(section), "RANGES", {}).items():
        value = getattr(section, name)
        if value is not None and not accepts(value):
            bad(f"{prefix}.{name}" if prefix else name, value, allowed)


def check_value(key: str, hint, value: Any) -> Any:
    """`value` checked against the annotation `hint`; returns it (ints widened to floats)."""
    if typing.get_origin(hint) is Union:
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    elif value is None:
        bad(key, value, "must not be null")
    if typing.get_origin(hint) is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool) or value not in allowed:
            bad(key, value, "allowed: " + ", ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in allowed))
        return value
    return _check_plain(key, typing.get_origin(hint) or hint, value)


def _check_plain(key: str, want: type, value: Any) -> Any:
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is bool and not isinstance(value, bool):
        bad(key, value, "must be true or false")
    if want is int and (isinstance(value, bool) or not isinstance(value, int)):
        bad(key, value, "must be an integer")
    if want is float and not isinstance(value, float):
        bad(key, value, "must be a number")
    if want is float and not math.isfinite(value):
        bad(key, value, "must be a finite number")
    for ty, word in ((str, "a string"), (dict, "a JSON object"), (list, "a JSON list")):
        if want is ty and not isinstance(value, ty):
            bad(key, value, f"must be {word}")
    return value


def check_omni_overrides(overrides: dict) -> None:
    """model.omni: each key an OmniConfig field of the right type, and the whole a valid OmniConfig
    over the defaults (init_from's own values are checked again when the run plans)."""
    from omni_ds.model.omni_config import OmniConfig
    hints = typing.get_type_hints(OmniConfig)
    allowed = [f.name for f in dataclasses.fields(OmniConfig) if f.name != "extra"]
    for name, value in overrides.items():
        if name not in allowed:
            raise ConfigError(f"config key 'model.omni.{name}': not an OmniConfig setting; allowed: {allowed}")
        overrides[name] = check_value(f"model.omni.{name}", hints[name], value)
    try:
        OmniConfig(**overrides)
    except ValueError as e:
        raise ConfigError(f"config key 'model.omni': {e}") from None
