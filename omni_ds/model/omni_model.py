"""OmniSpeechModel: Whisper encoder -> projector -> LLM (+ CTC speech decoder), composed.

Stage 1 trains projector + LLM on the text answer; stage 2 trains only the speech decoder on the
frozen LLM's response hidden states. The forward returns summed losses and target counts so the
training loop can normalise over a whole optimizer step across ranks (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel, WhisperConfig

from omni_ds.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omni_ds.hf_compat import cache_kwargs, enable_activation_checkpointing
from omni_ds.model.ctc_decoder import CTCSpeechGenerator, ctc_collapse
from omni_ds.model.omni_config import OmniConfig
from omni_ds.model.projector import SpeechProjector
from omni_ds.model.speech_encoder import WhisperSpeechEncoder
from omni_ds.model.splice import splice_speech


class OmniSpeechModel(nn.Module):
    def __init__(self, omni_config: OmniConfig, whisper_config: WhisperConfig, llm: PreTrainedModel):
        super().__init__()
        self.omni_config = omni_config
        self.speech_encoder = WhisperSpeechEncoder(whisper_config, omni_config.encoder_mode)
        llm_config = llm.config
        self.speech_projector = SpeechProjector(whisper_config.d_model, llm_config.hidden_size,
                                                omni_config.speech_encoder_ds_rate,
                                                omni_config.speech_projector_hidden_size)
        self.llm = llm
        self.speech_generator: Optional[CTCSpeechGenerator] = None
        if omni_config.with_speech_generator:
            self.add_speech_generator()
        self.stage = 1

    # ---- construction & freezing ----------------------------------------------------------------
    def add_speech_generator(self) -> CTCSpeechGenerator:
        cfg = self.omni_config
        attn = getattr(self.llm.config, "_attn_implementation", None) or "sdpa"
        if attn not in ("eager", "sdpa", "flash_attention_2"):
            attn = "sdpa"
        self.speech_generator = CTCSpeechGenerator(self.llm.config, cfg.ctc_decoder_config,
                                                   cfg.ctc_upsample_factor, cfg.unit_vocab_size, attn)
        self.omni_config = cfg.replace(with_speech_generator=True)
        return self.speech_generator

    def set_stage(self, stage: int, freeze_backbone: bool = False) -> "OmniSpeechModel":
        """requires_grad per stage. Stage 1: projector + LLM (LLM frozen with freeze_backbone).
        Stage 2: the speech decoder only. The encoder is frozen in both."""
        if stage not in (1, 2):
            raise ValueError(f"stage={stage!r}: allowed 1 or 2")
        if stage == 2 and self.speech_generator is None:
            raise ValueError("stage 2 needs a speech generator (OmniConfig.with_speech_generator)")
        self.stage = stage
        self.requires_grad_(False)
        if stage == 1:
            self.speech_projector.requires_grad_(True)
            self.llm.requires_grad_(not freeze_backbone)
        else:
            self.speech_generator.requires_grad_(True)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "OmniSpeechModel":
        super().train(mode)
        if self.stage == 2:
            # Frozen parts run as in inference: no dropout, the same states every epoch.
            self.speech_projector.eval()
            self.llm.eval()
        return self

    def gradient_checkpointing_enable(self) -> None:
        enable_activation_checkpointing(self.llm, {"use_reentrant": False})
        self.llm.config.use_cache = False

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    # ---- the shared front half --------------------------------------------------------------------
    def encode_speech(self, speech_mel: torch.Tensor, speech_frames: torch.Tensor):
        """mel -> projected speech [B, S, llm_dim] and its lengths [B]."""
        states, lengths = self.speech_encoder(speech_mel, speech_frames)
        return self.speech_projector(states, lengths)

    def embed_inputs(self, input_ids, attention_mask, labels, speech_mel, speech_frames):
        speech, speech_len = self.encode_speech(speech_mel, speech_frames)
        tokens = self.llm.get_input_embeddings()(input_ids.clamp(min=0))
        return splice_speech(tokens, input_ids, attention_mask, labels, speech, speech_len)

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, speech_mel: Optional[torch.Tensor] = None,
                speech_frames: Optional[torch.Tensor] = None, units: Optional[torch.Tensor] = None,
                response_states: Optional[torch.Tensor] = None,
                response_lengths: Optional[torch.Tensor] = None, **_: object) -> dict:
        """Stage 1: text cross-entropy. Stage 2: CTC on units (optionally from cached states)."""
        if self.stage == 2:
            if response_states is None:
                response_states, response_lengths = self.response_hidden_states(
                    input_ids, attention_mask, labels, speech_mel, speech_frames)
            loss_sum, n, n_infeasible = self.speech_generator.ctc_loss_terms(response_states, response_lengths, units)
            loss_sum = loss_sum * self.omni_config.ctc_loss_weight
            # answers no CTC alignment exists for are out of the loss and of n (ctc_loss_terms)
            return {"loss": loss_sum / n.clamp(min=1), "loss_sum": loss_sum, "n_targets": n,
                    "n_infeasible": n_infeasible}
        loss_sum, n = self.text_loss_sum(input_ids, attention_mask, labels, speech_mel, speech_frames)
        return {"loss": loss_sum / n.clamp(min=1), "loss_sum": loss_sum, "n_targets": n}

    def text_loss_sum(self, input_ids, attention_mask, labels, speech_mel, speech_frames):
        embeds, mask, labels = self.embed_inputs(input_ids, attention_mask, labels, speech_mel, speech_frames)
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        # Only supervised positions go through the LM head: the response is ~15 % of the
        # sequence, and [B, L, 128256] logits would dominate activation memory.
        targets = labels[:, 1:]
        keep = targets.ne(IGNORE_INDEX)
        logits = self.llm.lm_head(hidden[:, :-1][keep])
        loss_sum = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return loss_sum, keep.sum()

    @torch.no_grad()
    def response_hidden_states(self, input_ids, attention_mask, labels, speech_mel, speech_frames):
        """Last-layer (post-norm) LLM states of each response, one sequence per supervised answer
        (a dialogue row gives one per turn, in order), right padded: ([N, T, D], [N])."""
        embeds, mask, labels = self.embed_inputs(input_ids, attention_mask, labels, speech_mel, speech_frames)
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        spans = response_spans(labels, self.omni_config.ctc_hidden_source)
        lengths = torch.tensor([end - start for _, start, end in spans], dtype=torch.long, device=hidden.device)
        out = hidden.new_zeros(len(spans), int(lengths.max()) if spans else 0, hidden.shape[-1])
        for j, (row, start, end) in enumerate(spans):
            out[j, : end - start] = hidden[row, start:end]
        return out, lengths

    # ---- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, speech_mel: torch.Tensor, speech_frames: torch.Tensor, prompt_ids: list[int],
                 max_new_tokens: int = 256, eos_token_ids: Optional[list[int]] = None,
                 with_units: bool = True, on_token=None) -> dict:
        """Greedy answer to one spoken instruction, with KV cache; then units from the decoder.

        prompt_ids holds one SPEECH_TOKEN_INDEX. The states kept for the decoder are the ones that
        predict each generated token (the last prompt state, then each new token's state).
        `on_token(token_id, state)` is called per step (used by streaming unit output).
        """
        eos = set(eos_token_ids or [])
        ids = torch.tensor([prompt_ids], device=speech_mel.device)
        embeds, mask, _ = self.embed_inputs(ids, torch.ones_like(ids), None, speech_mel[:1], speech_frames[:1])
        cache = DynamicCache(config=self.llm.config)
        with_cache = cache_kwargs(self.llm.model, cache)     # filled in place by each call
        out = self.llm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **with_cache)
        state = out.last_hidden_state[:, -1]
        tokens, states = [], []
        for _ in range(max_new_tokens):
            token = int(self.llm.lm_head(state).argmax(-1))
            tokens.append(token)
            states.append(state[0])
            if on_token is not None:
                on_token(token, state[0])
            if token in eos:
                break
            mask = F.pad(mask, (0, 1), value=1)
            emb = self.llm.get_input_embeddings()(torch.tensor([[token]], device=ids.device))
            out = self.llm.model(inputs_embeds=emb, attention_mask=mask, use_cache=True, **with_cache)
            state = out.last_hidden_state[:, -1]
        result = {"token_ids": tokens, "states": torch.stack(states) if states else None, "units": None}
        if with_units and self.speech_generator is not None and states:
            result["units"] = self.speech_generator.predict(result["states"])
        return result


def response_spans(labels: torch.Tensor, source: str = "predicting") -> list[tuple[int, int, int]]:
    """(row, start, end) of the LLM states that feed the CTC decoder, one span per supervised
    answer: "predicting" takes the state before each supervised token (c_i = M(S, Y<i)),
    "at_token" the token's own. Answers of a dialogue are separated by unsupervised prompt tokens,
    so each contiguous run is one turn."""
    keep = labels.ne(IGNORE_INDEX)
    if source == "predicting":
        keep = F.pad(keep[:, 1:], (0, 1), value=False)          # the state at p predicts p + 1
    spans = []
    for row in range(keep.shape[0]):
        where = keep[row].nonzero().flatten().tolist()
        start = prev = None
        for p in where:
            if start is None:
                start = p
            elif p != prev + 1:
                spans.append((row, start, prev + 1))
                start = p
            prev = p
        if start is not None:
            spans.append((row, start, prev + 1))
    return spans


__all__ = ["OmniSpeechModel", "ctc_collapse", "response_spans", "SPEECH_TOKEN_INDEX"]
