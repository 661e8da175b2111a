"""A k-means .bin is data, never code: read through an allow-list unpickler, without scikit-learn."""
import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omni_ds.units.kmeans import load_centroids

sklearn = pytest.importorskip("sklearn", reason="scikit-learn writes the reference k-means files (dev extra)")
joblib = pytest.importorskip("joblib")


@pytest.fixture(scope="module")
def kmeans():
    from sklearn.cluster import KMeans
    return KMeans(n_clusters=5, n_init=1, random_state=0).fit(np.random.RandomState(0).randn(60, 8))


@pytest.mark.parametrize("compress", [0, 3])
def test_released_layout_reads_to_the_same_centroids(kmeans, tmp_path, compress):
    path = tmp_path / "km.bin"
    joblib.dump(kmeans, path, compress=compress)
    np.testing.assert_array_equal(load_centroids(path), kmeans.cluster_centers_.astype(np.float32))


def test_reading_needs_no_scikit_learn(kmeans, tmp_path):
    path = tmp_path / "km.bin"
    joblib.dump(kmeans, path)
    code = ("import sys; sys.modules['sklearn'] = None\n"      # any scikit-learn import now fails
            "from omni_ds.units.kmeans import load_centroids\n"
            f"print(load_centroids({str(path)!r}).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(5, 8)"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("wrap", ["bare", "inside_an_estimator_state"])
def test_a_payload_is_refused_and_never_runs(kmeans, tmp_path, wrap):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.bin"
    if wrap == "bare":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        evil = copy.copy(kmeans)
        evil.cluster_centers_ = _Payload(marker)            # the payload hides in a real estimator
        joblib.dump(evil, path)
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.bin: refusing to unpickle global (posix|os)\.system"):
        load_centroids(path)
    assert not marker.exists(), "the payload ran"


def test_extract_units_refuses_the_payload_in_one_line(tmp_path):
    """tools/extract_units.py --kmeans evil.bin: exit 2, one line naming the file and the global."""
    from omni_ds.tiny.hubert import write_tiny_hubert
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    hubert = write_tiny_hubert(tmp_path / "hubert.pt")
    p = subprocess.run([sys.executable, "tools/extract_units.py", "--manifest", str(manifest), "--hubert", str(hubert),
                        "--kmeans", str(path), "--out", str(tmp_path / "u.jsonl")],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{path}: refusing to unpickle global" in p.stderr
    assert not marker.exists(), "the payload ran"
