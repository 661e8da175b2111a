#!/usr/bin/env python
"""Trimmed vs padded speech encoder on the 10 real clips (a Whisper-base-sized encoder).

Prints per-clip encoder time and speech positions (LLM positions after the k=5 projector) for both
modes, measured side by side in one run, and their ratios. Random weights: the cost depends on
shapes only. Usage: python bench/bench_encoder.py [--clips DIR] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import WhisperConfig  # noqa: E402

from omni_ds.data.audio import load_audio, log_mel  # noqa: E402
from omni_ds.model.projector import SpeechProjector  # noqa: E402
from omni_ds.model.speech_encoder import WhisperSpeechEncoder  # noqa: E402

DEFAULT_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "spoken_instructions"


def whisper_base_encoder_config() -> WhisperConfig:
    # Whisper-base encoder dimensions (512 wide, 6 layers, 8 heads) with large-v3's 128 mel bins.
    return WhisperConfig(num_mel_bins=128, d_model=512, encoder_layers=6, encoder_attention_heads=8,
                         encoder_ffn_dim=2048, max_source_positions=1500, decoder_layers=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = whisper_base_encoder_config()
    encoders = {m: WhisperSpeechEncoder(cfg, m) for m in ("padded", "trimmed")}
    encoders["trimmed"].load_state_dict(encoders["padded"].state_dict())
    projector = SpeechProjector(cfg.d_model, 2048)
    clips = sorted(args.clips.glob("*.wav"))
    waves = [load_audio(c) for c in clips]
    times = {m: 0.0 for m in encoders}
    positions = {m: 0 for m in encoders}
    print(f"{'clip':<22}{'seconds':>8}{'padded ms':>11}{'trimmed ms':>12}{'padded pos':>12}{'trimmed pos':>13}")
    for clip, wave in zip(clips, waves):
        row = {}
        for mode, enc in encoders.items():
            mel, frames = log_mel(wave, mode=mode)
            mel, frames = mel[None], torch.tensor([frames])
            with torch.inference_mode():
                enc(mel, frames)                                   # warm-up
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    states, lengths = enc(mel, frames)
                dt = (time.perf_counter() - t0) / args.repeats
                _, n = projector(states, lengths)
            times[mode] += dt
            positions[mode] += int(n)
            row[mode] = (dt, int(n))
        print(f"{clip.name:<22}{len(wave) / 16000:>8.2f}{row['padded'][0] * 1e3:>11.1f}"
              f"{row['trimmed'][0] * 1e3:>12.1f}{row['padded'][1]:>12}{row['trimmed'][1]:>13}")
    n = len(clips)
    print(f"\nper clip: padded {times['padded'] / n * 1e3:.1f} ms, {positions['padded'] / n:.0f} positions; "
          f"trimmed {times['trimmed'] / n * 1e3:.1f} ms, {positions['trimmed'] / n:.1f} positions")
    print(f"encoder time ratio trimmed/padded:     {times['trimmed'] / times['padded']:.3f}  (target <= 0.30)")
    print(f"speech positions ratio trimmed/padded: {positions['trimmed'] / positions['padded']:.3f}  (target <= 0.15)")


if __name__ == "__main__":
    main()
