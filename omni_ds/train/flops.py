"""A FLOPs model of one training step, and MFU from it.

Matmul FLOPs per token of a dense network with N matmul parameters: forward 2N; backward 2N for
the activation gradients (needed whenever something upstream trains) + 2N for the weight
gradients (when the module itself trains); activation recompute repeats the forward (+2N).
So a trained module costs 6N per token, a frozen module on the gradient path 4N, a frozen module
off it (the Whisper encoder; the LLM in stage 2) 2N. Attention score FLOPs are left out, as in the
"6 x params x tokens" convention; the embedding lookup is not a matmul and is not counted.

MFU counts model FLOPs only (no recompute) against the device's peak dense bf16 throughput;
HFU adds the recompute. Stage 1 padded mode per clip: the encoder runs on 1500 frames
(2 x 0.64 B x 1500 = 1.9 TFLOP), the LLM on ~300 speech + text positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Peak dense bf16 tensor throughput per device, TFLOPS (vendor data sheets, no sparsity).
PEAK_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0, "A6000": 154.8,
    "4090": 165.2, "A10G": 70.0, "A10": 125.0, "V100": 125.0, "L4": 121.0, "MI300X": 1307.0,
}


def measured_gemm_tflops(dtype_name: str = "fp32", n: int = 1024, reps: int = 10) -> float:
    """Dense n x n GEMM throughput of this process's device (CPU) in `dtype_name`, best of `reps`:
    the peak a CPU run's MFU is taken against (no data sheet gives one for a shared CPU)."""
    import time
    from omni_ds.precision import torch_dtype
    a = torch.randn(n, n).to(torch_dtype(dtype_name))
    b = torch.randn(n, n).to(torch_dtype(dtype_name))
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e12


def guess_peak_tflops(device_name: Optional[str]) -> Optional[float]:
    if not device_name:
        return None
    name = device_name.upper()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):   # "L40S" before "L40"
        if key in name:
            return PEAK_TFLOPS[key]
    return None


@dataclass
class FlopsModel:
    """Matmul parameter counts of the parts and which of them train."""
    encoder_params: int
    projector_params: int
    llm_params: int                 # matmul parameters (input embedding excluded, lm_head included)
    decoder_params: int = 0
    stage: int = 1
    llm_trainable: bool = True      # False under freeze_backbone
    recompute: bool = False         # gradient checkpointing of the LLM (stage 1) / decoder (stage 2)
    encoder_padded: bool = True
    upsample: int = 25
    ds_rate: int = 5

    def positions(self, batch: dict) -> dict:
        """Encoder frames, projector outputs, LLM positions and decoder positions in a batch.
        A stage-2 batch of cached states (`response_states`) runs the decoder only."""
        if "response_states" in batch:
            n = batch["response_lengths"].to(torch.long)
            units = batch["units"].ne(-100).sum(-1)
            dec = int(torch.maximum(n * self.upsample, units).sum())
            return {"encoder_frames": 0, "speech_positions": 0, "llm_positions": 0,
                    "samples": int(batch["sample_index"].shape[0]), "response_tokens": int(n.sum()),
                    "decoder_positions": dec}
        mel = batch["speech_mel"]                      # one row per speech segment
        if self.encoder_padded:
            enc_frames = torch.full((mel.shape[0],), mel.shape[-1] // 2)
        else:
            enc_frames = (batch["speech_frames"].to(torch.long) + 1) // 2
        speech_pos = enc_frames // self.ds_rate
        # one placeholder per segment, each replaced by its segment's positions
        text = batch["attention_mask"].to(torch.long).sum() - mel.shape[0]
        out = {"encoder_frames": int(enc_frames.sum()), "speech_positions": int(speech_pos.sum()),
               "llm_positions": int(text + speech_pos.sum()), "samples": int(batch["attention_mask"].shape[0])}
        labels = batch.get("labels")
        out["response_tokens"] = int((labels != -100).sum()) if labels is not None else 0
        out["decoder_positions"] = (self.upsample * out["response_tokens"]) if self.stage == 2 else 0
        return out

    def step_flops(self, pos: dict) -> tuple[float, float]:
        """(model FLOPs, hardware FLOPs incl. recompute) for summed positions of a step."""
        enc = 2.0 * self.encoder_params * pos["encoder_frames"]
        if self.stage == 1:
            proj = 6.0 * self.projector_params * pos["speech_positions"]
            llm_mult = 6.0 if self.llm_trainable else 4.0
            llm = llm_mult * self.llm_params * pos["llm_positions"]
            rec = 2.0 * self.llm_params * pos["llm_positions"] if self.recompute else 0.0
            model = enc + proj + llm
        else:
            proj = 2.0 * self.projector_params * pos["speech_positions"]
            llm = 2.0 * self.llm_params * pos["llm_positions"]
            dec = 6.0 * self.decoder_params * pos["decoder_positions"]
            rec = 2.0 * self.decoder_params * pos["decoder_positions"] if self.recompute else 0.0
            model = enc + proj + llm + dec
        return model, model + rec


def flops_model_for(model: torch.nn.Module, stage: int, recompute: bool, encoder_padded: bool,
                    upsample: int = 25, ds_rate: int = 5) -> FlopsModel:
    counts = {"speech_encoder": 0, "projector": 0, "llm": 0, "speech_generator": 0}
    llm_trainable = False
    embed = None
    llm = getattr(model, "llm", None)
    if llm is not None and hasattr(llm, "get_input_embeddings"):
        embed = llm.get_input_embeddings().weight
    for name, p in model.named_parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        if embed is not None and p is embed:
            # tied lm_head shares this tensor and is a matmul: count it once
            tied = getattr(getattr(llm, "config", None), "tie_word_embeddings", False)
            if not tied:
                continue
        for prefix, key in (("speech_encoder.", "speech_encoder"), ("speech_projector.", "projector"),
                            ("llm.", "llm"), ("speech_generator.", "speech_generator")):
            if name.startswith(prefix):
                counts[key] += n
                if key == "llm" and p.requires_grad:
                    llm_trainable = True
    return FlopsModel(counts["speech_encoder"], counts["projector"], counts["llm"],
                      counts["speech_generator"], stage, llm_trainable, recompute, encoder_padded,
                      upsample, ds_rate)


def mfu(model_flops: float, seconds: float, world_size: int, peak_tflops: Optional[float]) -> Optional[float]:
    if not peak_tflops or seconds <= 0:
        return None
    return model_flops / (seconds * world_size * peak_tflops * 1e12)
