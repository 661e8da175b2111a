#!/usr/bin/env python
"""Unit extraction throughput on this machine's CPU: the reference pipeline (fairseq's gslm
HubertFeatureReader, one utterance at a time, scikit-learn KMeans.predict; run in the fairseq
oracle venv) against omni_ds's (batched, padding-masked, torch argmin), same checkpoint (saved by
fairseq), same audio, one run each; then the real-time factor of the full-size mHuBERT Base
architecture (random weights, 768 wide, 12 layers). Prints audio-seconds per wall-second.

  python bench/bench_units.py [--threads N] [--repeat-audio R] [--batch-seconds S]

Both sides time reading + resampling-free decoding + features + units for every file, model
loading excluded. On CPU in fp32 both sides do the same FLOPs with the same oneDNN/MKL kernels
(GEMMs and convolutions are >85 % of the time), so expect a ratio near 1: batching removes
per-call overhead, which matters on a GPU, not here. The machine is shared: the load average is
printed, and figures move by +-20 % between runs. Needs tools/install_fairseq_oracle.sh (or OMNI_DS_FAIRSEQ_PYTHON) for the
reference figures; without it only omni_ds's figures are printed.
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


def ours(ckpt, km, wavs, batch_seconds):
    """Same work as the reference loop: read each file, features, nearest centroid."""
    from omni_ds.data.audio import load_audio
    from omni_ds.units.extract import FeatureExtractor, UnitExtractor
    from omni_ds.units.hubert import load_hubert
    from omni_ds.units.kmeans import load_centroids
    ex = UnitExtractor(FeatureExtractor(load_hubert(ckpt), "cpu", batch_seconds),
                       load_centroids(km), dedup=False)
    start = time.perf_counter()
    waves = [load_audio(w) for w in wavs]
    units = ex.frame_units(waves)
    return time.perf_counter() - start, [u.tolist() for u in units]


def compare(label, d, src, wavs, fit_wavs, audio_s, env, batch_seconds, k):
    ckpt, km = d / f"{label}.fairseq.pt", d / f"{label}.km.bin"
    spec = {"src": str(src), "ckpt": str(ckpt), "layer": 11, "out": str(d / f"{label}.ref.json"),
            "wavs": [str(w) for w in wavs],
            "fit": {"wavs": [str(w) for w in fit_wavs], "k": k, "seed": 0, "out": str(km)}}
    (d / f"{label}.job.json").write_text(json.dumps(spec))
    oracle(env, "job", d / f"{label}.job.json")
    ref = json.loads((d / f"{label}.ref.json").read_text())
    t_ours, units = ours(ckpt, km, wavs, batch_seconds)
    frames = sum(len(u) for u in ref["units"])
    same = sum(a == b for r, o in zip(ref["units"], units) for a, b in zip(r, o))
    r_ref, r_ours = audio_s / ref["seconds"], audio_s / t_ours
    print(f"[{label}] {len(wavs)} files, {audio_s:.1f} audio s, {frames} frames")
    print(f"  reference (fairseq, 1 utt at a time, sklearn predict): {ref['seconds']:.2f} s = "
          f"{r_ref:.1f} audio-s/s (RTF {1 / r_ref:.4f})")
    print(f"  omni_ds (batch {batch_seconds:g} s, torch argmin):          {t_ours:.2f} s = "
          f"{r_ours:.1f} audio-s/s (RTF {1 / r_ours:.4f})")
    print(f"  ratio omni_ds / reference: {r_ours / r_ref:.2f}x; units equal on "
          f"{100 * same / frames:.3f} % of frames")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--repeat-audio", type=int, default=3, help="copies of the real clips")
    ap.add_argument("--batch-seconds", type=float, default=16.0)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    from units_fixtures import write_clips
    from omni_ds.data.audio import load_audio
    from omni_ds.tiny.hubert import write_tiny_hubert
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(f"CPU threads {args.threads}, os.cpu_count() {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.2f} (other jobs share this machine)")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        real = write_clips(d / "wav", with_generated=False)
        # Copies trimmed by a few samples: every file has its own length, as in a real data set.
        wavs = real + [_trimmed(w, d / f"copy{r}", 37 * r) for r in range(1, args.repeat_audio)
                       for w in real]
        audio_s = sum(len(load_audio(w)) for w in wavs) / 16000
        real_s = sum(len(load_audio(w)) for w in real) / 16000
        full = write_tiny_hubert(d / "full.pt", seed=0, conv_dim=512, width=768, heads=12,
                                 ffn=3072, layers=12)
        if ORACLE.exists():
            compare("tiny (parity checkpoint: 64-ch convs, 96 wide, 12 layers)", d,
                    write_tiny_hubert(d / "tiny.pt", seed=7), wavs, real, audio_s, env,
                    args.batch_seconds, 100)
            compare("full-size mHuBERT Base (512-ch convs, 768 wide, 12 layers)", d, full,
                    real, real, real_s, env, args.batch_seconds, 100)
        else:
            print(f"no fairseq oracle at {ORACLE} (tools/install_fairseq_oracle.sh): "
                  "reference figures skipped")
            import numpy as np
            from omni_ds.units.kmeans import save_centroids
            km = save_centroids(np.random.default_rng(0).standard_normal((1000, 768)), d / "km.npy")
            t, _ = ours(full, km, real, args.batch_seconds)
            print(f"[full-size mHuBERT Base] omni_ds: {real_s / t:.1f} audio-s/s (RTF {t / real_s:.4f})")


def _trimmed(src: Path, folder: Path, n: int) -> Path:
    import soundfile as sf
    folder.mkdir(exist_ok=True)
    wave, sr = sf.read(src, dtype="float32")
    sf.write(folder / src.name, wave[: len(wave) - n], sr, subtype="FLOAT")
    return folder / src.name


if __name__ == "__main__":
    main()
