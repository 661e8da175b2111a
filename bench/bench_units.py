#!/usr/bin/env python
"""Unit extraction throughput on this machine's CPU, fp32 and bf16 side by side in one run: the
reference pipeline (fairseq's gslm HubertFeatureReader, one utterance at a time, scikit-learn
KMeans.predict; run in the fairseq oracle venv), omni_ds in fp32 and omni_ds in bf16 (batched,
padding-masked, torch argmin), same checkpoint (saved by fairseq), same audio. Two models: the
tiny parity checkpoint and the full-size mHuBERT Base architecture (random weights, 768 wide,
12 layers) on the parity clips (10 real + 6 generated, one of 123 s). Prints audio-seconds per
wall-second, the ratios, and the share of frames whose units equal fp32's / the reference's.

  python bench/bench_units.py [--threads N] [--repeat-audio R] [--batch-seconds S] [--only full]
                              [--rounds 3] [--repeats 2]

Agreement needs a k-means: the reference's (k=100, fitted by fairseq on its own features of the
real clips: random centroids would be far from every frame and flatter than any real k-means),
and k=100 / k=1000 fitted on omni_ds's fp32 features of the files themselves. Random weights are
all there is here (no network for the released checkpoint), so these agreements are of a random
model, whose features are less separated than trained ones.

Every side times reading + decoding + features + units for every file, model loading (and
bf16's one-off weight preparation) excluded; the reference runs one process per group, warmed up
on the group's first file before its clock starts. In fp32 both sides run the same oneDNN/MKL
GEMMs and convolutions; batching saves per-call and per-shape set-up (it matters for the tiny
model, hardly at full size); bf16 runs on AMX (omni_ds/units/cpu_bf16.py). The machine
is shared: the sides alternate on groups of files (--rounds), --repeats times over (on copies a
few samples shorter: new lengths each time, as in a real data set), and each group's fastest
repeat counts, so that other jobs' load hits every side alike; the load average is printed.
Compare ratios within one run. Needs tools/install_fairseq_oracle.sh (or OMNI_DS_FAIRSEQ_PYTHON) for the
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


def ours(ckpt, centers, batch_seconds, dtype):
    """A runner wavs -> (seconds, units, features) doing the reference loop's work: read each
    file, features, nearest centroid; the model (and bf16's prepared weights) built before, as
    the reference's model is loaded before its clock starts."""
    import torch
    from omni_ds.data.audio import load_audio
    from omni_ds.units.extract import FeatureExtractor
    from omni_ds.units.hubert import load_hubert
    from omni_ds.units.kmeans import NearestCentroid
    fx = FeatureExtractor(load_hubert(ckpt), "cpu", batch_seconds,
                          {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    quantizer = NearestCentroid(centers)

    def run(wavs):
        start = time.perf_counter()
        feats = fx.features([load_audio(w) for w in wavs])
        units = [quantizer(f).tolist() for f in feats]
        return time.perf_counter() - start, units, feats
    return run


def reference(env, ckpt, km, out):
    """A runner for the fairseq reference: one oracle process per call, timing its own loop."""
    def run(wavs):
        oracle(env, "units", ckpt, km, 11, out, *wavs)
        ref = json.loads(Path(out).read_text())
        return ref["seconds"], ref["units"], None
    return run


def _groups(wavs, n):
    """n groups of files of about equal audio, longest files first."""
    import soundfile as sf
    groups, sizes = [[] for _ in range(n)], [0] * n
    for w in sorted(wavs, key=lambda w: -sf.info(w).frames):
        i = sizes.index(min(sizes))
        groups[i].append(w)
        sizes[i] += sf.info(w).frames
    return [g for g in groups if g]


def interleaved(sides: dict, wav_sets: list, rounds: int) -> dict:
    """Every group of files through every side in turn, once per set of files, so that the load
    of other jobs hits all sides alike; per group, each side's fastest set counts. The sets are
    the files and copies a few samples shorter: every pass meets new input shapes, as a data set
    of files of distinct lengths does (oneDNN caches its kernels per shape, which would favour
    a side that had seen the lengths before). -> {side: (seconds, units per file, features per
    file or None)}, units and features of the first set, in its order."""
    index = {w: i for i, w in enumerate(wav_sets[0])}
    groups = [[index[w] for w in g] for g in _groups(wav_sets[0], rounds)]
    best = {name: [float("inf")] * len(groups) for name in sides}
    units: dict = {name: {} for name in sides}
    feats: dict = {name: {} for name in sides}
    for r, wavs in enumerate(wav_sets):
        for g, idx in enumerate(groups):
            for name, run in sides.items():
                sec, u, f = run([wavs[i] for i in idx])
                best[name][g] = min(best[name][g], sec)
                if r == 0:
                    units[name].update(zip(idx, u))
                    feats[name].update(zip(idx, f or [None] * len(idx)))
    n = len(wav_sets[0])
    return {name: (sum(best[name]), [units[name][i] for i in range(n)], [feats[name][i] for i in range(n)])
            for name in sides}


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


def compare(label, ckpt, km, wavs, args, ref_side=None):
    """One model, side by side in one run: the reference (when given), omni_ds fp32 and bf16."""
    from omni_ds.data.audio import load_audio
    from omni_ds.units.kmeans import load_centroids
    centers = load_centroids(km)
    audio_s = sum(len(load_audio(w)) for w in wavs) / 16000
    sides = {"ref": ref_side} if ref_side else {}
    sides.update({d: ours(ckpt, centers, args.batch_seconds, d) for d in ("fp32", "bf16")})
    load = os.getloadavg()[0]
    # (files under 1 s are copied whole: a trimmed one-frame file would have no frame left)
    sets = [wavs] + [[_trimmed(w, Path(km).parent / f"set{r}" / str(i), 7 * r if _long(w) else 0)
                      for i, w in enumerate(wavs)] for r in range(1, args.repeats)]
    runs = interleaved(sides, sets, args.rounds)
    frames = sum(len(u) for u in runs["fp32"][1])
    print(f"[{label}] {len(wavs)} files, {audio_s:.1f} audio s, {frames} frames, {args.rounds} groups "
          f"of files x {args.repeats} repeats interleaved; load average {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f}")
    print(f"  {'':44s} {'s':>7s} {'audio-s/s':>10s} {'vs ref':>7s} {'vs fp32':>7s} "
          f"{'= fp32 units':>12s} {'= ref units':>12s}")
    names = {"ref": "reference (fairseq, 1 utt at a time, sklearn)",
             **{d: f"omni_ds {d} (batch {args.batch_seconds:g} s, torch argmin)" for d in ("fp32", "bf16")}}
    ref = runs.get("ref")
    for side, (sec, units, _) in runs.items():
        vs_ref = f"{ref[0] / sec:6.2f}x" if ref else "      -"
        print(f"  {names[side]:44s} {sec:7.2f} {audio_s / sec:10.1f} {vs_ref} "
              f"{runs['fp32'][0] / sec:6.2f}x {_pct(units, runs['fp32'][1]):>12s} "
              f"{_pct(units, ref[1]) if ref else '-':>12s}")
    own = ", ".join(_own_kmeans_agreement(runs["fp32"][2], runs["bf16"][2], k) for k in (100, 1000))
    print(f"  bf16 = fp32 units with a k-means fitted on omni_ds fp32 features of these files: {own}")


def with_reference(label, d, src, wavs, fit_wavs, env, args, k):
    """fairseq saves the checkpoint and fits the k-means on its own features of `fit_wavs`."""
    tag = label.split()[0]
    ckpt, km = d / f"{tag}.fairseq.pt", d / f"{tag}.km.bin"
    spec = {"src": str(src), "ckpt": str(ckpt), "layer": 11, "out": str(d / f"{tag}.fit.json"),
            "wavs": [], "fit": {"wavs": [str(w) for w in fit_wavs], "k": k, "seed": 0, "out": str(km)}}
    (d / "job.json").write_text(json.dumps(spec))
    oracle(env, "job", d / "job.json")
    compare(label, ckpt, km, wavs, args, reference(env, ckpt, km, d / f"{tag}.ref.json"))


def without_reference(label, d, src, wavs, args, k):
    """k-means (k clusters) fitted on omni_ds's own fp32 features of the files."""
    import numpy as np
    from sklearn.cluster import KMeans
    from omni_ds.data.audio import load_audio
    from omni_ds.units.extract import FeatureExtractor
    from omni_ds.units.hubert import load_hubert
    from omni_ds.units.kmeans import save_centroids
    feats = FeatureExtractor(load_hubert(src)).features([load_audio(w) for w in wavs])
    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(np.concatenate([f.numpy() for f in feats]))
    compare(label, src, save_centroids(km.cluster_centers_, d / f"{label.split()[0]}.km.npy"), wavs, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--repeat-audio", type=int, default=3, help="copies of the real clips (tiny model)")
    ap.add_argument("--batch-seconds", type=float, default=16.0)
    ap.add_argument("--only", choices=["tiny", "full"], help="run one of the two models")
    ap.add_argument("--rounds", type=int, default=3, help="groups of files the sides alternate on")
    ap.add_argument("--repeats", type=int, default=2,
                    help="passes over the groups (on copies a few samples shorter); fastest counts")
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
                    with_reference(label, d, make(), wavs, real, env, args, 100)
                else:
                    without_reference(label, d, make(), wavs, args, 100)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def _long(wav: Path) -> bool:
    import soundfile as sf
    return sf.info(wav).frames >= sf.info(wav).samplerate


def _trimmed(src: Path, folder: Path, n: int) -> Path:
    import soundfile as sf
    folder.mkdir(parents=True, exist_ok=True)
    wave, sr = sf.read(src, dtype="float32")
    sf.write(folder / src.name, wave[: len(wave) - n], sr, subtype="FLOAT")
    return folder / src.name


if __name__ == "__main__":
    main()
