"""The CTC speech decoder ("speech_generator", type "ctc").

LLM hidden states of the response -> each repeated lambda times (uniform assignment) ->
input_proj -> causal Llama decoder layers (RoPE settings of the LLM, full multi-head attention)
-> output_proj over unit_vocab_size + 1 classes, the last one being the CTC blank.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, PretrainedConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from omni_ds.constants import IGNORE_INDEX
from omni_ds.hf_compat import layer_hidden_states, llama_rope_kwargs, rope_parameters
from omni_ds.model.ctc_lengths import ctc_infeasible, padded_repeats
from omni_ds.model.omni_config import parse_ctc_decoder_config

_INHERITED_KEYS = ("max_position_embeddings", "rms_norm_eps")


def decoder_llama_config(llm_config: PretrainedConfig, spec: str, attn_implementation: str) -> LlamaConfig:
    """A Llama config for the decoder layers that inherits the LLM's RoPE and norm settings."""
    layers, width, heads, ffn = parse_ctc_decoder_config(spec)
    inherited = {k: getattr(llm_config, k) for k in _INHERITED_KEYS if hasattr(llm_config, k)}
    inherited.update(llama_rope_kwargs(rope_parameters(llm_config)))
    cfg = LlamaConfig(hidden_size=width, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, hidden_act="silu",
                      attention_bias=False, mlp_bias=False, vocab_size=1, **inherited)
    cfg._attn_implementation = attn_implementation
    return cfg


def upsample_assignment(n_states: torch.Tensor, n_out: torch.Tensor, max_out: int) -> torch.Tensor:
    """Output position t of row b takes state floor(t * n_b / L_b); [B, max_out] indices."""
    t = torch.arange(max_out, device=n_states.device)[None, :]
    idx = torch.div(t * n_states[:, None], n_out[:, None].clamp(min=1), rounding_mode="floor")
    return idx.clamp(max=(n_states[:, None] - 1).clamp(min=0))


def ctc_collapse(path: list[int], blank: int) -> list[int]:
    """Greedy CTC post-processing: merge repeats, then drop blanks."""
    units, prev = [], None
    for p in path:
        if p != prev and p != blank:
            units.append(p)
        prev = p
    return units


class CTCSpeechGenerator(nn.Module):
    def __init__(self, llm_config: PretrainedConfig, spec: str = "(2,4096,32,11008)",
                 upsample_factor: int = 25, unit_vocab_size: int = 1000,
                 attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = decoder_llama_config(llm_config, spec, attn_implementation)
        self.upsample_factor = upsample_factor
        self.unit_vocab_size = unit_vocab_size
        self.blank = unit_vocab_size                  # the last class
        self.input_proj = nn.Linear(llm_config.hidden_size, self.config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(self.config, i)
                                    for i in range(self.config.num_hidden_layers))
        self.rotary_emb = LlamaRotaryEmbedding(self.config)
        self.output_proj = nn.Linear(self.config.hidden_size, unit_vocab_size + 1)

    # ---- shapes --------------------------------------------------------------------------------
    def upsample(self, states: torch.Tensor, n_states: torch.Tensor,
                 n_units: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, N, D] (n_states valid per row) -> ([B, L, D], out lengths [B]).

        L_b = max(lambda * n_b, n_units_b): with targets longer than lambda * n, CTC would be
        infeasible, so the output is stretched to the target length (as the official code does).
        Repeated neighbouring units still need L_b >= units + repeats: omni_ds.model.ctc_lengths.
        """
        n_out = n_states * self.upsample_factor
        if n_units is not None:
            n_out = torch.maximum(n_out, n_units)
        max_out = int(n_out.max()) if n_out.numel() else 0
        idx = upsample_assignment(n_states, n_out, max_out)
        x = torch.gather(states, 1, idx[..., None].expand(-1, -1, states.shape[-1]))
        valid = torch.arange(max_out, device=states.device)[None, :] < n_out[:, None]
        return x * valid[..., None].to(x.dtype), n_out

    def forward(self, states: torch.Tensor, n_states: torch.Tensor,
                n_units: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit logits [B, L, V+1] and their valid lengths [B]."""
        x, n_out = self.upsample(states, n_states, n_units)
        x = self.input_proj(x.to(self.input_proj.weight.dtype))
        b, length, _ = x.shape
        positions = torch.arange(length, device=x.device)[None, :].expand(b, -1)
        cos_sin = self.rotary_emb(x, positions)
        mask = self._causal_padding_mask(n_out, length, x.dtype, x.device)
        for layer in self.layers:
            x = layer_hidden_states(layer(x, attention_mask=mask, position_ids=positions,
                                          position_embeddings=cos_sin))
        return self.output_proj(x), n_out

    @staticmethod
    def _causal_padding_mask(lengths, length, dtype, device) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        allowed = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] < lengths[:, None, None])
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    # ---- loss ----------------------------------------------------------------------------------
    def ctc_loss_sum(self, states: torch.Tensor, n_states: torch.Tensor,
                     units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed CTC loss, number of target units) of the feasible answers (ctc_loss_terms)."""
        loss, n_units, _ = self.ctc_loss_terms(states, n_states, units)
        return loss, n_units

    def ctc_loss_terms(self, states: torch.Tensor, n_states: torch.Tensor,
                       units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed CTC loss over the batch, the number of target units, and the number of answers
        left out because no alignment exists (omni_ds.model.ctc_lengths) (REFERENCE.md).

        log-softmax in fp32, blank = unit_vocab_size, zero_infinity; targets padded with -100.
        The caller divides by the target count of the batch (or of the whole optimizer step).
        An infeasible answer's loss is +inf; zero_infinity makes it 0 with no gradient, and its
        units are left out of the count, so it neither trains nor dilutes the mean of the rest.
        """
        n_units = units.ne(IGNORE_INDEX).sum(-1)
        logits, n_out = self(states, n_states, n_units)
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)     # [L, B, V+1]
        targets = units.clamp(min=0)
        # per answer, then summed: reduction="sum" is this same sum, so feasible batches give
        # the same value as before, bit for bit
        losses = F.ctc_loss(log_probs, targets, n_out, n_units, blank=self.blank,
                            reduction="none", zero_infinity=True)
        infeasible = ctc_infeasible(n_states, n_units, padded_repeats(units), self.upsample_factor)
        return losses.sum(), n_units[~infeasible].sum(), infeasible.sum()

    # ---- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, states: torch.Tensor) -> list[int]:
        """states [N, D] of one response -> unit ids (argmax, merge repeats, drop blanks)."""
        if states.shape[0] == 0:
            return []
        logits, n_out = self(states[None], torch.tensor([states.shape[0]], device=states.device))
        path = logits[0, : int(n_out[0])].argmax(-1).tolist()
        return ctc_collapse(path, self.blank)
