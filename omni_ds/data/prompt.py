"""Prompt ids with one speech placeholder, and labels masked to the response.

Two templates:
- "llama3": REFERENCE.md's Llama-3 chat format, written out here, so the ids do not depend on
  the tokenizer's own template. BOS appears once: every piece is tokenised with
  add_special_tokens=False, so a tokenizer whose post-processor prepends BOS (the real Llama-3
  one does) cannot add a second one.
- "tokenizer": the LLM tokenizer's own chat_template (ChatML for Qwen2.5 / SmolLM2, ...). The
  response span is found by rendering the conversation with and without the answer: the answer
  part is what the full rendering adds after the generation prompt.

Supervised labels: the response tokens and the end-of-turn token that closes them; -100 elsewhere.
Length: `model_max_length` counts LLM positions, the speech placeholder expanding to
`speech_positions` of them. A too-long sample loses response tokens from the end (reported as
`truncated`); when not even one response token would remain, or the prompt itself does not fit,
`PromptTooLong` is raised so the record is reported and skipped (never silently emptied).
"""
from __future__ import annotations

from omni_ds.constants import (DEFAULT_INSTRUCTION, IGNORE_INDEX, SPEECH_PLACEHOLDER,
                               SPEECH_TOKEN_INDEX, SYSTEM_PROMPT)

TEMPLATES = ("llama3", "tokenizer")
_NO_LIMIT = 10 ** 8     # HF uses a huge sentinel for "no model_max_length"


class PromptError(ValueError):
    """The prompt cannot be built for this record (message says why)."""


class PromptTooLong(PromptError):
    """Prompt + response do not fit model_max_length without cutting speech or the whole answer."""


def _llama3_parts(system: str, user: str) -> tuple[str, str]:
    """(text before the generation point, end-of-turn string) in REFERENCE.md's format."""
    prompt = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + system + "<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n" + user + "<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    return prompt, "<|eot_id|>"


class PromptBuilder:
    def __init__(self, tokenizer, template: str = "llama3", system_prompt: str = SYSTEM_PROMPT,
                 instruction: str = DEFAULT_INSTRUCTION, model_max_length: int | None = None):
        if template not in TEMPLATES:
            raise ValueError(f"template {template!r}: allowed {TEMPLATES}")
        if template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'tokenizer' needs a tokenizer with a chat_template; "
                             f"{getattr(tokenizer, 'name_or_path', tokenizer)!r} has none")
        if template == "llama3":
            for tok in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
                ids = tokenizer(tok, add_special_tokens=False).input_ids
                if len(ids) != 1:
                    raise ValueError(f"template 'llama3' needs the Llama-3 special token {tok} "
                                     "as a single token; use template='tokenizer' for this LLM")
        self.tokenizer = tokenizer
        self.template = template
        self.system_prompt = system_prompt
        self.instruction = instruction
        limit = model_max_length if model_max_length is not None else getattr(tokenizer, "model_max_length", None)
        self.model_max_length = limit if limit and limit < _NO_LIMIT else None
        self._memo: dict[str, list[int]] = {}

    # -- text rendering ------------------------------------------------------------------------
    def _user_text(self, instruction: str | None) -> str:
        instruction = self.instruction if instruction is None else instruction
        return f"{SPEECH_PLACEHOLDER}\n{instruction}"

    def render(self, response_text: str | None = None, instruction: str | None = None) -> tuple[str, str]:
        """(generation prompt text, answer text incl. its end-of-turn marker or "")."""
        (prompt, answer), = self.dialogue_pieces([(instruction, response_text)])
        return prompt, answer

    def dialogue_pieces(self, turns: list[tuple[str | None, str | None]]) -> list[tuple[str, str]]:
        """Per turn (instruction, response): (the text up to the assistant's answer, the answer
        incl. its end-of-turn marker, or "" for a generation prompt). Joined in order they are the
        whole conversation; the first piece holds the system prompt."""
        if self.template == "llama3":
            out = []
            for k, (instruction, response) in enumerate(turns):
                prompt, eot = _llama3_parts(self.system_prompt, self._user_text(instruction))
                if k:        # later turns continue after the previous <|eot_id|>: no BOS, no system
                    prompt = prompt[prompt.index("<|start_header_id|>user"):]
                out.append((prompt, "" if response is None else response + eot))
            return out
        return self._template_pieces(turns)

    def _template_pieces(self, turns) -> list[tuple[str, str]]:
        """Pieces from the tokenizer's chat template: each is what one more message adds to the
        rendering, which must extend the previous one (checked)."""
        msgs = [{"role": "system", "content": self.system_prompt}]
        out, done = [], ""
        for instruction, response in turns:
            msgs.append({"role": "user", "content": self._user_text(instruction)})
            prompt = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            if not prompt.startswith(done):
                raise PromptError("the tokenizer's chat template renders earlier turns differently once "
                                  "a turn is added; cannot split the conversation into turns")
            if response is None:
                out.append((prompt[len(done):], ""))
                continue
            msgs.append({"role": "assistant", "content": response})
            full = self.tokenizer.apply_chat_template(msgs, tokenize=False)
            if not full.startswith(prompt):
                raise PromptError("the tokenizer's chat template renders the answer turn differently "
                                  "from its generation prompt; cannot locate the response span")
            out.append((prompt[len(done):], full[len(prompt):]))
            done = full
        return out

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids if text else []

    def _prompt_ids(self, text: str) -> list[int]:
        # Prompt pieces repeat across records (same system prompt and instruction): memoise.
        ids = self._memo.get(text)
        if ids is None:
            if len(self._memo) > 4096:
                self._memo.clear()
            ids = self._memo[text] = self._ids(text)
        return list(ids)

    def _answer_ids(self, answer: str, response_text: str) -> tuple[list[int], int]:
        """Token ids of the answer part and how many of them are supervised."""
        ids = self._ids(answer)
        if self.template == "llama3":
            return ids, len(ids)
        # Supervise through the first special token after the response (its end-of-turn, e.g.
        # <|im_end|>); what the template adds after it (a newline) stays unsupervised.
        specials = set(self.tokenizer.all_special_ids) | {
            i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        for k in range(len(ids)):
            if ids[k] in specials:
                return ids, k + 1
        return ids, len(ids)

    def answer_room(self, n_prompt: int, speech_positions: int = 1) -> int:
        """Positions left for answer tokens after a prompt of `n_prompt` ids (placeholder counted
        once) whose placeholder expands to `speech_positions`; negative: the prompt alone overflows."""
        if self.model_max_length is None:
            return _NO_LIMIT
        return self.model_max_length - (n_prompt + speech_positions - 1)

    def fit_error(self, n_prompt: int, n_answer: int, speech_positions: int = 1) -> str | None:
        """Why this sample cannot be used within model_max_length (None when it can)."""
        room = self.answer_room(n_prompt, speech_positions)
        # An answer needs room for at least one of its tokens; a bare generation prompt must fit.
        if room >= (1 if n_answer > 0 else 0):
            return None
        return (f"too long: prompt {n_prompt + speech_positions - 1} positions (speech "
                f"{speech_positions}) + response {n_answer} tokens exceed model_max_length "
                f"{self.model_max_length} and no response token would remain")

    # -- ids and labels ------------------------------------------------------------------------
    def tokenize_dialogue(self, turns: list[tuple[str | None, str | None]]) -> list[tuple[list[int], list[int], int]]:
        """Per turn: (prompt ids with one SPEECH_TOKEN_INDEX, answer ids, how many answer ids are
        supervised). No length limit is applied here."""
        out = []
        for k, (prompt, answer) in enumerate(self.dialogue_pieces(turns)):
            if prompt.count(SPEECH_PLACEHOLDER) != 1:
                raise PromptError(f"turn {k + 1}: the rendered prompt holds {prompt.count(SPEECH_PLACEHOLDER)} "
                                  f"{SPEECH_PLACEHOLDER} placeholders; exactly one is needed "
                                  "(check system prompt and instruction)")
            before, after = prompt.split(SPEECH_PLACEHOLDER)
            prompt_ids = self._prompt_ids(before) + [SPEECH_TOKEN_INDEX] + self._prompt_ids(after)
            answer_ids, n_sup = self._answer_ids(answer, turns[k][1]) if answer else ([], 0)
            out.append((prompt_ids, answer_ids, n_sup))
        return out

    def build(self, response_text: str | None = None, instruction: str | None = None,
              speech_positions: int = 1) -> dict:
        """input_ids with one SPEECH_TOKEN_INDEX, labels masked to the answer; see module doc."""
        return self.build_dialogue([(instruction, response_text)], [speech_positions])

    def build_dialogue(self, turns: list[tuple[str | None, str | None]], speech_positions: list[int],
                       supervise: str = "all") -> dict:
        """A whole conversation: one SPEECH_TOKEN_INDEX per turn, labels on every answer and its
        end-of-turn token (supervise="last": the last kept answer only). Too long for
        model_max_length: whole trailing turns are dropped (`dropped_turns`); when not even the
        first turn fits, its answer is cut as a single-turn sample's is (`truncated`)."""
        if supervise not in ("all", "last"):
            raise ValueError(f"supervise={supervise!r}: allowed 'all' or 'last'")
        parts = self.tokenize_dialogue(turns)
        kept = self._turns_that_fit(parts, speech_positions)
        truncated = False
        if kept == 0:
            prompt_ids, answer_ids, n_sup = parts[0]
            err = self.fit_error(len(prompt_ids), len(answer_ids), speech_positions[0])
            if err:
                raise PromptTooLong(err)
            keep = min(len(answer_ids), self.answer_room(len(prompt_ids), speech_positions[0]))
            truncated = keep < n_sup
            parts, kept = [(prompt_ids, answer_ids[:keep], min(n_sup, keep))], 1
        ids, labels = [], []
        for k, (prompt_ids, answer_ids, n_sup) in enumerate(parts[:kept]):
            if supervise == "last" and k < kept - 1:
                n_sup = 0
            ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids[:n_sup] + [IGNORE_INDEX] * (len(answer_ids) - n_sup)
        return {"input_ids": ids, "labels": labels, "truncated": truncated, "n_prompt": len(parts[0][0]),
                "n_response": sum(1 for v in labels if v != IGNORE_INDEX), "n_turns": kept,
                "dropped_turns": len(turns) - kept}

    def _turns_that_fit(self, parts, speech_positions: list[int]) -> int:
        """How many leading turns fit model_max_length whole (speech expanded)."""
        if self.model_max_length is None:
            return len(parts)
        used = 0
        for k, (prompt_ids, answer_ids, _) in enumerate(parts):
            used += len(prompt_ids) + speech_positions[k] - 1 + len(answer_ids)
            if used > self.model_max_length:
                return k
        return len(parts)
