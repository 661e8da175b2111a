"""The evaluation report: the summary computed from the rows, report.json and report.md.

Every summary number is recomputed from the rows it summarises (corpus WERs from each row's word
errors and reference words), so the two can always be checked against each other.
"""
from __future__ import annotations

import json
from pathlib import Path

from omni_ds.evaluation.stats import distribution, present, ratio

LATENCIES = ("first_token_latency_s", "first_chunk_latency_s", "first_audio_latency_s")


def corpus_rate(rows: list[dict], errors_key: str, total_key: str) -> dict:
    """{"rate", "errors", "total", "n"} summed over the rows that have both counts."""
    used = [r for r in rows if r.get(errors_key) is not None and r.get(total_key) is not None]
    errors, total = sum(r[errors_key] for r in used), sum(r[total_key] for r in used)
    return {"rate": ratio(errors, total), "errors": errors, "total": total, "n": len(used)}


def judge_summary(rows: list[dict], key: str) -> dict:
    judged = [r for r in rows if key + "_reply" in r]
    scores = present(r[key] for r in judged)
    return {"n": len(judged), "mean": ratio(sum(scores), len(scores)), "scored": len(scores),
            "unparseable": len(judged) - len(scores)}


def summarise(rows: list[dict], calibration: list[dict], settings: dict) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    summary = {
        "samples": len(rows), "evaluated": len(ok), "failed": len(rows) - len(ok),
        "failures": [{"id": r["id"], "error": r["error"]} for r in rows if r["status"] != "ok"],
        "text_wer": corpus_rate(ok, "text_word_errors", "reference_words"),
        "unit_edit_distance": {
            "mean": distribution(r.get("unit_edit_distance") for r in ok)["mean"],
            "corpus": corpus_rate(ok, "unit_edits", "reference_units")},
        "latency": {k: distribution(r.get(k) for r in ok) for k in LATENCIES},
        "asr_wer": corpus_rate(ok, "asr_word_errors", "asr_reference_words"),
        "calibration": corpus_rate(calibration, "asr_word_errors", "reference_words"),
        "answer_words": distribution(r.get("answer_words") for r in ok),
    }
    if any("judge_text_score_reply" in r or "judge_error" in r for r in ok):
        summary["judge"] = {"text": judge_summary(ok, "judge_text_score"),
                            "speech": judge_summary(ok, "judge_speech_score"),
                            "not_judged": sum(1 for r in ok if "judge_error" in r)}
    return {**summary, **settings}


def write_json(path: Path, rows: list[dict], calibration: list[dict], summary: dict) -> None:
    path.write_text(json.dumps({"summary": summary, "calibration": calibration, "samples": rows},
                               indent=1, ensure_ascii=False) + "\n")


def _num(x, fmt: str = "{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def _cell(text) -> str:
    s = "" if text is None else str(text)
    s = s.replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= 60 else s[:57] + "..."


def _summary_lines(s: dict) -> list[str]:
    pct = "{:.1%}"
    lines = [f"- samples {s['samples']}: evaluated {s['evaluated']}, failed {s['failed']}",
             f"- text WER {_num(s['text_wer']['rate'], pct)} ({s['text_wer']['errors']} word edits / "
             f"{s['text_wer']['total']} reference words)",
             f"- unit edit distance: mean {_num(s['unit_edit_distance']['mean'])}, corpus "
             f"{_num(s['unit_edit_distance']['corpus']['rate'])} (rows with reference units: "
             f"{s['unit_edit_distance']['corpus']['n']})",
             f"- ASR-WER of the spoken answer vs its text {_num(s['asr_wer']['rate'], pct)} "
             f"(n {s['asr_wer']['n']}); calibration (ASR on the reference audio) "
             f"{_num(s['calibration']['rate'], pct)} (n {s['calibration']['n']})"]
    for key, d in s["latency"].items():
        lines.append(f"- {key}: mean {_num(d['mean'])} s, p50 {_num(d['p50'])} s, p90 {_num(d['p90'])} s (n {d['n']})")
    for kind, d in (s.get("judge") or {}).items():
        if kind == "not_judged":
            lines.append(f"- judge: {d} rows not judged (see their judge_error)")
            continue
        lines.append(f"- judge ({kind}): mean {_num(d['mean'], '{:.2f}')} over {d['scored']}, "
                     f"unparseable {d['unparseable']}")
    return lines


def write_markdown(path: Path, rows: list[dict], calibration: list[dict], summary: dict, plots: list[str]) -> None:
    out = ["# Evaluation report", "", f"model `{summary['model']}`, manifest `{summary['manifest']}`", "",
           "## Summary", "", *_summary_lines(summary), ""]
    out += [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    out += ["## Samples", "", "| id | status | answer | reference | WER | units | unit ED | "
            "t_token s | t_chunk s | t_audio s | ASR | ASR-WER |", "|" + "---|" * 12]
    for r in rows:
        out.append("| " + " | ".join([
            _cell(r["id"]), _cell(r["status"] if r["status"] == "ok" else f"failed: {r['error']}"),
            _cell(r.get("text")), _cell(r.get("reference_text")), _num(r.get("text_wer")),
            _num(len(r["units"]) if r.get("units") is not None else None, "{}"), _num(r.get("unit_edit_distance")),
            *(_num(r.get(k)) for k in LATENCIES), _cell(r.get("asr_text")), _num(r.get("asr_wer"))]) + " |")
    if calibration:
        out += ["", "## Calibration (ASR on the reference response audio)", "",
                "| id | reference | ASR | WER |", "|---|---|---|---|"]
        out += [f"| {_cell(c['id'])} | {_cell(c['reference_text'])} | {_cell(c.get('asr_text'))} | "
                f"{_num(c.get('asr_wer'))} |" for c in calibration]
    path.write_text("\n".join(out) + "\n")
