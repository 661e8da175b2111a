#!/usr/bin/env python
"""Dialogue data benchmarks (issue 11); prints figures, tests never time anything.

    python bench/bench_dialogues.py [--dialogues 200000]

(a) A manifest in the released InstructS2S-200K form (one JSON array; 1-3 turns per dialogue,
    spoken-style questions, short answers, CosyVoice2 unit strings of ~25 tokens per answer
    word, the 10 real clips as every turn's audio) read through load_manifest: first run (stream
    the array, write the Arrow cache) and cached run (memory-map it), each in a fresh process so
    peak RSS is that phase's own; then the validation index (audio headers + per-turn token
    counts, tiny tokenizer) first and cached.
(b) Padding efficiency (real / padded LLM positions) of length-grouped batches of 8 on a
    realistic multi-turn length mix (trimmed speech per turn + prompt + answer tokens).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLIPS = sorted((REPO.parent / "shared/data/spoken_instructions").glob("*.wav"))
WORDS = "the of and to a in is it you that he was for on are with as I his they be at one have this".split()


def write_manifest(path: Path, n: int) -> None:
    """Streamed out, so writing 200 K dialogues does not hold them all either."""
    rng = random.Random(0)
    with open(path, "w") as f:
        f.write("[\n")
        for i in range(n):
            conv = []
            for k in range(1, rng.choice((1, 1, 2, 3)) + 1):
                answer = " ".join(rng.choice(WORDS) for _ in range(max(3, int(rng.lognormvariate(3.5, 0.5)))))
                unit = "".join(f"<{rng.randrange(6561)}>" for _ in range(len(answer.split()) * 25 // 10))
                conv += [{"from": "human", "text": "um, so " + " ".join(rng.choice(WORDS) for _ in range(12)),
                          "speech": str(rng.choice(CLIPS)), "unit": None},
                         {"from": "gpt", "text": answer, "speech": f"wav/{i}-{k}-assistant.wav", "unit": unit}]
            f.write(("," if i else "") + json.dumps({"id": f"instruct_en_{i}", "conversation": conv}) + "\n")
        f.write("]\n")


def phase(name: str, manifest: str, tok: str) -> None:
    """One timed phase in this (fresh) process; prints seconds and peak RSS as JSON."""
    from omni_ds.data.manifest import load_manifest
    t0 = time.perf_counter()
    m = load_manifest(manifest)
    out = {"load_s": time.perf_counter() - t0, "records": len(m)}
    if name == "validate":
        from transformers import AutoTokenizer
        from omni_ds.data.prompt import PromptBuilder
        from omni_ds.data.validate import ValidationConfig, validate_manifest
        t1 = time.perf_counter()
        rep = validate_manifest(m, ValidationConfig(full_decode=False, mel_mode="trimmed"),
                                PromptBuilder(AutoTokenizer.from_pretrained(tok)))
        out.update(validate_s=time.perf_counter() - t1, cached=rep.from_cache, summary=rep.summary(),
                   turns=int(rep.n_turns.sum()), lengths=rep.lengths.tolist())
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps(out))


def run_phase(name: str, manifest: Path, tok: Path) -> dict:
    r = subprocess.run([sys.executable, __file__, "--phase", name, str(manifest), str(tok)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def padding(lengths: np.ndarray) -> None:
    from omni_ds.data.sampler import Batching, DistributedBatchSampler, padding_efficiency
    for mode in ("random", "length_grouped"):
        s = DistributedBatchSampler(lengths, 8, batching=Batching(mode))
        print(f"    {mode:14s} batch 8: {padding_efficiency(s.epoch_batches(0), lengths):.3f}"
              + ("   (target >= 0.95)" if mode == "length_grouped" else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dialogues", type=int, default=200_000)
    p.add_argument("--phase", nargs=3, metavar=("NAME", "MANIFEST", "TOKENIZER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        phase(*args.phase)
        return 0
    from omni_ds.tiny.tokenizer import write_tiny_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest, tok = tmp / "instruct_en_200k_data_cosy2.json", write_tiny_tokenizer(tmp / "tok")
        t0 = time.perf_counter()
        write_manifest(manifest, args.dialogues)
        print(f"(a) {args.dialogues} dialogues in the released form: {manifest.stat().st_size / 1e9:.2f} GB of JSON "
              f"(written in {time.perf_counter() - t0:.0f} s)")
        for label, name in (("first run ", "load"), ("cached run", "load")):
            r = run_phase(name, manifest, tok)
            print(f"    load, {label}: {r['load_s']:6.2f} s, peak RSS {r['peak_rss_gib']:.2f} GiB "
                  "(targets: < 60 s first, < 2 s cached, < 2 GiB)")
        for label in ("first run ", "cached run"):
            r = run_phase("validate", manifest, tok)
            print(f"    validation index, {label}: {r['validate_s']:6.2f} s (audio headers + tokens per turn), "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB; {r['turns']} turns")
        print(f"    {r['summary']}")
        print("(b) padding efficiency on these dialogues (per-dialogue LLM positions, all turns)")
        padding(np.asarray(r["lengths"], np.int64))
    return 0


if __name__ == "__main__":
    sys.exit(main())
