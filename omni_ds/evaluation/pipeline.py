"""One evaluation run: manifest -> batched answers -> latency -> audio -> ASR -> judge -> report.

A sample whose audio cannot be used becomes a row with status "failed" and the reason; it is
counted in the summary, never dropped. Inputs that make the whole run meaningless (a model,
manifest, vocoder, ASR or judge folder that cannot be used) stop it before any work, with one
EvaluationInputError naming the argument.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omni_ds.evaluation.errors import EvaluationInputError
from omni_ds.evaluation.generation import Request, generate_answers
from omni_ds.evaluation.inputs import load_checked_vocoder, load_model, load_records
from omni_ds.evaluation.text import word_errors, words
from omni_ds.inference import PromptOptions, eos_token_ids, instruction_features


@dataclass(frozen=True)
class EvalConfig:
    model: str
    manifest: str
    out: str
    vocoder: Optional[str] = None
    asr: Optional[str] = None
    judge_model: Optional[str] = None
    omega: int = 10                      # units per streamed chunk (the paper's Omega)
    max_new_tokens: int = 256
    limit: Optional[int] = None
    batch_size: int = 8
    prompt: PromptOptions = PromptOptions()
    device: str = "cpu"
    measure_latency: bool = True
    progress: bool = True


@dataclass
class Tools:
    model: object
    tokenizer: object
    vocoder: Optional[object] = None
    asr: Optional[object] = None
    judge: Optional[object] = None


def load_tools(cfg: EvalConfig) -> Tools:
    """Everything the run needs, checked before any sample is touched."""
    from omni_ds.evaluation.asr import WhisperASR, check_whisper_folder
    from omni_ds.evaluation.judge import LocalJudge
    if cfg.asr:
        check_whisper_folder(cfg.asr)          # a wrong folder fails before the model loads
    if cfg.batch_size < 1 or cfg.omega < 1 or cfg.max_new_tokens < 1:
        raise EvaluationInputError(f"batch_size {cfg.batch_size}, omega {cfg.omega}, max_new_tokens "
                         f"{cfg.max_new_tokens}: each must be >= 1")
    model, tokenizer = load_model(cfg.model, cfg.device)
    tools = Tools(model, tokenizer)
    if cfg.vocoder:
        tools.vocoder = load_checked_vocoder(cfg.vocoder, model.omni_config.unit_vocab_size)
    if cfg.asr:
        tools.asr = WhisperASR(cfg.asr)
    if cfg.judge_model:
        tools.judge = LocalJudge(cfg.judge_model)
    return tools


def _bar(cfg: EvalConfig, total: int, desc: str):
    import sys
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, disable=not cfg.progress,
                dynamic_ncols=True)


def record_prompt(cfg: EvalConfig, record: dict) -> PromptOptions:
    """A LLaVA-form record carries its own text after <speech>; it is what the model was trained on."""
    own = record.get("prompt_instruction")
    return dataclasses.replace(cfg.prompt, instruction=own) if own else cfg.prompt


def new_row(record: dict) -> dict:
    return {"id": record["id"], "status": "ok", "error": None, "speech_path": record["speech_path"],
            "instruction_text": record.get("instruction_text") or None,
            "reference_text": record["response_text"]}


def prepare(cfg: EvalConfig, tools: Tools, records: list[dict]) -> tuple[list[dict], dict[int, Request]]:
    """A row per record and a model request per usable one (bad audio -> a failed row)."""
    rows, requests = [], {}
    for i, record in enumerate(records):
        rows.append(new_row(record))
        try:
            mel, frames = instruction_features(tools.model, record["speech_path"])
        except (ValueError, RuntimeError, OSError) as e:
            rows[-1].update(status="failed", error=str(e))
            continue
        requests[i] = Request(mel, frames, record_prompt(cfg, record).prompt_ids(tools.tokenizer))
    return rows, requests


def fill_answer(row: dict, result: dict, record: dict) -> None:
    errors, n = word_errors(record["response_text"], result["text"])
    row.update(text=result["text"], token_ids=result["token_ids"], units=result["units"],
               text_word_errors=errors, reference_words=n, text_wer=errors / n if n else None,
               answer_words=len(words(result["text"])))
    if record.get("units") and result["units"] is not None:
        from omni_ds.train.edit_distance import levenshtein
        edits = levenshtein(result["units"], record["units"])
        row.update(unit_edits=edits, reference_units=len(record["units"]),
                   unit_edit_distance=edits / len(record["units"]))


def generate(cfg: EvalConfig, tools: Tools, rows: list[dict], requests: dict[int, Request],
             records: list[dict]) -> float:
    """Batched answers for every request; returns the seconds spent. Rows of similar length share
    a batch (less padding). A batch that fails is retried one sample at a time, so one bad sample
    fails alone, with its reason."""
    eos = eos_token_ids(tools.model, tools.tokenizer)
    order = sorted(requests, key=lambda i: (requests[i].mel.shape[-1], len(requests[i].prompt_ids)))
    start = time.perf_counter()
    with _bar(cfg, len(order), "generate") as bar:
        for k in range(0, len(order), cfg.batch_size):
            batch = order[k:k + cfg.batch_size]
            for group in _answer_groups(tools, [requests[i] for i in batch], cfg.max_new_tokens, eos):
                for i, outcome in zip(batch, group):
                    if isinstance(outcome, Exception):
                        rows[i].update(status="failed", error=f"generation: {type(outcome).__name__}: {outcome}")
                    else:
                        fill_answer(rows[i], outcome, records[i])
            bar.update(len(batch))
    return time.perf_counter() - start


def _answer_groups(tools: Tools, batch: list[Request], max_new_tokens: int, eos: list[int]):
    try:
        yield generate_answers(tools.model, tools.tokenizer, batch, max_new_tokens, eos)
        return
    except Exception as e:        # isolate the culprit below; with one sample, it is the culprit
        if len(batch) == 1:
            yield [e]
            return
    outcomes = []
    for request in batch:
        try:
            outcomes += generate_answers(tools.model, tools.tokenizer, [request], max_new_tokens, eos)
        except Exception as e:
            outcomes.append(e)
    yield outcomes


def measure_latencies(cfg: EvalConfig, tools: Tools, rows: list[dict], records: list[dict]) -> None:
    """Streaming latencies, one sample at a time; the first usable sample is run once untimed
    first (lazy initialisation would otherwise land in the first measurement)."""
    from omni_ds.evaluation.latency import LatencyProbe
    ok = [i for i, r in enumerate(rows) if r["status"] == "ok"]
    if not ok:
        return
    with_decoder = tools.model.speech_generator is not None
    with _bar(cfg, len(ok), "latency") as bar:
        for n, i in enumerate([ok[0]] + ok):
            probe = LatencyProbe(tools.model, tools.tokenizer, record_prompt(cfg, records[i]), cfg.omega,
                                 tools.vocoder, cfg.max_new_tokens)
            result = probe.measure(records[i]["speech_path"])
            if n == 0:
                continue
            rows[i].update(first_token_latency_s=result.first_token_s,
                           first_chunk_latency_s=result.first_chunk_s if with_decoder else None,
                           first_audio_latency_s=result.first_audio_s)
            bar.update(1)


def safe_name(rid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rid)[:100] or "sample"


def speak_and_transcribe(cfg: EvalConfig, tools: Tools, rows: list[dict]) -> None:
    """Vocode each answer's units to OUT/audio/<id>.wav; with an ASR, transcribe it and score it
    against the generated text (the paper's ASR-WER)."""
    import soundfile as sf
    todo = [r for r in rows if r["status"] == "ok" and r.get("units")]
    if tools.vocoder is None or not todo:
        return
    audio = Path(cfg.out) / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    with _bar(cfg, len(todo), "vocode" + (" + ASR" if tools.asr else "")) as bar:
        for row in todo:
            path = audio / f"{safe_name(row['id'])}.wav"
            sf.write(str(path), tools.vocoder(row["units"]).cpu().numpy(), tools.vocoder.sampling_rate)
            row["wav"] = str(path)
            if tools.asr is not None:
                row["asr_text"] = tools.asr(path)
                errors, n = word_errors(row["text"], row["asr_text"])
                row.update(asr_word_errors=errors, asr_reference_words=n, asr_wer=errors / n if n else None)
            bar.update(1)


def calibrate(cfg: EvalConfig, tools: Tools, records: list[dict]) -> list[dict]:
    """The ASR on each record's reference response audio vs the reference text."""
    todo = [r for r in records if r.get("response_path")]
    if tools.asr is None or not todo:
        return []
    out = []
    with _bar(cfg, len(todo), "calibration") as bar:
        for record in todo:
            row = {"id": record["id"], "audio": record["response_path"], "reference_text": record["response_text"]}
            try:
                row["asr_text"] = tools.asr(record["response_path"])
                errors, n = word_errors(record["response_text"], row["asr_text"])
                row.update(asr_word_errors=errors, reference_words=n, asr_wer=errors / n if n else None)
            except (RuntimeError, ValueError, OSError) as e:
                row["error"] = f"{type(e).__name__}: {e}"
            out.append(row)
            bar.update(1)
    return out


def settings_of(cfg: EvalConfig, tools: Tools, generation_s: float, n_generated: int) -> dict:
    from omni_ds.evaluation.judge import RATING_PROMPT
    return {"model": cfg.model, "manifest": cfg.manifest, "vocoder": cfg.vocoder, "asr": cfg.asr,
            "judge_model": cfg.judge_model, "judge_prompt": RATING_PROMPT if cfg.judge_model else None,
            "omega": cfg.omega, "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
            "limit": cfg.limit, "speech_decoder": tools.model.speech_generator is not None,
            "normalisation": "lowercase, apostrophes removed, other punctuation -> space (except . or , "
                             "between digits), whitespace collapsed, numbers as written",
            "generation_seconds": generation_s,
            "samples_per_minute": 60.0 * n_generated / generation_s if generation_s > 0 else None}


def evaluate(cfg: EvalConfig) -> dict:
    """Run the whole evaluation; writes OUT/report.json, OUT/report.md, OUT/*.png, OUT/audio/.
    Returns {"summary", "samples", "calibration", "plots"}."""
    from omni_ds.evaluation.judge import judge_rows
    from omni_ds.evaluation.plots import write_plots
    from omni_ds.evaluation.report import summarise, write_json, write_markdown
    out = Path(cfg.out)
    tools = load_tools(cfg)
    records = load_records(cfg.manifest, cfg.limit)
    out.mkdir(parents=True, exist_ok=True)
    rows, requests = prepare(cfg, tools, records)
    generation_s = generate(cfg, tools, rows, requests, records)
    if cfg.measure_latency:
        measure_latencies(cfg, tools, rows, records)
    speak_and_transcribe(cfg, tools, rows)
    calibration = calibrate(cfg, tools, records)
    if tools.judge is not None:
        judge_rows(tools.judge, rows, tools.asr)
    n_generated = sum(1 for r in rows if "token_ids" in r)
    summary = summarise(rows, calibration, settings_of(cfg, tools, generation_s, n_generated))
    plots, no_plots = write_plots(rows, out)
    summary["plots"] = [Path(p).name for p in plots] if plots else no_plots
    write_json(out / "report.json", rows, calibration, summary)
    write_markdown(out / "report.md", rows, calibration, summary, plots)
    return {"summary": summary, "samples": rows, "calibration": calibration, "plots": plots}
