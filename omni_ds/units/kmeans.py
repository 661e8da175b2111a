"""k-means centroids: from the released joblib/scikit-learn `.bin`, or from a plain `.npy`; and
the nearest-centroid assignment in torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PICKLE_SUFFIXES = (".bin", ".joblib", ".pkl", ".pickle")


def load_centroids(path: str | Path) -> np.ndarray:
    """Centroids [K, D] float32 from a `.npy` (no pickle) or a joblib-pickled scikit-learn
    k-means (`cluster_centers_`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"k-means file not found: {path}")
    if path.suffix == ".npy":
        centers = np.load(path, allow_pickle=False)
    else:
        # Read through an allow-list unpickler (kmeans_pickle): a shared .bin cannot run code,
        # and scikit-learn is not needed. --save-centroids writes a pickle-free .npy.
        from omni_ds.units.kmeans_pickle import load_kmeans_pickle
        model = load_kmeans_pickle(path)
        centers = getattr(model, "cluster_centers_", None)
        if centers is None:
            raise ValueError(f"{path}: {type(model).__name__} has no cluster_centers_ (not a k-means model)")
    centers = np.asarray(centers)
    if centers.ndim != 2 or not np.isfinite(centers).all():
        raise ValueError(f"{path}: centroids must be a finite [K, D] array, got {centers.shape}")
    return np.ascontiguousarray(centers, dtype=np.float32)


def save_centroids(centers: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.ascontiguousarray(centers, dtype=np.float32), allow_pickle=False)
    tmp.replace(path)
    return path


class NearestCentroid(torch.nn.Module):
    """argmin_k ||x||^2 - 2 x.C_k + ||C_k||^2: one GEMM, on the features' device."""

    def __init__(self, centers: np.ndarray | torch.Tensor):
        super().__init__()
        c = torch.as_tensor(np.asarray(centers, dtype=np.float32))
        self.register_buffer("centers_t", c.t().contiguous())          # [D, K]
        self.register_buffer("centers_sq", (c * c).sum(1)[None, :])     # [1, K]

    @property
    def n_clusters(self) -> int:
        return self.centers_t.shape[1]

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        d = (x * x).sum(-1, keepdim=True) - 2 * (x @ self.centers_t) + self.centers_sq
        return d.argmin(-1)
