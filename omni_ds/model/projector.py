"""The speech projector ("linear" type): concatenate k frames, Linear -> ReLU -> Linear."""
from __future__ import annotations

import torch
from torch import nn


class SpeechProjector(nn.Module):
    def __init__(self, encoder_dim: int, llm_dim: int, k: int = 5, hidden: int = 2048):
        super().__init__()
        self.k = k
        self.linear1 = nn.Linear(encoder_dim * k, hidden)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden, llm_dim)

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, T, D], lengths [B] -> ([B, T // k, llm_dim], lengths // k)."""
        b, t, d = states.shape
        t = t - t % self.k                          # the trailing T mod k frames are dropped
        x = states[:, :t].reshape(b, t // self.k, d * self.k)
        return self.linear2(self.relu(self.linear1(x))), lengths // self.k
