#!/usr/bin/env python
"""The paper's measurable metrics of a model folder on a manifest, in one command.

  python tools/evaluate.py --model DIR --manifest M --out OUT [--vocoder DIR] [--asr WHISPER_DIR]
         [--omega 10] [--max-new-tokens N] [--limit K] [--batch-size B] [--judge-model DIR]

Writes OUT/report.json (per-sample rows + summary), OUT/report.md, OUT/latency.png,
OUT/wer_vs_length.png and, with --vocoder, OUT/audio/<id>.wav. Answers are tools/infer.py's
(same prompt, greedy, same stopping rule), generated --batch-size at a time. Field meanings and
the text normalisation: README, section "Evaluation". Exit 0 done (failed samples are rows of the
report, counted in its summary); exit 2 an input that cannot be used, named in one line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni_ds.constants import DEFAULT_INSTRUCTION, SYSTEM_PROMPT  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="LLaMA-Omni-layout folder (stage 1 or stage 2 output)")
    p.add_argument("--manifest", required=True, help="flat / LLaVA / JSON list manifest, as for training")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--vocoder", help="unit HiFi-GAN folder: spoken answers, first-audio latency")
    p.add_argument("--asr", metavar="WHISPER_DIR", help="HF Whisper folder: ASR-WER and the calibration row")
    p.add_argument("--judge-model", help="local causal-LM folder rating each answer 1-5")
    p.add_argument("--omega", type=int, default=10, help="units per streamed chunk (default 10, as the paper)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--limit", type=int, help="only the first K records")
    p.add_argument("--batch-size", type=int, default=8, help="instructions generated together")
    p.add_argument("--no-latency", action="store_true", help="skip the one-at-a-time streaming latency pass")
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="text after <speech> in the user turn")
    p.add_argument("--system-prompt", default=SYSTEM_PROMPT)
    p.add_argument("--template", default="llama3", choices=["llama3", "tokenizer"])
    p.add_argument("--double-bos", action="store_true", help="as tools/infer.py --double-bos")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is fastest "
                   "for tiny models on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from omni_ds.evaluation import EvalConfig, EvaluationInputError, evaluate
    from omni_ds.inference import PromptOptions
    cfg = EvalConfig(model=args.model, manifest=args.manifest, out=args.out, vocoder=args.vocoder,
                     asr=args.asr, judge_model=args.judge_model, omega=args.omega,
                     max_new_tokens=args.max_new_tokens, limit=args.limit, batch_size=args.batch_size,
                     prompt=PromptOptions(args.instruction, args.system_prompt, args.template, args.double_bos),
                     device=args.device, measure_latency=not args.no_latency, progress=not args.quiet)
    try:
        report = evaluate(cfg)
    except EvaluationInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = report["summary"]
    print(json.dumps({k: s[k] for k in ("samples", "evaluated", "failed", "text_wer", "asr_wer", "calibration")}))
    print(f"report: {Path(args.out) / 'report.json'}, {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
