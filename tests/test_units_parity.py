"""Parity with the reference pipeline: fairseq's gslm HubertFeatureReader (one file at a time)
+ scikit-learn KMeans.predict, run in the fairseq oracle venv, against tools/extract_units.py
(batched and unbatched) on a mHuBERT-architecture checkpoint saved by fairseq itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from units_fixtures import CLIPS, REPO, one_thread, read_jsonl, write_clips, write_manifest  # noqa: F401 (autouse)

ORACLE = Path(os.environ.get("OMNI_DS_FAIRSEQ_PYTHON", REPO / ".venv-fairseq" / "bin" / "python"))
ORACLE_SCRIPT = Path(__file__).with_name("units_fairseq_oracle.py")

pytestmark = pytest.mark.skipif(
    not ORACLE.exists(),
    reason=f"fairseq oracle interpreter {ORACLE} missing: run tools/install_fairseq_oracle.sh "
           "(or set OMNI_DS_FAIRSEQ_PYTHON)")

sys.path.insert(0, str(REPO / "tools"))


def _oracle(*args) -> None:
    # One thread: on a shared 2-core machine OpenMP's spinning threads cost more than they give.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(ORACLE), str(ORACLE_SCRIPT), *map(str, args)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, f"oracle {args[0]} failed:\n{run.stderr[-4000:]}"


@pytest.fixture(scope="module", params=[False, True], ids=["raw-wave", "task-normalize"])
def setup(request, tmp_path_factory):
    from omni_ds.tiny.hubert import write_tiny_hubert
    normalize = request.param
    d = tmp_path_factory.mktemp("parity")
    ours = write_tiny_hubert(d / "omni.pt", seed=7, normalize=normalize)
    wavs = write_clips(d / "wav", with_generated=not normalize)
    ckpt, km = d / "fairseq.pt", d / "km.bin"
    # In the oracle: fairseq builds the model from our config and weights and saves it with its
    # Trainer; a k-means is fitted on its (fairseq) features of the real clips; reference units.
    spec = {"src": str(ours), "ckpt": str(ckpt), "layer": 11, "out": str(d / "ref.json"),
            "wavs": [str(w) for w in wavs], "backend_out": str(d / "backend.json"),
            "fit": {"wavs": [str(w) for w in wavs[:len(CLIPS)]], "k": 100, "seed": 3,
                    "out": str(km)}}
    (d / "job.json").write_text(json.dumps(spec))
    _oracle("job", d / "job.json")
    ref = json.loads((d / "ref.json").read_text())["units"]
    backend = json.loads((d / "backend.json").read_text())["units"]
    return d, ckpt, km, wavs, dict(zip([w.stem for w in wavs], ref)), backend


def test_fairseq_backend_matches_reference(setup):
    """omni_ds's --backend fairseq (run in the oracle venv) = the reference pipeline."""
    d, ckpt, km, wavs, ref, backend = setup
    frames = sum(len(r) for r in ref.values())
    same = sum(a == b for r, o in zip(ref.values(), backend) for a, b in zip(r, o))
    assert [len(o) for o in backend] == [len(r) for r in ref.values()]
    print(f"--backend fairseq: {same}/{frames} frames = {100 * same / frames:.4f} %")
    assert same >= 0.999 * frames


@pytest.mark.parametrize("batch_seconds", [80.0, 0.001], ids=["batched", "unbatched"])
def test_units_match_fairseq_reference(setup, batch_seconds):
    import extract_units
    d, ckpt, km, wavs, ref, _ = setup
    manifest = write_manifest(d / "m.jsonl", wavs)
    out = d / f"out_{batch_seconds}.jsonl"
    rc = extract_units.main(["--manifest", str(manifest), "--hubert", str(ckpt), "--kmeans",
                             str(km), "--out", str(out), "--no-dedup", "--batch-seconds",
                             str(batch_seconds), "--workers", "0", "--quiet"])
    assert rc == 0
    rows = {r["id"]: r["units"] for r in read_jsonl(out)}
    assert set(rows) == set(ref)
    total = same = 0
    for name, want in ref.items():
        got = rows[name]
        assert len(got) == len(want), f"{name}: {len(got)} frames, reference {len(want)}"
        agree = sum(a == b for a, b in zip(got, want))
        print(f"{name}: {agree}/{len(want)} frames = {100 * agree / len(want):.3f} %")
        assert agree >= 0.999 * len(want), f"{name}: only {agree}/{len(want)} frames agree"
        total, same = total + len(want), same + agree
    print(f"overall ({'batched' if batch_seconds > 1 else 'unbatched'}): {same}/{total} frames "
          f"= {100 * same / total:.4f} % equal to fairseq + scikit-learn")
    assert any(len(v) > 5000 for v in ref.values()) or "gen_long_123s" not in ref
