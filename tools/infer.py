#!/usr/bin/env python
"""Greedy answer to one spoken instruction with a LLaMA-Omni-layout model folder.

  python tools/infer.py --model DIR --wav FILE [--max-new-tokens N] [--json]
  python tools/infer.py --model DIR --wav FILE --stream 10      # unit chunks of >= 10 units
  python tools/infer.py --model DIR --wav FILE --vocoder VOCODER_DIR --wav-out answer.wav

--json prints one object {"text", "token_ids" (generated ids only), "units"}.
Runs in fp32 on CPU by default; a released folder runs in padded mode (30 s), as it was trained.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from omni_ds.constants import DEFAULT_INSTRUCTION, SYSTEM_PROMPT  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="LLaMA-Omni-layout folder (omni_ds output or released)")
    p.add_argument("--wav", required=True, help="the spoken instruction (any sample rate, mono or not)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="text after <speech> in the user turn")
    p.add_argument("--system-prompt", default=SYSTEM_PROMPT)
    p.add_argument("--template", default="llama3", choices=["llama3", "tokenizer"])
    p.add_argument("--double-bos", action="store_true",
                   help="prepend a second <|begin_of_text|> as the official inference code can")
    p.add_argument("--stream", type=int, metavar="OMEGA", default=None,
                   help="emit units in chunks of at least OMEGA units while the text is generated")
    p.add_argument("--units-out", help="write the units as one line for fairseq's unit vocoder")
    p.add_argument("--vocoder", help="unit HiFi-GAN folder (g_* checkpoint + config.json, fairseq's "
                   "mHuBERT km1000 vocoder): synthesize the units to --wav-out")
    p.add_argument("--wav-out", default="answer.wav", help="where --vocoder writes the 16 kHz answer")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args(argv)

    from omni_ds.inference import PromptOptions, answer, write_units_file
    from omni_ds.model.checkpoint import load_omni_folder

    if not Path(args.wav).exists():
        p.error(f"--wav {args.wav}: no such file")
    from omni_ds.inference import instruction_audio_problem
    problem = instruction_audio_problem(args.wav)
    if problem:
        print(f"error: --wav {problem}", file=sys.stderr)
        return 2
    _say_if_cut(args.wav, args.json)
    model, tokenizer = load_omni_folder(args.model, dtype=getattr(torch, args.dtype))
    model.to(args.device)
    prompt = PromptOptions(args.instruction, args.system_prompt, args.template, args.double_bos)
    result = answer(model, tokenizer, args.wav, args.max_new_tokens, prompt, args.stream,
                    on_chunk=None if args.json else (lambda c: print(f"[units chunk] {c}", flush=True)))
    if args.units_out and result["units"] is not None:
        write_units_file(result["units"], args.units_out)
    if args.vocoder and result["units"]:
        import soundfile as sf
        from omni_ds.vocoder import load_vocoder
        vocoder = load_vocoder(args.vocoder)
        sf.write(args.wav_out, vocoder(result["units"]).numpy(), vocoder.sampling_rate)
        if not args.json:
            print(f"wav:       {args.wav_out}")
    if args.json:
        print(json.dumps({k: result[k] for k in ("text", "token_ids", "units")}
                         | ({"unit_chunks": result["unit_chunks"]} if "unit_chunks" in result else {})))
    else:
        print(f"text:      {result['text']}")
        print(f"token_ids: {result['token_ids']}")
        print(f"units:     {result['units']}")
    return 0


def _say_if_cut(wav: str, quiet: bool) -> None:
    """The encoder hears at most 30 s (as the official code): say so when the clip is longer."""
    import soundfile as sf
    from omni_ds.constants import N_SAMPLES, SAMPLE_RATE
    seconds = sf.info(wav).duration
    if seconds > N_SAMPLES / SAMPLE_RATE:
        print(f"note: {wav} is {seconds:.1f} s; the speech encoder hears its first "
              f"{N_SAMPLES / SAMPLE_RATE:.0f} s", file=sys.stderr if quiet else sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
