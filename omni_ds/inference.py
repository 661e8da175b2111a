"""Answer one spoken instruction: greedy text, then units (offline or streamed in chunks).

Streaming follows the paper's Algorithm 1: after each generated token its LLM state is appended,
the causal CTC decoder runs over the states so far, and once at least Omega new units exist they
are emitted as a chunk; what remains is flushed at the end. Because the decoder is causal and
greedy CTC collapsing is prefix-stable, the concatenated chunks equal the offline units.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from omni_ds.constants import DEFAULT_INSTRUCTION, SYSTEM_PROMPT
from omni_ds.data.audio import load_audio, log_mel
from omni_ds.data.prompt import PromptBuilder
from omni_ds.model.ctc_decoder import CTCSpeechGenerator
from omni_ds.model.omni_model import OmniSpeechModel


class UnitStreamer:
    """Collects LLM states token by token and emits unit chunks of at least `chunk_units`."""

    def __init__(self, generator: CTCSpeechGenerator, chunk_units: int = 10,
                 on_chunk: Optional[Callable[[list[int]], None]] = None):
        if chunk_units < 1:
            raise ValueError(f"chunk_units={chunk_units}: must be >= 1")
        self.generator = generator
        self.chunk_units = chunk_units
        self.on_chunk = on_chunk
        self.states: list[torch.Tensor] = []
        self.chunks: list[list[int]] = []
        self.emitted = 0

    def _emit(self, units: list[int]) -> None:
        self.chunks.append(units)
        self.emitted += len(units)
        if self.on_chunk is not None:
            self.on_chunk(units)

    def push(self, state: torch.Tensor) -> None:
        self.states.append(state)
        units = self.generator.predict(torch.stack(self.states))
        if len(units) - self.emitted >= self.chunk_units:
            self._emit(units[self.emitted:])

    def flush(self) -> None:
        if not self.states:
            return
        units = self.generator.predict(torch.stack(self.states))
        if len(units) > self.emitted:
            self._emit(units[self.emitted:])


def eos_token_ids(model: OmniSpeechModel, tokenizer) -> list[int]:
    ids = set()
    for source in (getattr(model.llm, "generation_config", None), model.llm.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


@torch.no_grad()
def instruction_audio_problem(wav: str | Path) -> Optional[str]:
    """Why a spoken instruction cannot be answered (the validator's reasons: missing, corrupt,
    non-finite samples, empty), or None."""
    from omni_ds.data.validate import probe_audio
    samples, _, error = probe_audio(str(wav))
    if error:
        return error
    if samples == 0:
        return f"empty audio: {wav} (0 samples)"
    return None


@dataclass(frozen=True)
class PromptOptions:
    """How the user turn around the speech is written; answer with what the model was trained on."""
    instruction: str = DEFAULT_INSTRUCTION
    system_prompt: str = SYSTEM_PROMPT
    template: str = "llama3"
    # The official inference's prompt can carry <|begin_of_text|> twice (template + tokenizer);
    # omni_ds trains and answers with a single BOS by default.
    double_bos: bool = False

    def prompt_ids(self, tokenizer) -> list[int]:
        builder = PromptBuilder(tokenizer, template=self.template, system_prompt=self.system_prompt,
                                instruction=self.instruction)
        prompt = builder.build(None)["input_ids"]
        if self.double_bos and tokenizer.bos_token_id is not None:
            prompt = [tokenizer.bos_token_id] + prompt
        return prompt


def instruction_features(model: OmniSpeechModel, wav: str | Path) -> tuple[torch.Tensor, int]:
    """The encoder's input for one spoken instruction: (log-mel [n_mels, T], real frames), in the
    model's encoder mode. Raises ValueError with the validator's reason for unusable audio."""
    problem = instruction_audio_problem(wav)
    if problem:
        raise ValueError(problem)
    return log_mel(load_audio(wav), n_mels=model.speech_encoder.config.num_mel_bins,
                   mode=model.omni_config.encoder_mode)


def answer_text(tokenizer, token_ids: list[int]) -> str:
    """The generated ids as the answer text (special tokens such as <|eot_id|> dropped)."""
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def answer(model: OmniSpeechModel, tokenizer, wav: str | Path, max_new_tokens: int = 256,
           prompt: PromptOptions = PromptOptions(), stream_chunk_units: Optional[int] = None,
           on_chunk: Optional[Callable[[list[int]], None]] = None,
           on_token: Optional[Callable[[int], None]] = None) -> dict:
    """{"text", "token_ids", "units"} (+ "unit_chunks" when streaming) for one WAV file.

    `stream_chunk_units`: emit units in chunks of at least that many while the text is generated
    (each chunk also goes to `on_chunk`); None: the units are decoded once, at the end.
    `on_token(token_id)` is called as each token is chosen, before its units (latency probes).
    """
    model.eval()
    prompt_ids = prompt.prompt_ids(tokenizer)
    mel, frames = instruction_features(model, wav)
    device = next(model.llm.parameters()).device
    dtype = next(model.speech_encoder.parameters()).dtype
    streamer = None
    if stream_chunk_units is not None and model.speech_generator is not None:
        streamer = UnitStreamer(model.speech_generator, stream_chunk_units, on_chunk)

    def step(token: int, state: torch.Tensor) -> None:
        if on_token is not None:
            on_token(token)
        if streamer is not None:
            streamer.push(state)

    out = model.generate(mel[None].to(device, dtype), torch.tensor([frames], device=device), prompt_ids,
                         max_new_tokens=max_new_tokens, eos_token_ids=eos_token_ids(model, tokenizer),
                         with_units=streamer is None,
                         on_token=None if streamer is None and on_token is None else step)
    result = {"text": answer_text(tokenizer, out["token_ids"]), "token_ids": out["token_ids"],
              "units": out["units"]}
    if streamer is not None:
        streamer.flush()
        result["unit_chunks"] = streamer.chunks
        result["units"] = [u for chunk in streamer.chunks for u in chunk]
    return result


def write_units_file(units: list[int], path: str | Path) -> None:
    """One line of space-separated unit ids: the input format of fairseq's unit-vocoder script."""
    Path(path).write_text(" ".join(map(str, units)) + "\n")
