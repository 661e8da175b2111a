#!/usr/bin/env python
"""Validate a speech-instruction manifest: every record checked, each bad one printed.

    python tools/validate_data.py MANIFEST [--stage 1|2] [--tokenizer DIR] [--max-seconds S]

Exit status: 0 when every record is good, 1 when some are bad (each printed as "BAD id: reason"),
2 when the manifest itself cannot be read. The durations / token lengths found are cached beside
the manifest (.omni_ds_cache/), so a second run, and training, need not decode the audio again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, not installed

from omni_ds.data.manifest import ManifestError, load_manifest  # noqa: E402
from omni_ds.data.validate import ValidationConfig, validate_manifest  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", help="JSON list or JSONL manifest (flat, LLaVA-style or InstructS2S-200K "
                                    "as released; single- or multi-turn)")
    p.add_argument("--audio-root", help="where relative audio paths resolve (default: the manifest's folder)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=1, help="2: units are required")
    p.add_argument("--unit-source", choices=("km1000", "dataset"), default="km1000",
                   help="stage 2 targets: km1000 `units`, or the records' own unit strings")
    p.add_argument("--unit-vocab-size", type=int, default=1000, help="units must lie below this")
    p.add_argument("--tokenizer", help="LLM tokenizer folder: also check prompt + response fit "
                                       "model_max_length (and, in stage 2, CTC feasibility)")
    p.add_argument("--ctc-upsample-factor", type=int, default=25,
                   help="the model's ctc_upsample_factor (stage 2 with --tokenizer: answers whose units "
                        "CTC cannot align to factor x response states are bad)")
    p.add_argument("--template", choices=("llama3", "tokenizer"), default="llama3")
    p.add_argument("--model-max-length", type=int, help="default: the tokenizer's model_max_length")
    p.add_argument("--mel-mode", choices=("padded", "trimmed"), default="padded",
                   help="how many LLM positions the speech takes (padded: 300)")
    p.add_argument("--max-seconds", type=float, help="instruction clips longer than this are bad "
                                                     "(default: no limit; clips over 30 s are truncated)")
    p.add_argument("--min-seconds", type=float, default=0.1)
    p.add_argument("--header-only", action="store_true", help="read audio headers, do not decode")
    p.add_argument("--check-response-audio", action="store_true",
                   help="also probe speech_response_path (needed before unit extraction)")
    p.add_argument("--workers", type=int, default=0, help="processes for decoding audio")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = ValidationConfig(stage=args.stage, mel_mode=args.mel_mode, max_seconds=args.max_seconds,
                           min_seconds=args.min_seconds, full_decode=not args.header_only,
                           check_response_audio=args.check_response_audio, num_workers=args.workers,
                           unit_source=args.unit_source, unit_vocab_size=args.unit_vocab_size,
                           ctc_upsample_factor=args.ctc_upsample_factor)
    try:
        manifest = load_manifest(args.manifest, args.audio_root)
    except (ManifestError, FileNotFoundError) as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 2
    builder = None
    if args.tokenizer:
        from omni_ds.data.prompt import PromptBuilder
        from omni_ds.model.checkpoint import load_tokenizer
        builder = PromptBuilder(load_tokenizer(args.tokenizer), template=args.template,
                                model_max_length=args.model_max_length)
    report = validate_manifest(manifest, cfg, builder)
    for b in report.bad:
        print(f"BAD {b.id}: {b.reason}")
    print(f"{args.manifest}: {report.summary()}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
