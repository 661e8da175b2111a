"""Read (and write) fairseq `.pt` checkpoints without importing fairseq.

A fairseq checkpoint is a torch pickle: tensors, containers and a plain-dict config, plus a few
fairseq objects (the label `Dictionary` instances in `task_state`, logging meters in
`extra_state`) and, in old files, an argparse `Namespace` or omegaconf nodes. Unpickling those
normally needs fairseq importable and, worse, a plain pickle load may run any callable the file
names. So the unpickler here resolves only an allow-list (torch's tensor rebuild functions,
dtypes, plain containers, numpy arrays/scalars) and turns every fairseq / omegaconf /
argparse global into an inert `StandIn`: it records its name and state and never runs code.
Nothing the HuBERT mapping needs lives in those objects (it reads `cfg` and `model`), so
losing their behaviour costs nothing. Any other global is refused, naming the file and global.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Module prefixes whose objects become inert stand-ins (see the module docstring).
_STAND_IN_PREFIXES = ("fairseq", "fairseq_cli", "omegaconf", "hydra", "argparse", "typing",
                      "enum", "pathlib")

_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "bytearray": bytearray,
             "slice": slice, "range": range}


def _allowed_torch(module: str, name: str) -> Any:
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor",
                                             "_rebuild_parameter",
                                             "_rebuild_parameter_with_state"):
        return getattr(torch._utils, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "torch" and name == "Size":
        return torch.Size
    return None


def _allowed_numpy(module: str, name: str) -> Any:
    # numpy's own reconstructors build arrays/scalars from raw bytes and a dtype; no code runs.
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct", "scalar"):
        return getattr(np._core.multiarray if hasattr(np, "_core") else np.core.multiarray, name)
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        return getattr(np.dtypes, name, None)
    return None


class StandIn:
    """Inert replacement for a fairseq/omegaconf/argparse object: keeps name, args and state."""

    _ref: tuple[str, str] = ("", "")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}       # (dict, slots) form
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {'.'.join(self._ref)}>"


_STAND_IN_CLASSES: dict[tuple[str, str], type] = {}


def stand_in_class(module: str, name: str) -> type:
    """One `StandIn` subclass per foreign global, so the writer can pickle it back by name."""
    key = (module, name)
    if key not in _STAND_IN_CLASSES:
        _STAND_IN_CLASSES[key] = type(f"StandIn_{name}", (StandIn,), {"_ref": key})
    return _STAND_IN_CLASSES[key]


class _RestrictedUnpickler(pickle.Unpickler):
    source = "<checkpoint>"

    def find_class(self, module: str, name: str) -> Any:
        found = (_allowed_torch(module, name) or _allowed_numpy(module, name))
        if found is not None:
            return found
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module.split(".")[0] in _STAND_IN_PREFIXES:
            return stand_in_class(module, name)
        raise pickle.UnpicklingError(
            f"{self.source}: refusing to unpickle global {module}.{name} (not a tensor, "
            f"container or known fairseq object)")


class _RestrictedPickleModule:
    """Quacks like the `pickle` module for torch.load(pickle_module=...)."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = "omni_ds_restricted_pickle"

    @staticmethod
    def load(f, **kwargs):
        return _RestrictedUnpickler(f, **kwargs).load()


def load_fairseq_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict ({"cfg", "model", "task_state", ...}) with fairseq objects inert."""
    path = str(path)
    module = type(f"_Restricted_{id(path)}", (_RestrictedPickleModule,), {})
    module.Unpickler = type("Unpickler", (_RestrictedUnpickler,), {"source": path})
    try:
        # weights_only=False only because the restricted unpickler above does the vetting:
        # torch's weights_only mode cannot map unknown fairseq globals to stand-ins.
        state = torch.load(path, map_location="cpu", pickle_module=module, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: cannot read as a fairseq checkpoint: {err}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return state


class _ForeignNamePickler(pickle._Pickler):
    """Pure-Python pickler that writes stand-in classes under their original global name."""

    def save_global(self, obj, name=None):
        ref = getattr(obj, "_ref", None) if isinstance(obj, type) else None
        if ref and issubclass(obj, StandIn) and ref[0]:
            self.write(pickle.GLOBAL + f"{ref[0]}\n{ref[1]}\n".encode("utf-8"))
            self.memoize(obj)
            return
        super().save_global(obj, name)


class _WriterPickleModule:
    Pickler = _ForeignNamePickler
    __name__ = "omni_ds_foreign_name_pickle"

    @staticmethod
    def dump(obj, f, protocol=2):
        _ForeignNamePickler(f, protocol=protocol).dump(obj)


def save_fairseq_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save with stand-ins written as the fairseq globals they stand for (protocol 2,
    as torch.save uses), so fairseq itself can load the file when it is installed."""
    torch.save(state, str(path), pickle_module=_WriterPickleModule, pickle_protocol=2)
