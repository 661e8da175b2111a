#!/usr/bin/env python
"""Unit extraction throughput on this machine's CPU, fp32 and bf16 side by side in one run: the
reference pipeline (fairseq's gslm HubertFeatureReader, one utterance at a time, scikit-learn
KMeans.predict; run in the fairseq oracle venv), omni_ds in fp32 and omni_ds in bf16 (batched,
padding-masked, torch argmin), same checkpoint (saved by fairseq), same audio. Two models: the
tiny parity checkpoint and the full-size mHuBERT Base architecture (random weights, 768 wide,
12 layers) on the parity clips (10 real + 6 generated, one of 123 s). Prints audio-seconds per
wall-second, the ratios, and the share of frames whose units equal fp32's / the reference's.

  python bench/bench_units.py [--threads N] [--repeat-audio R] [--batch-seconds S] [--only full]

Agreement needs a k-means: the reference's (k=100, fitted by fairseq on its own features of the
real clips: random centroids would be far from every frame and flatter than any real k-means),
and k=100 / k=1000 fitted on omni_ds's fp32 features of the files themselves. Random weights are
all there is here (no network for the released checkpoint), so these agreements are of a random
model, whose features are less separated than trained ones.

Every side times reading + decoding + features + units for every file, model loading (and
bf16's one-off weight preparation) excluded. In fp32 both sides run the same oneDNN/MKL GEMMs and
convolutions, so their ratio is near 1; bf16 runs on AMX (omni_ds/units/cpu_bf16.py). The machine
is shared: the load average is printed, and figures move by +-20 % between runs; compare ratios
within one run. Needs tools/install_fairseq_oracle.sh (or OMNI_DS_FAIRSEQ_PYTHON) for the
reference figures; without it only omni_ds's fp32 and bf16 are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

ORACLE = Path(os.environ.get("OMNI_DS_FAIRSEQ_PYTHON", REPO / ".venv-fairseq" / "bin" / "python"))
ORACLE_SCRIPT = REPO / "tests" / "units_fairseq_oracle.py"


def oracle(env, *args):
    run = subprocess.run([str(ORACLE), str(ORACLE_SCRIPT), *map(str, args)], capture_output=True,
                         text=True, env=env)
    if run.returncode:
        raise SystemExit(f"oracle failed:\n{run.stderr[-3000:]}")


def ours(ckpt, centers, wavs, batch_seconds, dtype):
    """Same work as the reference loop: read each file, features, nearest centroid; the model
    (and bf16's prepared weights) built before the clock starts, as the reference's."""
    import torch
    from omni_ds.data.audio import load_audio
    from omni_ds.units.extract import FeatureExtractor
    from omni_ds.units.hubert import load_hubert
    from omni_ds.units.kmeans import NearestCentroid
    fx = FeatureExtractor(load_hubert(ckpt), "cpu", batch_seconds,
                          {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    quantizer = NearestCentroid(centers)
    start = time.perf_counter()
    feats = fx.features([load_audio(w) for w in wavs])
    units = [quantizer(f).tolist() for f in feats]
    return time.perf_counter() - start, units, feats


def _same(a, b) -> tuple[int, int]:
    return sum(x == y for u, v in zip(a, b) for x, y in zip(u, v)), sum(len(u) for u in a)


def _pct(a, b) -> str:
    same, total = _same(a, b)
    return f"{100 * same / total:8.3f} %"


def _own_kmeans_agreement(feats32, feats16, k) -> str:
    """bf16 vs fp32 units under a k-means of k fitted on the fp32 features themselves."""
    import numpy as np
    from sklearn.cluster import KMeans
    a, b = (np.concatenate([f.numpy() for f in fs]) for fs in (feats32, feats16))
    if len(a) < 4 * k:
        return f"k={k}: too few frames ({len(a)})"
    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(a)
    return f"k={k}: {100 * float((km.predict(a) == km.predict(b)).mean()):.3f} %"


def compare(label, ckpt, km, wavs, batch_seconds, ref=None):
    """One model, side by side in one run: the reference (when given), omni_ds fp32 and bf16."""
    from omni_ds.data.audio import load_audio
    from omni_ds.units.kmeans import load_centroids
    centers = load_centroids(km)
    audio_s = sum(len(load_audio(w)) for w in wavs) / 16000
    runs = {d: ours(ckpt, centers, wavs, batch_seconds, d) for d in ("fp32", "bf16")}
    frames = sum(len(u) for u in runs["fp32"][1])
    print(f"[{label}] {len(wavs)} files, {audio_s:.1f} audio s, {frames} frames, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  {'':44s} {'s':>7s} {'audio-s/s':>10s} {'vs ref':>7s} {'vs fp32':>7s} "
          f"{'= fp32 units':>12s} {'= ref units':>12s}")
    rows = ([("reference (fairseq, 1 utt at a time, sklearn)", ref["seconds"], ref["units"])]
            if ref else [])
    rows += [(f"omni_ds {d} (batch {batch_seconds:g} s, torch argmin)", runs[d][0], runs[d][1])
             for d in ("fp32", "bf16")]
    for name, sec, units in rows:
        vs_ref = f"{ref['seconds'] / sec:6.2f}x" if ref else "      -"
        print(f"  {name:44s} {sec:7.2f} {audio_s / sec:10.1f} {vs_ref} "
              f"{runs['fp32'][0] / sec:6.2f}x {_pct(units, runs['fp32'][1]):>12s} "
              f"{_pct(units, ref['units']) if ref else '-':>12s}")
    own = ", ".join(_own_kmeans_agreement(runs["fp32"][2], runs["bf16"][2], k) for k in (100, 1000))
    print(f"  bf16 = fp32 units with a k-means fitted on omni_ds fp32 features of these files: {own}")


def with_reference(label, d, src, wavs, fit_wavs, env, batch_seconds, k):
    """fairseq saves the checkpoint, fits the k-means on its own features, times its units."""
    ckpt, km = d / f"{label[:8]}.fairseq.pt", d / f"{label[:8]}.km.bin"
    spec = {"src": str(src), "ckpt": str(ckpt), "layer": 11, "out": str(d / f"{label[:8]}.ref.json"),
            "wavs": [str(w) for w in wavs],
            "fit": {"wavs": [str(w) for w in fit_wavs], "k": k, "seed": 0, "out": str(km)}}
    (d / "job.json").write_text(json.dumps(spec))
    oracle(env, "job", d / "job.json")
    compare(label, ckpt, km, wavs, batch_seconds, json.loads(Path(spec["out"]).read_text()))


def without_reference(label, d, src, wavs, batch_seconds, k):
    """k-means (k clusters) fitted on omni_ds's own fp32 features of the files."""
    import numpy as np
    from sklearn.cluster import KMeans
    from omni_ds.data.audio import load_audio
    from omni_ds.units.extract import FeatureExtractor
    from omni_ds.units.hubert import load_hubert
    from omni_ds.units.kmeans import save_centroids
    feats = FeatureExtractor(load_hubert(src)).features([load_audio(w) for w in wavs])
    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(np.concatenate([f.numpy() for f in feats]))
    compare(label, src, save_centroids(km.cluster_centers_, d / f"{label[:8]}.km.npy"), wavs,
            batch_seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--repeat-audio", type=int, default=3, help="copies of the real clips (tiny model)")
    ap.add_argument("--batch-seconds", type=float, default=16.0)
    ap.add_argument("--only", choices=["tiny", "full"], help="run one of the two models")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    from units_fixtures import write_clips
    from omni_ds.tiny.hubert import write_tiny_hubert
    from omni_ds.units.cpu_bf16 import cpu_supports_bf16
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(f"CPU threads {args.threads}, os.cpu_count() {os.cpu_count()}, native bf16 "
          f"{cpu_supports_bf16()}, load average {os.getloadavg()[0]:.2f} (other jobs share this machine)")
    if not ORACLE.exists():
        print(f"no fairseq oracle at {ORACLE} (tools/install_fairseq_oracle.sh or "
              "OMNI_DS_FAIRSEQ_PYTHON): reference figures skipped")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        real = write_clips(d / "wav", with_generated=False)
        parity = write_clips(d / "parity", with_generated=True)       # the parity tests' clips
        # Copies trimmed by a few samples: every file has its own length, as in a real data set.
        copies = real + [_trimmed(w, d / f"copy{r}", 37 * r) for r in range(1, args.repeat_audio)
                         for w in real]
        models = {"tiny": ("tiny (parity checkpoint: 64-ch convs, 96 wide, 12 layers)",
                           lambda: write_tiny_hubert(d / "tiny.pt", seed=7), copies),
                  "full": ("full-size mHuBERT Base (512-ch convs, 768 wide, 12 layers)",
                           lambda: write_tiny_hubert(d / "full.pt", seed=0, conv_dim=512, width=768,
                                                     heads=12, ffn=3072, layers=12), parity)}
        for name, (label, make, wavs) in models.items():
            if args.only in (None, name):
                if ORACLE.exists():
                    with_reference(label, d, make(), wavs, real, env, args.batch_seconds, 100)
                else:
                    without_reference(label, d, make(), wavs, args.batch_seconds, 100)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def _trimmed(src: Path, folder: Path, n: int) -> Path:
    import soundfile as sf
    folder.mkdir(exist_ok=True)
    wave, sr = sf.read(src, dtype="float32")
    sf.write(folder / src.name, wave[: len(wave) - n], sr, subtype="FLOAT")
    return folder / src.name


if __name__ == "__main__":
    main()
