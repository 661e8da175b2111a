"""Read a joblib/scikit-learn k-means `.bin` (the released mHuBERT km1000 file) without running
code from it and without scikit-learn.

A pickle names globals that the loader calls; a plain `joblib.load` of a shared file can
therefore run any command its author chose. Here joblib's own unpickler (it knows how the array
bytes follow each `NumpyArrayWrapper` in the stream, and decompresses) is used with an
allow-list: numpy's array/scalar reconstructors and dtypes, joblib's array wrapper, a few
builtins; every scikit-learn class becomes an inert stand-in holding its state (so
`cluster_centers_` is there as an array, and scikit-learn is never imported). Anything else is
refused, naming the file and the global.
"""
from __future__ import annotations

import inspect
import pickle
from pathlib import Path
from typing import Any

from omni_ds.units.fairseq_checkpoint import _BUILTINS, _allowed_numpy, stand_in_class

_JOBLIB_WRAPPERS = {("joblib.numpy_pickle", "NumpyArrayWrapper"), ("joblib.numpy_pickle", "NDArrayWrapper")}


def _restricted_unpickler_class():
    from joblib import numpy_pickle

    class RestrictedNumpyUnpickler(numpy_pickle.NumpyUnpickler):
        source = "<k-means file>"

        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _JOBLIB_WRAPPERS:
                return getattr(numpy_pickle, name)
            found = _allowed_numpy(module, name)
            if found is not None:
                return found
            if module in ("builtins", "__builtin__") and name in _BUILTINS:
                return _BUILTINS[name]
            if module.split(".")[0] == "sklearn":
                return stand_in_class(module, name)
            raise pickle.UnpicklingError(
                f"{self.source}: refusing to unpickle global {module}.{name}: a k-means file holds "
                "numpy arrays and scikit-learn estimator state only (this one may carry code)")

    return RestrictedNumpyUnpickler


def load_kmeans_pickle(path: str | Path) -> Any:
    """The object of a joblib k-means file, scikit-learn classes as stand-ins; no code runs."""
    try:
        from joblib import numpy_pickle_utils as utils
    except ImportError as err:
        raise ImportError(f"reading {path} needs joblib: pip install 'omni_ds[units]' "
                          "(or pass a .npy of centroids)") from err
    unpickler_class = _restricted_unpickler_class()
    with open(path, "rb") as f, utils._validate_fileobject_and_memmap(f, str(path), None) as (fobj, _):
        if isinstance(fobj, str):
            raise ValueError(f"{path}: a joblib < 0.10 pickle (companion files); not supported")
        # joblib >= 1.5 takes ensure_native_byte_order; older versions do not
        native = {"ensure_native_byte_order": True} \
            if "ensure_native_byte_order" in inspect.signature(unpickler_class.__init__).parameters else {}
        unpickler = unpickler_class(str(path), fobj, mmap_mode=None, **native)
        unpickler.source = str(path)
        return unpickler.load()
