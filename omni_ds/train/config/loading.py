"""From a JSON file, `--set` overrides and older spellings to a validated TrainConfig.

A config file is nested by section (`{"optim": {"learning_rate": 2e-5}}`); `--set` addresses a
key with dots (`--set optim.learning_rate=1e-4`, `--set model.omni.encoder_mode=trimmed`). Values
given to `--set` are parsed as JSON when they parse and kept as strings otherwise.

Older spellings keep working, so existing configs, saved checkpoints and the original pipeline's
configs load: a flat key (`learning_rate`, `save_steps`, `omni.encoder_mode`) is read at its place
in the sections, and the original LLaMA-Omni training README's keys (`data_path`,
`model_name_or_path`, `stage1_model_path`, `ctc_loss_weight`, ...) are aliases where they mean the
same thing. A key given twice with different values, an unknown key, or a key this framework
handles elsewhere (`kmeans_model_path`) is an error that says what to write instead.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any, Optional

from omni_ds.train.config.checks import ConfigError
from omni_ds.train.config.sections import SECTIONS
from omni_ds.train.config.train_config import TrainConfig

TOP_LEVEL = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in SECTIONS]
# flat names whose place in the sections has another name
RENAMED = {"omni": "model.omni", "save_steps": "checkpoint.every_steps", "save_total_limit": "checkpoint.keep_last",
           "eval_steps": "eval.every_steps", "per_device_eval_batch_size": "eval.batch_size",
           "eval_max_samples": "eval.max_samples", "logging_steps": "log.every_steps",
           "bad_records": "data.on_bad"}
# the original pipeline's README keys (../shared/seed/training_README.md) that mean what ours do
SEED_ALIASES = {"data_path": "data.train_manifest", "model_name_or_path": "model.llm_path",
                "stage1_model_path": "model.init_from", "ctc_loss_weight": "model.omni.ctc_loss_weight",
                "unit_vocab_size": "model.omni.unit_vocab_size",
                "ctc_upsample_factor": "model.omni.ctc_upsample_factor"}
# every key the original README documents (aliases above, or our own flat name)
SEED_README_KEYS = ["data_path", "model_name_or_path", "num_train_epochs", "per_device_train_batch_size",
                    "learning_rate", "speech_projector_lr", "freeze_backbone", "stage1_model_path",
                    "ctc_loss_weight", "unit_vocab_size", "ctc_upsample_factor"]
# keys we do not train with, and what to do instead
HANDLED_ELSEWHERE = {
    "kmeans_model_path": "stage 2 trains on units already in the manifest: run tools/extract_units.py "
                         "--manifest M --hubert HUBERT.pt --kmeans KMEANS.bin --out M_units.jsonl once, "
                         "set data.train_manifest to its output, and remove kmeans_model_path",
}
# old values of renamed keys, by the old key
_OLD_VALUES = {"bad_records": {"stop": "error"}}


def _flat_names() -> dict[str, str]:
    """Every accepted undotted key -> its dotted place (a field name used by two sections is not one)."""
    seen: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            seen.setdefault(f.name, []).append(f"{section}.{f.name}")
    flat = {name: places[0] for name, places in seen.items() if len(places) == 1}
    return {**flat, **RENAMED, **SEED_ALIASES, **{k: k for k in TOP_LEVEL}}


FLAT = _flat_names()


def dotted_place(key: str) -> str:
    """Where a key given by a user lives: 'optim.learning_rate', 'model.omni.encoder_mode', 'seed'."""
    if key in HANDLED_ELSEWHERE:
        raise ConfigError(f"config key {key!r}: {HANDLED_ELSEWHERE[key]}")
    head, _, rest = key.partition(".")
    if rest and head == "omni":
        return f"model.omni.{rest}"
    if rest and head in SECTIONS:
        fields = {f.name for f in dataclasses.fields(SECTIONS[head])}
        name = rest.partition(".")[0]
        if name in fields and (name == "omni" or "." not in rest):
            return key
        raise ConfigError(f"unknown config key {key!r}; {head} keys: {sorted(fields)}"
                          + _suggest(key, [f"{head}.{f}" for f in fields]))
    if key in FLAT:
        return FLAT[key]
    canonical = TOP_LEVEL + [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)]
    raise ConfigError(f"unknown config key {key!r}; keys are {TOP_LEVEL} and the sections "
                      f"{list(SECTIONS)} (docs/CONFIG.md)" + _suggest(key, canonical + list(FLAT)))


def set_key(raw: dict, key: str, value: Any) -> None:
    """Set `key` (any accepted spelling) in a nested config dict at its place; a model.omni object
    is merged key by key, as the file reader does."""
    *path, last = dotted_place(key).split(".")
    node = raw
    for name in path:
        node = node.setdefault(name, {})
    if path + [last] == ["model", "omni"] and isinstance(value, dict):
        node.setdefault("omni", {}).update(value)
    else:
        node[last] = value


def _suggest(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.75)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


class NestedRaw:
    """The config being assembled, by dotted place, remembering how each key was spelled."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.spelled: dict[str, str] = {}

    def put(self, key: str, value: Any, override: bool = False) -> None:
        place = dotted_place(key)
        if place == "model.omni":
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} = {value!r}: must be a JSON object of OmniConfig settings")
            for name, v in value.items():
                self.put(f"model.omni.{name}", v, override)
            return
        value = _OLD_VALUES.get(key, {}).get(value, value) if isinstance(value, str) else value
        if not override and place in self.values and self.values[place] != value:
            raise ConfigError(f"config key {place!r} is given twice with different values: as "
                              f"{self.spelled[place]!r} = {self.values[place]!r} and as {key!r} = {value!r}")
        self.values[place], self.spelled[place] = value, key

    def put_file(self, raw: dict) -> None:
        for key, value in raw.items():
            if key.startswith("_"):
                continue
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"config key {key!r} is a section: expected a JSON object, got {value!r}")
                for name, v in value.items():
                    if not name.startswith("_"):
                        self.put(f"{key}.{name}", v)
            else:
                self.put(key, value)

    def as_dict(self) -> dict:
        """The nested form: top-level keys, then one object per section that has keys."""
        out: dict[str, Any] = {}
        for place, value in self.values.items():
            set_key(out, place, value)
        order = TOP_LEVEL + list(SECTIONS)
        return {k: out[k] for k in order if k in out}

    def build(self) -> TrainConfig:
        raw = self.as_dict()
        top = {k: v for k, v in raw.items() if k not in SECTIONS}
        return TrainConfig(**top, **{name: cls(**raw.get(name, {})) for name, cls in SECTIONS.items()})


def nested(raw: dict) -> dict:
    """A config dict in any accepted spelling, rewritten in the nested form (comments dropped)."""
    n = NestedRaw()
    n.put_file(raw)
    return n.as_dict()


def parse_value(text: str) -> Any:
    """`--set` value: JSON when it parses (numbers, true/false/null, lists, objects), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(raw: dict, source: str = "<dict>", overrides: Optional[list[str]] = None) -> TrainConfig:
    """A validated TrainConfig from a config dict (nested, flat or mixed) and `--set` items."""
    try:
        nested = NestedRaw()
        nested.put_file(raw)
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value")
            key, text = item.split("=", 1)
            nested.put(key.strip(), parse_value(text), override=True)
        return nested.build().validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def read_json_object(path: str, flag: str = "--config") -> dict:
    """A JSON object from a file the user named with `flag`; each way it can fail named in one line."""
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} {path!r}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag} {path!r}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{flag} {path!r}: not UTF-8 text ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{flag} {path!r}: the top level must be a JSON object")
    return raw


def load_config(path: Optional[str], overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read a JSON training config, apply `--set` overrides, validate. Keys starting with "_" are
    comments. Relative paths in the file stay relative to the working directory, as users type them."""
    raw = read_json_object(path) if path is not None else {}
    src = path or "<defaults>"
    if overrides:
        src += " + --set " + " ".join(overrides)
    return build_config(raw, src, overrides)
