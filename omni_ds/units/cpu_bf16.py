"""The HuBERT feature forward in bf16 on a CPU (AMX-BF16 / AVX512-BF16), for `--dtype bf16`.

Why not autocast: profiled on the full-size mHuBERT Base (torch.profiler, one core), autocast
spends half its time in copies: it re-casts every weight on every call, and a bf16 Conv1d on
[B, C, T] has oneDNN reorder its channels-last result back to [B, C, T] (as long as the conv
itself). This forward casts the weights once, keeps the conv stack time-major (channels-last
conv2d over [B, C, 1, T], no reorders) and runs the GEMMs in bf16, while the precision-critical
parts stay fp32:
  - conv 0 + its GroupNorm: the waveform is not rounded to bf16. Conv 0 has no bias and one
    input channel, so each channel's mean and variance over a row's valid frames follow from the
    10x10 covariance of the row's 10-sample windows (fp64); the GroupNorm folds into conv 0's
    weights, one fp32 GEMM per row: the 512 x T/5 tensor is written once, not three times;
  - the residual stream, every LayerNorm, the positional conv and the attention softmax
    accumulation (bf16 inputs, fp32 statistics/accumulators); GEMM outputs return to fp32 before
    each residual add.
Padding is handled as in HubertFeatureModel.forward (same frames, same masks), so batching
still changes nothing but speed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from omni_ds.units.hubert import conv_output_lengths

BF16 = torch.bfloat16


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 or AMX); without them bf16
    is emulated and slower than fp32."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):      # a torch build without the query: assume not
        return False


def _lin(layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    b = layer.bias
    return layer.weight.detach().to(BF16), None if b is None else b.detach().to(BF16)


def _norm(ln) -> tuple:
    return ln.normalized_shape, ln.weight.detach(), ln.bias.detach(), ln.eps


def _block_weights(block) -> dict:
    a, f = block.attention, block.feed_forward
    qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach().to(BF16)
    qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).detach().to(BF16)
    return {"qkv": (qkv_w, qkv_b), "out": _lin(a.out_proj), "ln1": _norm(block.layer_norm),
            "fc1": _lin(f.intermediate_dense), "fc2": _lin(f.output_dense),
            "ln2": _norm(block.final_layer_norm), "heads": a.num_heads}


class CpuBf16Forward:
    """Prepared once from a HubertFeatureModel (its fp32 weights are left as they are);
    __call__(waves, lengths) -> (features [B, T, D] fp32, frames [B]) like the model's forward."""

    def __init__(self, model):
        hf, self.spec = model.hf, model.spec
        convs = hf.feature_extractor.conv_layers
        self.w0 = convs[0].conv.weight.detach()[:, 0, :].t().contiguous()        # [k0, C] fp32
        gn = convs[0].layer_norm
        self.gn = (gn.weight.detach(), gn.bias.detach(), gn.eps)
        # (conv 0's bias, if any, cancels in its GroupNorm; the later convs keep theirs)
        self.convs = [(c.conv.weight.detach()[:, :, None, :].to(BF16).contiguous(
            memory_format=torch.channels_last), _lin(c.conv)[1]) for c in convs[1:]]
        self.proj_ln = _norm(hf.feature_projection.layer_norm)
        self.proj = _lin(hf.feature_projection.projection)
        self.pos = hf.encoder.pos_conv_embed            # fp32: cheap, and precision matters
        self.enc_ln = _norm(hf.encoder.layer_norm)
        self.blocks = [_block_weights(b) for b in hf.encoder.layers]

    def _conv0_group_norm(self, waves: torch.Tensor, n0: torch.Tensor) -> torch.Tensor:
        """gelu(GroupNorm(conv0(wave))) per row over its n0 valid frames, time-major [B, T0, C]."""
        (_, k, s), (g, beta, eps) = self.spec.conv_layers[0], self.gn
        win = waves.unfold(1, k, s)                                    # [B, T0, k], a view
        w64 = self.w0.double()
        weights, biases = [], []
        for b, n in enumerate(n0.tolist()):
            u = win[b, :n].double()
            mean = u.mean(0)
            cov = u.t() @ u / n - mean[:, None] * mean[None, :]
            mu, var = mean @ w64, ((cov @ w64) * w64).sum(0)
            scale = g.double() / torch.sqrt(var + eps)
            weights.append(w64 * scale)
            biases.append(beta.double() - mu * scale)
        # A column of ones carries the bias: bmm writes the output once (baddbmm would first
        # copy the broadcast bias into it). gelu runs on the bf16 result (a bf16 pass is cheaper).
        ones = torch.ones(*win.shape[:2], 1)
        x = torch.bmm(torch.cat([win, ones], -1),
                      torch.cat([torch.stack(weights), torch.stack(biases)[:, None, :]], 1).float())
        return F.gelu(x.to(BF16))

    def _conv_stack(self, waves: torch.Tensor, lens: list[torch.Tensor]) -> torch.Tensor:
        x = self._conv0_group_norm(waves, lens[0])
        x = x.transpose(1, 2)[:, :, None, :]             # [B, C, 1, T] in channels-last memory
        for (w, b), (_, _, s) in zip(self.convs, self.spec.conv_layers[1:]):
            x = F.gelu(F.conv2d(x, w, b, (1, s)))
        return x[:, :, 0, :].transpose(1, 2)             # [B, T, C], contiguous

    def _block(self, x: torch.Tensor, mask, w: dict) -> torch.Tensor:
        B, T, D = x.shape
        h = w["heads"]
        qkv = F.linear(x.to(BF16), *w["qkv"]).view(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        a = F.linear(a.transpose(1, 2).reshape(B, T, D), *w["out"])
        x = F.layer_norm(x + a.float(), *w["ln1"])
        f = F.linear(F.gelu(F.linear(x.to(BF16), *w["fc1"])), *w["fc2"])
        return F.layer_norm(x + f.float(), *w["ln2"])

    @torch.inference_mode()
    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor):
        lens = conv_output_lengths(lengths, self.spec.conv_layers)
        frames = lens[-1]
        x = F.layer_norm(self._conv_stack(waves.float(), lens), *self.proj_ln)
        x = F.linear(x, *self.proj).float()
        valid = torch.arange(x.shape[1])[None, :] < frames[:, None]
        x = x.masked_fill(~valid[..., None], 0.0)        # as unbatched input: zeros past the end
        x = F.layer_norm(x + self.pos(x), *self.enc_ln)
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        for w in self.blocks:
            x = self._block(x, mask, w)
        return x, frames
