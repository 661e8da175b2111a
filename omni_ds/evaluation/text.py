"""Text normalisation and word error rate.

Normalisation (applied to both sides before counting words):
  1. Unicode NFKC, lowercase;
  2. apostrophes removed ("don't" -> "dont", both sides alike);
  3. every other character that is not a letter, digit or whitespace becomes a space, except a
     "." or "," between two digits ("3.5", "1,000" stay one word);
  4. whitespace collapsed. Numbers stay as written: "7" and "seven" are different words.
WER = (substitutions + deletions + insertions) / reference words; a corpus WER sums both over
the rows (it is not the mean of per-row WERs, which would weight short answers up).
"""
from __future__ import annotations

import re
import unicodedata

from omni_ds.train.edit_distance import levenshtein

_APOSTROPHES = re.compile(r"['\u2019\u2018\u02bc]")
_NUMBER_SEPARATOR = re.compile(r"(?<=\d)[.,](?=\d)")
_NOT_WORD = re.compile(r"[^\w\s\u0000]|_")
_KEEP = "\u0000"          # stands in for a kept number separator while punctuation is stripped


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = _APOSTROPHES.sub("", text)
    seps = _NUMBER_SEPARATOR.findall(text)
    text = _NOT_WORD.sub(" ", _NUMBER_SEPARATOR.sub(_KEEP, text))
    for sep in seps:                                  # put each kept separator back, in order
        text = text.replace(_KEEP, sep, 1)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return normalise(text).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits turning the hypothesis into the reference, reference words)."""
    ref, hyp = words(reference), words(hypothesis)
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(w, len(vocab)) for w in seq] for seq in (ref, hyp)]
    return levenshtein(ids[1], ids[0]), len(ref)


def wer(reference: str, hypothesis: str) -> float | None:
    """Per-row WER; None when the reference has no words (the rate is undefined)."""
    errors, n = word_errors(reference, hypothesis)
    return errors / n if n else None


def corpus_wer(pairs) -> float | None:
    """Total word edits / total reference words over (reference, hypothesis) pairs."""
    errors = total = 0
    for ref, hyp in pairs:
        e, n = word_errors(ref, hyp)
        errors, total = errors + e, total + n
    return errors / total if total else None
