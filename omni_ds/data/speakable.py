"""Which text a TTS voice can speak: the filter of tools/synthesize_data.py.

LLaMA-Omni (§3) rewrote its Alpaca / UltraChat instructions and regenerated short answers so that
nothing unspeakable reached the TTS; text instruction sets taken as they are hold URLs, code,
tables and essays that a voice reads as noise or not at all. A dialogue is dropped whole when any
of its instructions or answers fails one of these rules (checked in this order; the first that
fails is the reason counted):

    empty     no letter at all (blank, or punctuation and digits only)
    url       a URL (scheme://, www.), a bare domain such as example.com/…, or an e-mail address
    code      a fenced block (```), inline `code`, an HTML/XML tag, or a code-like line (CODE_LINE)
    table     a markdown table: a line with two or more '|'
    too_long  more words than max_answer_words (answers) or max_instruction_words (instructions)
    symbols   more than max_symbol_ratio of the non-space characters are symbols: anything but
              Latin letters, digits and ordinary sentence punctuation (so markdown markup,
              formulas and non-Latin scripts, which an English voice cannot read, count)
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

RULES = ("empty", "url", "code", "table", "too_long", "symbols")

_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S|\bwww\.\S|\b[\w-]+\.(?:com|org|net|edu|gov|io|ai|co|uk|de)\b(?:/\S*)?"
                  r"|\b[\w.+-]+@[\w-]+\.[\w.-]+", re.IGNORECASE)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_TAG = re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>")
# A line is code-like when it has the shape no English sentence has: it ends with a brace, a
# semicolon or "):"; holds a programming operator; or opens with a definition / import keyword
# (lowercase, followed by what that keyword is followed by in code).
CODE_LINE = re.compile(
    r"[{};]\s*$|\):\s*$"
    r"|==|!=|<=|>=|=>|->|&&|\|\||::|\+\+|\+=|-=|/\*|\*/|</|/>"
    r"|^\s*(?:def|class)\s+\w+\s*[(:]"
    r"|^\s*(?:import\s+[\w.]+\s*$|from\s+[\w.]+\s+import\b|#include\b)"
    r"|^\s*\w+(?:\.\w+)*\([^()]*\)\s*;?\s*$")
_SPEAKABLE_PUNCT = set(".,;:!?'\"()-–—‘’“”%&$€£/")


@dataclass(frozen=True)
class FilterConfig:
    max_answer_words: int = 200
    # Whisper hears 30 s; at the voices' ~2.7 words/s, 80 words is about that long.
    max_instruction_words: int = 80
    max_symbol_ratio: float = 0.08


def is_empty(text: str) -> bool:
    return not any(c.isalpha() for c in text)


def has_url(text: str) -> bool:
    return _URL.search(text) is not None


def has_code(text: str) -> bool:
    if "```" in text or _INLINE_CODE.search(text) or _TAG.search(text):
        return True
    return any(CODE_LINE.search(line) for line in text.splitlines())


def has_table(text: str) -> bool:
    return any(line.count("|") >= 2 for line in text.splitlines())


def word_count(text: str) -> int:
    return len(text.split())


def _is_symbol(c: str) -> bool:
    if c.isdigit() or c in _SPEAKABLE_PUNCT:
        return False
    if c.isalpha():
        return not unicodedata.name(c, "").startswith("LATIN")
    return True


def symbol_ratio(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(map(_is_symbol, chars)) / max(len(chars), 1)


def unspeakable_reason(text: str, is_answer: bool, cfg: FilterConfig = FilterConfig()) -> str | None:
    """The first rule `text` fails (one of RULES), or None when a voice can speak it."""
    limit = cfg.max_answer_words if is_answer else cfg.max_instruction_words
    checks = (("empty", is_empty), ("url", has_url), ("code", has_code), ("table", has_table),
              ("too_long", lambda t: word_count(t) > limit),
              ("symbols", lambda t: symbol_ratio(t) > cfg.max_symbol_ratio))
    return next((rule for rule, fails in checks if fails(text)), None)


def dialogue_reason(turns, cfg: FilterConfig = FilterConfig()) -> tuple[str, int, str] | None:
    """(rule, turn number from 1, "instruction" | "answer") of the first unspeakable text of a
    dialogue of (instruction, answer) pairs, or None when all of it can be spoken."""
    for k, (instruction, answer) in enumerate(turns, 1):
        for role, text in (("instruction", instruction), ("answer", answer)):
            rule = unspeakable_reason(text, role == "answer", cfg)
            if rule:
                return rule, k, role
    return None
