#!/usr/bin/env python
"""Response audio -> mHuBERT layer-11 k-means units, added as "units" to every answer of the manifest:
on the record for a single-turn record, on each gpt turn object of a dialogue (released
InstructS2S "conversation" or multi-turn LLaVA "conversations"; the "unit" strings stay as read).

  python tools/extract_units.py --manifest train.jsonl --hubert mhubert_base_vp_en_es_fr_it3.pt \\
      --kmeans mhubert_base_vp_en_es_fr_it3_L11_km1000.bin --out train_units.jsonl

Resumable: finished parts are kept in OUT.parts/ and a rerun of the same command skips them.
Shards: --shard i/n, or automatically RANK/WORLD_SIZE under torchrun / deepspeed (one process
per GPU); each shard writes its own parts and the last one to finish merges them into OUT.
Writes OUT (input records + "units", manifest order), OUT.failed.jsonl (id, index, turn for a
dialogue, path, reason of every turn whose audio failed, and of every record with a structure
problem; a record with any failed turn is not in OUT), OUT.summary.json.

Exit status: 0 every record got units; 1 some records failed (listed; the rest is written);
2 bad arguments or unreadable model files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# torch and the model code are imported inside the functions: --help answers at once.

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", help="input manifest (flat, LLaVA or released InstructS2S form, JSON or JSONL)")
    ap.add_argument("--hubert", help="fairseq mHuBERT checkpoint (.pt)")
    ap.add_argument("--kmeans", required=True,
                    help="k-means: joblib scikit-learn .bin (needs the 'units' extra) or .npy centroids")
    ap.add_argument("--out", help="output JSONL manifest")
    ap.add_argument("--layer", type=int, default=11, help="transformer layer, 1-based (default 11)")
    ap.add_argument("--no-dedup", action="store_true", help="keep repeated consecutive units")
    ap.add_argument("--shard", help="i/n: process parts j with j %% n == i (default: RANK/WORLD_SIZE)")
    ap.add_argument("--batch-seconds", type=float, default=None,
                    help="audio per forward pass, padding included (default 16 on CPU, 200 on GPU)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda:LOCAL_RANK if available)")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="bf16 (GPU, or a CPU with AMX/AVX512-BF16) or fp16 (GPU): used only if "
                         ">= 99.5 %% of the first batch's frames get the fp32 units (the agreement "
                         "is printed), otherwise fp32 (default fp32)")
    ap.add_argument("--workers", type=int, default=1, help="audio loader processes (default 1)")
    ap.add_argument("--part-size", type=int, default=256, help="records per resumable part")
    ap.add_argument("--save-centroids", metavar="NPY",
                    help="also write the k-means centroids as .npy (no pickle/scikit-learn later)")
    ap.add_argument("--backend", choices=["omni_ds", "fairseq"], default="omni_ds",
                    help="omni_ds (batched, no fairseq) or fairseq (the reference code path)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if not args.save_centroids or args.manifest or args.out:
        missing = [f"--{k}" for k in ("manifest", "hubert", "out") if not getattr(args, k)]
        if missing:
            ap.error(f"missing {', '.join(missing)}")
    if args.shard:
        try:
            i, n = (int(v) for v in args.shard.split("/"))
            assert 0 <= i < n
        except Exception:
            ap.error(f"--shard must be i/n with 0 <= i < n, got {args.shard!r}")
    return args


def job_from_args(args):
    from omni_ds.units.job import ExtractionJob
    shard = tuple(int(v) for v in args.shard.split("/")) if args.shard else None
    return ExtractionJob(manifest=args.manifest, hubert=args.hubert, kmeans=args.kmeans, out=args.out,
                         layer=args.layer, dedup=not args.no_dedup, shard=shard, batch_seconds=args.batch_seconds,
                         device=args.device, dtype=args.dtype, workers=args.workers, part_size=args.part_size,
                         backend=args.backend, quiet=args.quiet)


def save_centroids_only(args) -> int:
    """--save-centroids: the k-means as a pickle-free .npy."""
    from omni_ds.units.kmeans import load_centroids, save_centroids
    try:
        centers = load_centroids(args.kmeans)
    except Exception as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_centroids(centers, args.save_centroids)
    print(f"wrote {centers.shape[0]} centroids to {args.save_centroids}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.save_centroids:
        rc = save_centroids_only(args)
        if rc or not args.manifest:
            return rc
    from omni_ds.units.job import run_job
    return run_job(job_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
