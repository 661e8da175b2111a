"""Content score 1-5 by a local LLM judge, standing in for the paper's GPT-4o score.

The rating prompt is composed from the LLaMA-Omni paper's description of its metric (Fang et al.,
arXiv 2409.06666 v2, section 4.2, "ChatGPT Score"): the judge sees the user's instruction and the
model's response (the text answer for S2TIF, the ASR transcript of the spoken answer for S2SIF),
weighs helpfulness, relevance, fluency and suitability for speech interaction, and gives a
single score from 1 to 5, nothing else. It is written here from that description, not copied; a
local model is a weaker judge than GPT-4o, so its scores compare runs, not papers.

Parsing: the first standalone integer 1..5 in the reply ("4", "Score: 4", "**4**/5"); a reply with
none is counted as unparseable (its raw text kept in the row), never dropped or guessed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from omni_ds.evaluation.errors import EvaluationInputError

RATING_PROMPT = (
    "You will evaluate a voice assistant. The assistant heard a user's spoken instruction and "
    "answered it; it will reply by speech, so its answer should suit being listened to.\n"
    "Rate the answer for helpfulness, relevance, fluency and suitability for speech interaction, "
    "all together, as one score on a scale from 1 (worst) to 5 (best).\n\n"
    "### [Instruction]\n{instruction}\n\n### [Response]\n{response}\n\n"
    "Reply with the score only, a single digit from 1 to 5, without any explanation."
)
_SCORE = re.compile(r"(?<![\d.])([1-5])(?![\d.]*\d)")


def parse_score(reply: str) -> Optional[int]:
    """The first standalone 1..5 in `reply`, or None (no guessing: "10", "0", "3.5" do not count)."""
    match = _SCORE.search(reply or "")
    return int(match.group(1)) if match else None


class LocalJudge:
    """A local Hugging Face causal LM folder, greedy, its own chat template when it has one."""

    def __init__(self, folder: str | Path, max_new_tokens: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise EvaluationInputError(f"--judge-model {self.folder}: no config.json (a local LLM folder)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
            self.model = AutoModelForCausalLM.from_pretrained(str(self.folder), dtype=torch.float32).eval()
        except Exception as e:    # a folder that is not a causal LM fails in many ways
            raise EvaluationInputError(f"--judge-model {self.folder}: cannot load a causal LM "
                                       f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
        self.max_new_tokens = max_new_tokens

    def _input_ids(self, text: str) -> torch.Tensor:
        if getattr(self.tokenizer, "chat_template", None):
            # rendered to text first: with tokenize=True transformers 5 returns a BatchEncoding, 4.x ids
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                        add_generation_prompt=True, tokenize=False)
            return self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        return self.tokenizer(text, return_tensors="pt").input_ids

    @torch.no_grad()
    def rate(self, instruction: str, response: str) -> dict:
        """{"score": 1..5 or None, "reply": the judge's raw reply}."""
        ids = self._input_ids(RATING_PROMPT.format(instruction=instruction, response=response))
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                  do_sample=False, pad_token_id=self.tokenizer.pad_token_id
                                  or self.tokenizer.eos_token_id)
        reply = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        return {"score": parse_score(reply), "reply": reply}



def judge_rows(judge: LocalJudge, rows: list[dict], asr=None) -> None:
    """judge_text_score (the text answer, S2TIF) and, where the spoken answer was transcribed,
    judge_speech_score (S2SIF) on every usable row, each with its raw reply. The instruction is
    the manifest's text_instruction, else the ASR transcript of the spoken instruction."""
    for row in rows:
        if row["status"] != "ok":
            continue
        instruction = row.get("instruction_text")
        if not instruction and asr is not None:
            instruction = row["instruction_asr_text"] = asr(row["speech_path"])
        if not instruction:
            row["judge_error"] = "no instruction text (manifest text_instruction empty and no --asr)"
            continue
        for key, response in (("judge_text_score", row.get("text")), ("judge_speech_score", row.get("asr_text"))):
            if response is not None:
                verdict = judge.rate(instruction, response)
                row[key], row[key + "_reply"] = verdict["score"], verdict["reply"]
