#!/usr/bin/env python
"""Response audio -> mHuBERT layer-11 k-means units, added as "units" to each manifest record.

  python tools/extract_units.py --manifest train.jsonl --hubert mhubert_base_vp_en_es_fr_it3.pt \\
      --kmeans mhubert_base_vp_en_es_fr_it3_L11_km1000.bin --out train_units.jsonl

Resumable: finished parts are kept in OUT.parts/ and a rerun of the same command skips them.
Shards: --shard i/n, or automatically RANK/WORLD_SIZE under torchrun / deepspeed (one process
per GPU); each shard writes its own parts and the last one to finish merges them into OUT.
Writes OUT (input records + "units", manifest order), OUT.failed.jsonl (id, index, path, reason
of every record whose audio failed; such records are not in OUT), OUT.summary.json.

Exit status: 0 every record got units; 1 some records failed (listed; the rest is written);
2 bad arguments or unreadable model files.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# torch and the model code are imported inside the functions: --help answers at once.
from omni_ds.units import parts as P  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", help="input manifest (flat or LLaVA form, JSON or JSONL)")
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
                    help="GPU only: bf16/fp16 are used only if the first batches give units "
                         "identical to fp32, otherwise fp32 (default fp32)")
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


def resolve_shard(args) -> tuple[int, int]:
    if args.shard:
        i, n = args.shard.split("/")
        return int(i), int(n)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)


def resolve_device(args) -> str:
    import torch
    if args.device:
        return args.device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def build_extractor(args, centers, device: str, batch_seconds: float):
    dedup = not args.no_dedup
    if args.backend == "fairseq":
        from omni_ds.units.fairseq_backend import FairseqUnitExtractor
        return FairseqUnitExtractor(args.hubert, centers, args.layer, device, dedup)
    from omni_ds.units.extract import FeatureExtractor, UnitExtractor
    from omni_ds.units.hubert import load_hubert
    fx = FeatureExtractor(load_hubert(args.hubert, args.layer), device, batch_seconds)
    ex = UnitExtractor(fx, centers, dedup)
    ex.too_short, ex.sample_rate = fx.too_short, fx.rate
    return ex


def pick_precision(ex, args, waves) -> None:
    """bf16/fp16 only when they give the fp32 units on these check utterances."""
    import torch
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    if want is None or args.backend != "omni_ds":
        return
    if ex.fx.device.type == "cpu":
        print("note: --dtype is GPU-only; using fp32 on CPU", file=sys.stderr)
        return
    ref = ex.units(waves)
    ex.fx.dtype = want
    if ex.units(waves) != ref:
        ex.fx.dtype = torch.float32
        print(f"note: {args.dtype} changed units on the check set; using fp32", file=sys.stderr)


def extract_batch(ex, items, ids, paths) -> tuple[dict, list]:
    """Units for the good items; failures (id, index, path, reason) for the others."""
    done, failed = {}, []
    fail = lambda it, why: failed.append({"id": ids[it.index], "index": it.index,
                                          "path": paths[it.index], "reason": why})
    good = []
    for it in items:
        why = it.error or ex.too_short(len(it.wave))
        fail(it, why) if why else good.append(it)
    try:
        for it, u in zip(good, ex.units([it.wave for it in good])):
            done[it.index] = u
    except Exception:
        for it in good:             # isolate the record that breaks the batch
            try:
                done[it.index] = ex.units([it.wave])[0]
            except Exception as err:
                fail(it, f"extraction failed: {type(err).__name__}: {err}")
    return done, failed


def run(args) -> int:
    import torch
    from omni_ds.units.kmeans import load_centroids, save_centroids
    try:
        centers = load_centroids(args.kmeans)
    except Exception as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.save_centroids:
        save_centroids(centers, args.save_centroids)
        print(f"wrote {centers.shape[0]} centroids to {args.save_centroids}")
        if not args.manifest:
            return 0

    from omni_ds.data.manifest import load_manifest
    from omni_ds.units.loader import AudioItems, audio_seconds, make_loader, plan_batches

    shard, n_shards = resolve_shard(args)
    device = resolve_device(args)
    # CPU threads: torch's default, or OMP_NUM_THREADS (torchrun sets it to 1 per process).
    batch_seconds = args.batch_seconds or (16.0 if device == "cpu" else 200.0)
    out = Path(args.out)
    root = P.parts_dir(out)
    try:
        manifest = load_manifest(args.manifest)
        n = len(manifest)
        # The plan pins what the parts depend on; resuming with other inputs is refused.
        P.check_plan(root, {"manifest": manifest.fingerprint, "records": n,
                            "part_size": args.part_size, "layer": args.layer,
                            "dedup": not args.no_dedup, "backend": args.backend,
                            "hubert_sha256": sha256(args.hubert),
                            "kmeans_sha256": sha256(args.kmeans)})
        ex = build_extractor(args, centers, device, batch_seconds)
    except Exception as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ids, paths = manifest.ids, manifest.column("response_path")
    todo = [j for j in P.shard_parts(n, args.part_size, shard, n_shards) if not P.part_done(root, j)]
    main_rank = shard == 0
    t0, processed_s, shard_failed = time.perf_counter(), 0.0, 0

    if todo:
        seconds = {i: audio_seconds(paths[i]) if paths[i] else 0.0
                   for j in todo for i in P.part_range(j, n, args.part_size)}
        batches, part_of = [], {}
        for j in todo:
            for b in plan_batches(list(P.part_range(j, n, args.part_size)), seconds, batch_seconds):
                batches.append(b)
                part_of.update({i: j for i in b})
        dataset = AudioItems([(i, paths[i]) for i in seconds], ex.sample_rate)
        loader = make_loader(dataset, batches, args.workers)
        from tqdm import tqdm
        bar = tqdm(total=len(seconds), unit="file", disable=args.quiet or not main_rank,
                   desc=f"units shard {shard}/{n_shards}", dynamic_ncols=True)
        pending = {j: len(P.part_range(j, n, args.part_size)) for j in todo}
        results: dict[int, dict] = {j: {"units": {}, "failed": [], "seconds": 0.0} for j in todo}
        checked = False
        for items in loader:
            if not checked:
                pick_precision(ex, args, [it.wave for it in items if it.wave is not None
                                          and not ex.too_short(len(it.wave))][:8])
                checked = True
            done, failed = extract_batch(ex, items, ids, paths)
            for it in items:
                r = results[part_of[it.index]]
                if it.index in done:
                    r["units"][it.index] = done[it.index]
                    r["seconds"] += len(it.wave) / ex.sample_rate
                    processed_s += len(it.wave) / ex.sample_rate
            for f in failed:
                results[part_of[f["index"]]]["failed"].append(f)
            shard_failed += len(failed)
            for it in items:
                j = part_of[it.index]
                pending[j] -= 1
                if pending[j] == 0:
                    r = results.pop(j)
                    rows = []
                    for i in sorted(r["units"]):
                        rec = manifest.raw(i)
                        rec["units"] = r["units"][i]
                        rows.append(rec)
                    P.write_part(root, j, rows, sorted(r["failed"], key=lambda f: f["index"]),
                                 r["seconds"])
            bar.update(len(items))
            el = time.perf_counter() - t0
            bar.set_postfix_str(f"{processed_s / 3600 / max(el, 1e-9):.4f} audio-h/s, "
                                f"{processed_s / 3600:.3f} h, {shard_failed} failed")
        bar.close()

    elapsed = time.perf_counter() - t0
    summary = P.merge(out, n, args.part_size)
    if summary is None:
        left = [j for j in range(P.n_parts(n, args.part_size)) if not P.part_done(root, j)]
        print(f"shard {shard}/{n_shards} done ({processed_s / 3600:.3f} audio h in {elapsed:.1f} s, "
              f"{shard_failed} failed); {len(left)} parts of other shards still missing, "
              f"the last shard to finish merges into {out}")
        return 1 if shard_failed else 0
    print_summary(summary, out, processed_s, elapsed)
    return 1 if summary["failed"] else 0


def print_summary(s: dict, out: Path, processed_s: float, elapsed: float) -> None:
    print(f"units: {s['ok']}/{s['files']} files, {s['audio_hours']:.4f} audio hours, "
          f"{s['units']} units ({s['distinct_units']} distinct, histogram entropy "
          f"{s['unit_entropy_bits']:.3f} bits) -> {out}")
    if processed_s:
        print(f"this run: {processed_s:.1f} audio s in {elapsed:.1f} s = "
              f"{processed_s / max(elapsed, 1e-9):.2f} audio-s/s")
    if s["failed"]:
        print(f"FAILED: {s['failed']} records (not in the output; all listed in "
              f"{out.name}.failed.jsonl):")
        for f in s["failures"][:20]:
            print(f"  id {f['id']} (index {f['index']}): {f['reason']}")
        if s["failed"] > 20:
            print(f"  ... {s['failed'] - 20} more")


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
