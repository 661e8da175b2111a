#!/usr/bin/env python
"""Data-pipeline benchmarks; prints figures (tests never time anything).

    python bench/bench_data.py [--records 200000] [--skip-manifest]

(a) log-mel throughput on one core (torch.set_num_threads(1)), padded mode, on the real clips
    (already decoded and resampled to 16 kHz): omni_ds vs transformers' WhisperFeatureExtractor,
    interleaved in one run, and the ratio; also decode + resample + mel from the WAV files, and
    30 s clips, where log_mel's skipping of all-zero padding frames cannot help.
(b) padding efficiency (real / padded LLM positions) on 200 K synthetic samples with
    InstructS2S-200K statistics: instruction 7.5 s mean (log-normal, long tail, <= 30 s) -> trimmed
    speech positions (REFERENCE.md: ceil(frames / 2) // 5), ~60 prompt tokens, response 39.5
    words mean (log-normal) at ~1.3 tokens/word + <|eot_id|>; batch 8: random vs length-grouped
    (and token budget), trimmed and padded mode.
(c) manifest load + validation index for 200 K synthetic records (the 10 real clips reused),
    first run (header probe + tokenising, building the caches) and cached run (no audio touched).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni_ds.data.audio import load_audio, log_mel, speech_positions  # noqa: E402
from omni_ds.data.sampler import Batching, DistributedBatchSampler, padding_efficiency  # noqa: E402

CLIPS = sorted((Path(__file__).resolve().parents[2] / "shared/data/spoken_instructions").glob("*.wav"))


def _rate(fn, items, min_seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        for x in items:
            fn(x)
        n += len(items)
        if time.perf_counter() - t0 >= min_seconds:
            return n / (time.perf_counter() - t0)


def bench_features(seconds: float) -> None:
    from transformers import WhisperFeatureExtractor
    torch.set_num_threads(1)
    fe = WhisperFeatureExtractor(feature_size=128)
    waves = [load_audio(p) for p in CLIPS]
    ours = lambda w: log_mel(w, mode="padded")                                    # noqa: E731
    theirs = lambda w: fe(w, sampling_rate=16000, return_tensors="pt").input_features  # noqa: E731
    ours(waves[0]), theirs(waves[0])                                              # warm-up
    r_ours, r_theirs = [], []
    for _ in range(3):                                # interleaved rounds: same machine load
        r_ours.append(_rate(ours, waves, seconds))
        r_theirs.append(_rate(theirs, waves, seconds))
    e2e = _rate(lambda p: log_mel(load_audio(p)), CLIPS, seconds)
    # Worst case for the zero-frame shortcut: clips that fill the whole 30 s window.
    full = [np.resize(w, 480000) for w in waves[:3]]
    worst_ours, worst_theirs = _rate(ours, full, seconds), _rate(theirs, full, seconds)
    a, b = max(r_ours), max(r_theirs)
    print("(a) log-mel, 1 thread, padded (3000 frames), 10 real clips resampled to 16 kHz")
    print(f"    omni_ds log_mel            {a:8.1f} samples/s   (best of 3 rounds)")
    print(f"    WhisperFeatureExtractor    {b:8.1f} samples/s")
    print(f"    ratio omni_ds / HF         {a / b:8.2f}x")
    print(f"    omni_ds decode+resample+mel from 22.05 kHz WAV {e2e:8.1f} samples/s")
    print(f"    30 s clips (no zero frames to skip): omni_ds {worst_ours:.1f}, HF {worst_theirs:.1f} samples/s")


def synthetic_lengths(n: int, seed: int = 0, mode: str = "trimmed") -> np.ndarray:
    rng = np.random.default_rng(seed)
    sigma_d, sigma_w = 0.5, 0.6
    seconds = np.clip(rng.lognormal(np.log(7.5) - sigma_d ** 2 / 2, sigma_d, n), 0.5, 30.0)
    words = np.maximum(1, np.round(rng.lognormal(np.log(39.5) - sigma_w ** 2 / 2, sigma_w, n)))
    frames = np.minimum(np.ceil(seconds * 16000 / 160), 3000).astype(np.int64)
    speech = ((frames + 1) // 2) // 5 if mode == "trimmed" else np.full(n, speech_positions(3000))
    response = np.round(words * 1.3).astype(np.int64) + 1
    return speech + 60 + response, seconds, words


def bench_padding(n: int) -> None:
    print(f"(b) padding efficiency, {n} synthetic samples, batch 8 (real / padded positions)")
    for mode in ("trimmed", "padded"):
        lengths, seconds, words = synthetic_lengths(n, mode=mode)
        if mode == "trimmed":
            print(f"    synthetic: instruction {seconds.mean():.2f} s mean (p99 {np.percentile(seconds, 99):.1f} s), "
                  f"response {words.mean():.1f} words mean (p99 {np.percentile(words, 99):.0f})")
        rand = padding_efficiency(DistributedBatchSampler(lengths, 8, batching=Batching("random")).epoch_batches(0), lengths)
        grouped = padding_efficiency(DistributedBatchSampler(lengths, 8, batching=Batching("length_grouped")).epoch_batches(0),
                                     lengths)
        budget_s = DistributedBatchSampler(lengths, 8, batching=Batching("token_budget",
                                                                         max_tokens=8 * int(lengths.mean())))
        plan = budget_s.epoch_batches(0)
        budget = padding_efficiency(plan, lengths)
        # LLaVA's own megabatch (world x batch x GA, no multiplier), e.g. 4 ranks x GA 4 = 128
        llava = padding_efficiency(DistributedBatchSampler(lengths, 8, world_size=4, batching=Batching(
            "length_grouped", grad_accum=4, megabatch_mult=1)).epoch_batches(0), lengths)
        print(f"    {mode:7s} mode, LLaVA-size megabatch (4 ranks x 8 x GA 4 = 128): {llava:.3f}")
        print(f"    {mode:7s} mode, mean {lengths.mean():6.1f} positions: random {rand:.3f}   "
              f"length-grouped {grouped:.3f}   token-budget({8 * int(lengths.mean())}) {budget:.3f} "
              f"(mean batch {np.mean([len(b) for b in plan]):.1f})")


def bench_manifest(n: int) -> None:
    from transformers import AutoTokenizer

    from omni_ds.data.manifest import load_manifest
    from omni_ds.data.prompt import PromptBuilder
    from omni_ds.data.validate import ValidationConfig, validate_manifest
    from omni_ds.tiny.tokenizer import write_tiny_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp / "tok")))
        rng = np.random.default_rng(0)
        words = "the of and to a in is it you that he was for on are with as I his they be at".split()
        with open(tmp / "train.jsonl", "w") as f:
            for i in range(n):
                resp = " ".join(rng.choice(words, size=int(rng.integers(5, 80))))
                f.write(json.dumps({"id": f"s{i}", "speech_instruction_path": str(CLIPS[i % len(CLIPS)]),
                                    "text_instruction": "a question", "text_response": resp,
                                    "speech_response_path": f"responses/{i}.wav"}) + "\n")
        cfg = ValidationConfig(full_decode=False, mel_mode="trimmed")

        def run():
            t0 = time.perf_counter()
            m = load_manifest(tmp / "train.jsonl")
            t1 = time.perf_counter()
            rep = validate_manifest(m, cfg, PromptBuilder(tok))
            t2 = time.perf_counter()
            return t1 - t0, t2 - t1, rep
        a1, b1, rep = run()
        a2, b2, rep2 = run()
        assert rep2.from_cache == {"audio": True, "tokens": True} and len(rep2.good) == n
        print(f"(c) manifest of {n} synthetic records (the 10 real clips reused), tiny tokenizer")
        print(f"    first run : load {a1:6.2f} s + validation index {b1:6.2f} s (header probe, tokenising)")
        print(f"    cached run: load {a2:6.2f} s + validation index {b2:6.2f} s = {a2 + b2:.2f} s "
              f"(target < 30 s); {rep2.summary()}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--seconds", type=float, default=2.0, help="per timing round in (a)")
    p.add_argument("--skip-manifest", action="store_true")
    args = p.parse_args(argv)
    bench_features(args.seconds)
    bench_padding(args.records)
    if not args.skip_manifest:
        bench_manifest(args.records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
