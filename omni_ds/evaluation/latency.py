"""Response latency of one spoken instruction, measured on the streaming path (paper Algorithm 1).

Clock starts when the WAV is handed over (decoding, log-mel and the encoder are included), as in
the paper's "speech input -> start of speech output":
  first_token_s   the first text token is chosen;
  first_chunk_s   the first chunk of >= Omega units leaves the streaming CTC decoder (null without a
                  speech decoder; an answer shorter than Omega units has its only chunk at the end);
  first_audio_s   that chunk is vocoded (only with a vocoder): the moment playback could start.
So first_token_s <= first_chunk_s <= first_audio_s. One instruction at a time, batch 1, as a user
would meet it; generation stops once the last needed event has happened (the rest of the answer
does not change these numbers).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omni_ds.inference import PromptOptions, answer


@dataclass
class Latency:
    first_token_s: Optional[float] = None
    first_chunk_s: Optional[float] = None
    first_audio_s: Optional[float] = None


class _Enough(Exception):
    """Raised from a callback once every latency this run can measure is known."""


@dataclass(frozen=True)
class LatencyProbe:
    """What the streaming run needs: the model, its tokenizer, the prompt, Omega and a vocoder."""
    model: object
    tokenizer: object
    prompt: PromptOptions
    omega: int = 10
    vocoder: Optional[object] = None
    max_new_tokens: int = 256

    def measure(self, wav: str | Path) -> Latency:
        result = Latency()
        wants_chunk = self.model.speech_generator is not None
        start = time.perf_counter()

        def on_token(_token: int) -> None:
            if result.first_token_s is None:
                result.first_token_s = time.perf_counter() - start
                if not wants_chunk:
                    raise _Enough

        def on_chunk(units: list[int]) -> None:
            if result.first_chunk_s is not None:
                return
            result.first_chunk_s = time.perf_counter() - start
            if self.vocoder is not None:
                self.vocoder(units)
                result.first_audio_s = time.perf_counter() - start
            raise _Enough

        try:
            answer(self.model, self.tokenizer, wav, self.max_new_tokens, self.prompt,
                   stream_chunk_units=self.omega if wants_chunk else None,
                   on_chunk=on_chunk, on_token=on_token)
        except _Enough:
            pass
        return result
