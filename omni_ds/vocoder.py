"""Unit HiFi-GAN with duration predictor, in plain PyTorch, to listen to predicted units.

Reads fairseq's unit-vocoder files as released for mHuBERT km1000 units (`g_00500000` holding
{"generator": state_dict} with legacy weight-norm names, plus its `config.json`) without fairseq.
Weight norm is folded once at load time (w = g * v / ||v||, norm over every dim but 0), which is
what fairseq's `remove_weight_norm()` leaves behind for inference.

Architecture (speech-resynthesis CodeGenerator, single speaker, no f0): unit embedding ->
duration predictor (at inference: repeat each unit clamp(round(exp(d) - 1), 1) times) ->
conv_pre -> per stage LeakyReLU(0.1), ConvTranspose upsample, mean of multi-receptive-field
residual blocks -> LeakyReLU(0.01) -> conv_post -> tanh. 16 kHz output, code_hop_size samples/unit.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """HiFi-GAN residual block type "1": per dilation, two convs with a residual connection."""

    def __init__(self, channels: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2)
                                    for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2)
                                    for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, 0.1)), 0.1))
        return x


class DurationPredictor(nn.Module):
    """Two conv+ReLU+LayerNorm blocks and a linear head: log(duration + 1) per unit."""

    def __init__(self, dim: int, hidden: int, kernel: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(dim, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU())
        self.ln1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:      # x [B, C, T] -> [B, T]
        x = self.ln1(self.conv1(x).transpose(1, 2))
        x = self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2))
        return self.proj(x).squeeze(-1)


class UnitVocoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        if str(cfg.get("resblock", "1")) != "1":
            raise ValueError(f"vocoder config resblock={cfg.get('resblock')!r}: only type '1' is implemented")
        for unsupported in ("f0", "multispkr", "embedder_params"):
            if cfg.get(unsupported):
                raise ValueError(f"vocoder config sets {unsupported!r}: only the single-speaker, "
                                 "unit-only vocoder (as released for mHuBERT km1000) is supported")
        self.cfg = cfg
        self.dict = nn.Embedding(cfg["num_embeddings"], cfg["embedding_dim"])
        dp = cfg.get("dur_predictor_params")
        self.dur_predictor = (DurationPredictor(dp["encoder_embed_dim"], dp["var_pred_hidden_dim"],
                                                dp["var_pred_kernel_size"]) if dp else None)
        ch = cfg["upsample_initial_channel"]
        self.conv_pre = nn.Conv1d(cfg["model_in_dim"], ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"])):
            self.ups.append(nn.ConvTranspose1d(ch // 2 ** i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2))
            for rk, rd in zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"]):
                self.resblocks.append(ResBlock(ch // 2 ** (i + 1), rk, rd))
        self.conv_post = nn.Conv1d(ch // 2 ** len(self.ups), 1, 7, padding=3)
        self.n_kernels = len(cfg["resblock_kernel_sizes"])
        self.sampling_rate = int(cfg.get("sampling_rate", 16000))

    @torch.no_grad()
    def forward(self, units: list[int] | torch.Tensor, dur_prediction: bool = True) -> torch.Tensor:
        """Unit ids -> waveform [samples] in [-1, 1]; negative ids are dropped (as fairseq does)."""
        code = torch.as_tensor(units, dtype=torch.long, device=self.dict.weight.device).flatten()
        code = code[code >= 0][None]
        x = self.dict(code).transpose(1, 2)                   # [1, C, T]
        if dur_prediction:
            if self.dur_predictor is None:
                raise ValueError("this vocoder has no duration predictor; use dur_prediction=False")
            dur = torch.clamp(torch.round(torch.exp(self.dur_predictor(x)) - 1).long(), min=1)
            x = torch.repeat_interleave(x, dur.flatten(), dim=2)
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, 0.1))
            blocks = self.resblocks[i * self.n_kernels:(i + 1) * self.n_kernels]
            x = sum(block(x) for block in blocks) / self.n_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x))).flatten()


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace legacy `*.weight_g` / `*.weight_v` pairs by the plain `*.weight` they define."""
    out = {}
    for name, t in state.items():
        if name.endswith(".weight_g"):
            continue
        if name.endswith(".weight_v"):
            base = name[: -len("_v")]
            g = state[base + "_g"]
            norm = t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))
            out[base] = g * t / norm
        else:
            out[name] = t
    return out


def load_vocoder(folder_or_ckpt: str | Path, config: str | Path | None = None) -> UnitVocoder:
    """Folder holding the checkpoint (`g_*` or `model.pt`) and `config.json`, or explicit paths."""
    path = Path(folder_or_ckpt)
    if path.is_dir():
        ckpts = sorted(path.glob("g_*")) or sorted(path.glob("*.pt"))
        if not ckpts:
            raise FileNotFoundError(f"{path}: no vocoder checkpoint (g_* or *.pt)")
        ckpt, config = ckpts[-1], config or path / "config.json"
    else:
        ckpt = path
    if config is None or not Path(config).exists():
        raise FileNotFoundError(f"vocoder config.json not found (given: {config})")
    cfg = json.loads(Path(config).read_text())
    # The released generator checkpoint is a dict of tensors: weights_only loading suffices.
    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    state = state.get("generator", state)
    model = UnitVocoder(cfg)
    missing, unexpected = model.load_state_dict(fold_weight_norm(state), strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt}: weights do not match config {config}: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    return model.eval()
