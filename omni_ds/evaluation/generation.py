"""Batched greedy generation: the answers of tools/infer.py, several instructions at a time.

Same prompt (PromptOptions), same stopping rule (eos_token_ids), same greedy choice and the same
decoder states as `OmniSpeechModel.generate`; only the batching differs. Rows are LEFT padded so
every row's next token is read at the last position, with position ids counted from each row's
first real token (a padded row sees exactly the positions it sees alone). A finished row keeps
being fed its EOS until the batch ends; what it produces after its EOS is discarded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from omni_ds.hf_compat import cache_kwargs
from omni_ds.inference import answer_text


@dataclass
class Request:
    """One instruction, ready for the model: its log-mel, real frames, and prompt ids."""
    mel: torch.Tensor              # [n_mels, T]
    frames: int
    prompt_ids: list[int]


def _right_padded_prompts(requests: list[Request], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r.prompt_ids) for r in requests)
    ids = torch.zeros(len(requests), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(requests):
        ids[b, : len(r.prompt_ids)] = torch.tensor(r.prompt_ids, device=device)
        mask[b, : len(r.prompt_ids)] = 1
    return ids, mask


def _stacked_mels(requests: list[Request], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Trimmed mode: clips differ in length; the encoder masks each row past its own frames.
    width = max(r.mel.shape[-1] for r in requests)
    mel = torch.stack([F.pad(r.mel, (0, width - r.mel.shape[-1])) for r in requests])
    return mel.to(device, dtype), torch.tensor([r.frames for r in requests], device=device)


def _left_pad(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows (what the splice returns) -> the same rows flush right."""
    out, out_mask = torch.zeros_like(embeds), torch.zeros_like(mask)
    width = embeds.shape[1]
    for b in range(embeds.shape[0]):
        n = int(mask[b].sum())
        out[b, width - n:] = embeds[b, :n]
        out_mask[b, width - n:] = 1
    return out, out_mask


def additive_mask(valid: torch.Tensor, queries: int, dtype) -> torch.Tensor:
    """[B, 1, queries, keys] additive mask: causal, padded keys hidden. Given in 4-D, the LLM uses
    it as it is: transformers' own mask builder costs more per decoding step than the tiny
    demo model's forward. A padded query may see itself, so no softmax row is empty (NaN)."""
    keys = valid.shape[1]
    q_pos = torch.arange(keys - queries, keys, device=valid.device)[:, None]
    k_pos = torch.arange(keys, device=valid.device)[None, :]
    allowed = (k_pos <= q_pos)[None] & valid[:, None, :].bool()
    allowed = allowed | (k_pos == q_pos)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


@torch.no_grad()
def prefill(model, requests: list[Request]):
    """Encode speech, splice it into the prompts, run the LLM over them with a KV cache."""
    device = next(model.llm.parameters()).device
    dtype = next(model.speech_encoder.parameters()).dtype
    ids, ids_mask = _right_padded_prompts(requests, device)
    mel, frames = _stacked_mels(requests, device, dtype)
    embeds, mask, _ = model.embed_inputs(ids, ids_mask, None, mel, frames)
    embeds, mask = _left_pad(embeds, mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # our own cache object, filled in place, under the keyword this transformers takes (hf_compat)
    cache = cache_kwargs(model.llm.model, DynamicCache(config=model.llm.config))
    out = model.llm.model(inputs_embeds=embeds, attention_mask=additive_mask(mask, mask.shape[1], embeds.dtype),
                          position_ids=positions, use_cache=True, **cache)
    return out, mask, positions, cache


def _locally(done: bool) -> bool:
    return done


@torch.no_grad()
def greedy_batch(model, requests: list[Request], max_new_tokens: int, eos_token_ids: list[int],
                 finished: Callable[[bool], bool] = _locally) -> list[tuple[list[int], Optional[torch.Tensor]]]:
    """Per request: (generated token ids incl. the EOS if reached, the states predicting them).
    `finished(every row here is done)` says whether to stop decoding: under ZeRO-3 every rank
    must run as many forwards as the others (training passes an all-reduce)."""
    eos = set(eos_token_ids)
    out, mask, positions, cache = prefill(model, requests)
    n = len(requests)
    tokens: list[list[int]] = [[] for _ in range(n)]
    states: list[list[torch.Tensor]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new_tokens):
        state = out.last_hidden_state[:, -1]
        chosen = model.llm.lm_head(state).argmax(-1)
        for b in range(n):
            if not done[b]:
                tokens[b].append(int(chosen[b]))
                states[b].append(state[b])
                done[b] = int(chosen[b]) in eos
        if finished(all(done)):
            break
        mask = F.pad(mask, (0, 1), value=1)
        positions = positions[:, -1:] + 1
        emb = model.llm.get_input_embeddings()(chosen[:, None])
        out = model.llm.model(inputs_embeds=emb, attention_mask=additive_mask(mask, 1, emb.dtype),
                              position_ids=positions, use_cache=True, **cache)
    return [(t, torch.stack(s) if s else None) for t, s in zip(tokens, states)]


@torch.no_grad()
def units_batch(generator, states: list[Optional[torch.Tensor]]) -> list[Optional[list[int]]]:
    """The CTC decoder's greedy units for each row's states, in one padded decoder pass (the
    decoder is causal and masks each row past its own length, so rows do not interact)."""
    from omni_ds.model.ctc_decoder import ctc_collapse
    rows = [i for i, s in enumerate(states) if s is not None and s.shape[0] > 0]
    result: list[Optional[list[int]]] = [[] if s is not None else None for s in states]
    if not rows:
        return result
    lengths = torch.tensor([states[i].shape[0] for i in rows], device=states[rows[0]].device)
    padded = torch.nn.utils.rnn.pad_sequence([states[i] for i in rows], batch_first=True)
    logits, n_out = generator(padded, lengths)
    for k, i in enumerate(rows):
        path = logits[k, : int(n_out[k])].argmax(-1).tolist()
        result[i] = ctc_collapse(path, generator.blank)
    return result


def generate_answers(model, tokenizer, requests: list[Request], max_new_tokens: int,
                     eos_token_ids: list[int], finished: Callable[[bool], bool] = _locally) -> list[dict]:
    """{"text", "token_ids", "units"} per request, as `omni_ds.inference.answer` returns them."""
    model.eval()
    generated = greedy_batch(model, requests, max_new_tokens, eos_token_ids, finished)
    units = ([None] * len(generated) if model.speech_generator is None
             else units_batch(model.speech_generator, [s for _, s in generated]))
    return [{"text": answer_text(tokenizer, ids), "token_ids": ids, "units": u}
            for (ids, _), u in zip(generated, units)]
