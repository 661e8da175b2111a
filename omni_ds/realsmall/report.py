"""Validation loss and greedy spoken-question answers of a model, before or after stage 1.

    python -m omni_ds.realsmall.report --config DIR/stage1.json --model init      # before training
    python -m omni_ds.realsmall.report --config DIR/stage1.json --model DIR/out/final

"init" builds the model from the config's parts exactly as stage 1 starts (seeded with the
config's seed, so the projector is initialised as the run's). The loss is the stage-1 loss:
summed cross-entropy of the supervised answer tokens (+ end of turn) over the whole validation
manifest, divided by their number. Answers are greedy, with the prompt built by the same
PromptBuilder as training (the LLM tokenizer's chat template) and the encoder's own mel bin count.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def load_model(cfg, model_arg: str):
    from omni_ds.model.checkpoint import build_from_parts, load_omni_folder
    from omni_ds.model.omni_config import OmniConfig
    if model_arg == "init":
        torch.manual_seed(cfg.seed)
        model, tok = build_from_parts(cfg.model.whisper_path, cfg.model.llm_path, OmniConfig(**cfg.model.omni),
                                      tokenizer_path=cfg.model.tokenizer_path, dtype=torch.float32)
    else:
        model, tok = load_omni_folder(model_arg, dtype=torch.float32)
    model.set_stage(1)
    return model.eval(), tok


def n_mels_of(model) -> int:
    return int(model.speech_encoder.config.num_mel_bins)


@torch.no_grad()
def evaluate(model, tok, manifest_path: str, n_answers: int, max_new_tokens: int = 32,
             template: str = "tokenizer", batch_size: int = 8, builder=None) -> dict:
    from omni_ds.data.audio import load_audio, log_mel, speech_positions
    from omni_ds.data.collator import OmniCollator
    from omni_ds.data.manifest import load_manifest
    from omni_ds.data.prompt import PromptBuilder
    manifest = load_manifest(manifest_path)
    builder = builder or PromptBuilder(tok, template=template)
    mode, n_mels = model.omni_config.encoder_mode, n_mels_of(model)
    ds_rate = model.omni_config.speech_encoder_ds_rate
    items = []
    for i in range(len(manifest)):
        rec = manifest[i]
        mel, frames = log_mel(load_audio(rec["speech_path"]), n_mels=n_mels, mode=mode)
        built = builder.build(rec["response_text"], speech_positions=speech_positions(frames, ds_rate))
        items.append({"input_ids": torch.tensor(built["input_ids"]), "labels": torch.tensor(built["labels"]),
                      "speech_mel": mel, "speech_frames": frames, "sample_index": i})
    collate = OmniCollator(tok.pad_token_id)
    loss_sum, n_targets = 0.0, 0
    t = time.time()
    for s in range(0, len(items), batch_size):
        out = model(**collate(items[s:s + batch_size]))
        loss_sum += float(out["loss_sum"])
        n_targets += int(out["n_targets"])
    loss_seconds = time.time() - t
    t = time.time()
    answers = greedy_answers(model, tok, builder, manifest, range(min(n_answers, len(items))), max_new_tokens)
    exact = sum(a["exact"] for a in answers)
    return {"manifest": manifest_path, "records": len(items), "loss": loss_sum / max(n_targets, 1),
            "targets": n_targets, "answers": answers, "exact": exact,
            "loss_seconds": loss_seconds, "answer_seconds": time.time() - t}


@torch.no_grad()
def greedy_answers(model, tok, builder, manifest, indices, max_new_tokens: int = 32) -> list[dict]:
    from omni_ds.data.audio import load_audio, log_mel
    from omni_ds.inference import eos_token_ids
    prompt = builder.build(None)["input_ids"]
    eos = eos_token_ids(model, tok)
    out_rows = []
    for i in indices:
        rec = manifest[i]
        mel, frames = log_mel(load_audio(rec["speech_path"]), n_mels=n_mels_of(model),
                              mode=model.omni_config.encoder_mode)
        out = model.generate(mel[None], torch.tensor([frames]), prompt, max_new_tokens=max_new_tokens,
                             eos_token_ids=eos, with_units=False)
        text = tok.decode(out["token_ids"], skip_special_tokens=True).strip()
        out_rows.append({"id": rec["id"], "question": rec["instruction_text"], "expected": rec["response_text"],
                         "answer": text, "exact": text.lower() == rec["response_text"].strip().lower()})
    return out_rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni_ds.realsmall.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the stage-1 training config (DIR/stage1.json)")
    p.add_argument("--model", required=True, help='"init" (as stage 1 starts) or a LLaMA-Omni folder')
    p.add_argument("--manifest", help="default: the config's val_manifest")
    p.add_argument("--answers", type=int, default=8, help="greedy answers for the first N records")
    p.add_argument("--train-answers", type=int, default=0,
                   help="also answer N training questions spread over the train manifest (what it was taught)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json-out", help="also write the result here")
    p.add_argument("--label", default=None, help="heading of the printed block")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from omni_ds.train.config import ConfigError, load_config
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = args.manifest or cfg.data.val_manifest
    if not manifest:
        print(f"error: {args.config}: no val_manifest and no --manifest", file=sys.stderr)
        return 2
    if args.model != "init" and not (Path(args.model) / "config.json").is_file():
        print(f"error: --model {args.model}: no config.json (expected 'init' or a LLaMA-Omni folder)",
              file=sys.stderr)
        return 2
    t = time.time()
    model, tok = load_model(cfg, args.model)
    load_seconds = time.time() - t
    # The prompt format stage 1 trained with (the config's template key when it has one).
    template = getattr(cfg, "prompt_template", None) or "tokenizer"
    from omni_ds.data.prompt import PromptBuilder
    # The config's own prompt (template, system prompt, instruction) when it can build one.
    builder = cfg.prompt_builder(tok) if hasattr(cfg, "prompt_builder") else PromptBuilder(tok, template=template)
    res = evaluate(model, tok, manifest, args.answers, args.max_new_tokens, template=template, builder=builder)
    res.update(model=args.model, load_seconds=load_seconds)
    if args.train_answers:
        from omni_ds.data.manifest import load_manifest
        train = load_manifest(cfg.data.train_manifest)
        step = max(len(train) // args.train_answers, 1)
        res["train_answers"] = greedy_answers(model, tok, builder, train,
                                              range(0, len(train), step)[:args.train_answers], args.max_new_tokens)
    label = args.label or f"model {args.model}"
    print(f"== {label}: validation loss {res['loss']:.4f} over {res['targets']} answer tokens "
          f"of {res['records']} clips; exact answers {res['exact']}/{len(res['answers'])}")
    for a in res["answers"]:
        print(f"   Q: {a['question']}\n      expected: {a['expected']}\n      answer:   {a['answer']}")
    if res.get("train_answers"):
        ta = res["train_answers"]
        print(f"   training questions (taught): exact {sum(a['exact'] for a in ta)}/{len(ta)}")
        for a in ta:
            print(f"   Q: {a['question']}\n      expected: {a['expected']}\n      answer:   {a['answer']}")
    print(f"   (load {load_seconds:.0f} s, loss {res['loss_seconds']:.0f} s, answers {res['answer_seconds']:.0f} s)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
