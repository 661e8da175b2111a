"""Evaluation of a trained model on a manifest: the paper's measurable metrics in one call.

    generation.py  batched greedy answers (left-padded prompts, KV cache), equal to tools/infer.py's
    latency.py     first token / first unit chunk / first audio on the streaming path, batch 1
    text.py        the text normalisation and (corpus) word error rate
    asr.py         a local Whisper folder transcribes spoken answers (ASR-WER, calibration)
    judge.py       a local LLM rates content 1-5 with a rating prompt after the paper's
    inputs.py      loading model / manifest / vocoder, each failure one clear error
    pipeline.py    the run: EvalConfig -> rows -> report
    report.py      summary from rows, report.json, report.md
    plots.py       latency CDF and WER-vs-length PNGs
    stats.py       means / percentiles that skip missing values
    errors.py      EvaluationInputError (tools/evaluate.py: one line, exit 2)
"""
from omni_ds.evaluation.errors import EvaluationInputError
from omni_ds.evaluation.pipeline import EvalConfig, evaluate

__all__ = ["EvalConfig", "EvaluationInputError", "evaluate"]
