"""The parts bench/bench_gpu.py runs, each returning a dict of figures: synthetic data, a
random-weight LLaMA-Omni folder at a model shape, training steps of either stage through the real
Trainer + DeepSpeed (ZeRO-2, one device), and unit extraction in fp32 vs bf16 / fp16.

Everything is built here, offline: the clips are synthetic (their content does not change a
step's cost; their lengths set the trimmed encoder's), the tokenizer is omni_ds's tiny offline
Llama-3-style one (the LLM keeps Llama-3's 128256-row embedding and lm_head, so the lm_head and
loss cost what they cost at full size), and the weights are N(0, 0.02) at the shape's widths.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
SR = 16000

WHISPER_LARGE_V3_ENCODER = dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                                encoder_ffn_dim=5120, max_source_positions=1500)
WHISPER_TINY_ENCODER = dict(num_mel_bins=128, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                            encoder_ffn_dim=128, max_source_positions=1500)
LLAMA_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=None, tie_word_embeddings=False)   # vocab: the tokenizer's


def shapes() -> dict:
    """Model shapes: LLM preset (omni_ds.train.memory.LLM_PRESETS), encoder, projector and decoder
    widths, the micro batch and recompute the stage-1 steps use. `layers`: "all", or "fit" (as
    many as the memory estimate fits on the device, see fit_layers)."""
    from omni_ds.train.memory import LLM_PRESETS
    return {
        "tiny": dict(llm=LLAMA_TINY, whisper=WHISPER_TINY_ENCODER, projector=128, decoder="(2,64,4,128)",
                     micro=2, recompute=False, layers="all"),
        "llama-3.2-1b": dict(llm=LLM_PRESETS["llama-3.2-1b"], whisper=WHISPER_LARGE_V3_ENCODER, projector=2048,
                             decoder="(2,4096,32,11008)", micro=8, recompute=False, layers="all"),
        "llama-3.1-8b": dict(llm=LLM_PRESETS["llama-3.1-8b"], whisper=WHISPER_LARGE_V3_ENCODER, projector=2048,
                             decoder="(2,4096,32,11008)", micro=8, recompute=True, layers="fit"),
    }


# ---- data -------------------------------------------------------------------------------------------
def write_data(work: Path, n_clips: int, words: tuple[int, int] = (60, 80), seed: int = 0) -> dict:
    """n_clips synthetic 16 kHz clips of 3-10 s (voiced-like: a gliding harmonic tone under an
    envelope, plus noise) and their pool manifest; answers of `words` (min, max) words (60-80:
    ~100 tokens, an InstructS2S-like answer), 8 units per word."""
    import numpy as np
    import soundfile as sf
    from omni_ds.train.demo import ANSWERS
    rng = np.random.default_rng(seed)
    vocab = " ".join(ANSWERS).replace(".", "").split()
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rows, audio_s = [], 0.0
    for i in range(n_clips):
        n = int(rng.uniform(3.0, 10.0) * SR)
        t = np.arange(n) / SR
        f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
        wave = 0.2 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(n)
        path = folder / f"clip{i:03d}.wav"
        sf.write(path, wave.astype(np.float32), SR, subtype="FLOAT")
        answer = " ".join(rng.choice(vocab, size=int(rng.integers(words[0], words[1] + 1)))) + "."
        units = rng.integers(0, 1000, size=8 * len(answer.split())).tolist()
        rows.append({"id": f"clip{i:03d}", "speech_instruction_path": str(path), "text_instruction": "",
                     "text_response": answer, "speech_response_path": str(path), "units": units})
        audio_s += n / SR
    (folder / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"clips": n_clips, "audio_seconds": round(audio_s, 1), "pool": str(folder / "pool.jsonl")}


def _pool(work: Path) -> list[dict]:
    return [json.loads(line) for line in open(work / "data" / "pool.jsonl")]


def tokenizer(work: Path):
    from transformers import AutoTokenizer
    from omni_ds.tiny.tokenizer import write_tiny_tokenizer
    folder = work / "tokenizer"
    if not (folder / "tokenizer.json").exists():
        write_tiny_tokenizer(folder)
    return AutoTokenizer.from_pretrained(str(folder))


# ---- model folders ------------------------------------------------------------------------------------
def fit_layers(preset: dict, device_gib: float, fill: float, micro: int, seq_len: int, recompute: bool) -> int:
    """The most LLM layers whose stage-1 estimate (omni_ds.train.memory, ZeRO-2, one device, bf16)
    stays under fill x the device's memory."""
    from omni_ds.train import memory as mem
    best = 1
    for layers in range(1, preset["num_hidden_layers"] + 1):
        shape = mem.shape_for({**preset, "num_hidden_layers": layers})
        plan = mem.estimate(shape, mem.RunSettings(1, 1, micro, seq_len, "bf16"), mem.MemorySetup(2, recompute))
        if plan.total_gib <= fill * device_gib:
            best = layers
    return best


def _llama_config(preset: dict, tok, layers: int):
    from transformers import LlamaConfig
    eos = [tok.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    return LlamaConfig(
        vocab_size=preset["vocab_size"] or len(tok), hidden_size=preset["hidden_size"],
        intermediate_size=preset["intermediate_size"], num_hidden_layers=layers,
        num_attention_heads=preset["num_attention_heads"], num_key_value_heads=preset["num_key_value_heads"],
        max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5, tie_word_embeddings=preset["tie_word_embeddings"], bos_token_id=tok.bos_token_id,
        eos_token_id=eos)


def prepare(work: Path, shape_name: str, device: str, precision: str, fill: float = 0.75) -> dict:
    """A LLaMA-Omni folder (no speech decoder: stage 2 adds a seeded one) of random weights at the
    shape's widths, built on `device` (fast init) and written in the training precision. "fit"
    shapes keep a 25 % margin (fill 0.75) for what the estimate leaves out, e.g. torch AdamW's
    foreach temporaries (one fp32 copy of the parameters at the update)."""
    import torch
    from transformers import LlamaForCausalLM, WhisperConfig
    from omni_ds.model.checkpoint import save_omni_folder
    from omni_ds.model.omni_config import OmniConfig
    from omni_ds.model.omni_model import OmniSpeechModel
    from omni_ds.precision import torch_dtype
    t0 = time.perf_counter()
    spec, tok = shapes()[shape_name], tokenizer(work)
    layers = spec["llm"]["num_hidden_layers"]
    device_gib = _device_gib(device)
    if spec["layers"] == "fit" and device_gib is not None:
        layers = fit_layers(spec["llm"], device_gib, fill, spec["micro"], 512, spec["recompute"])
    omni = OmniConfig(encoder_mode="padded", with_speech_generator=False,
                      speech_projector_hidden_size=spec["projector"], ctc_decoder_config=spec["decoder"])
    torch.manual_seed(0)
    with torch.device(device):
        llm = LlamaForCausalLM(_llama_config(spec["llm"], tok, layers))
        model = OmniSpeechModel(omni, WhisperConfig(**spec["whisper"]), llm)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:            # matrices and tables; norms keep their ones, biases zeros
                    p.normal_(0.0, 0.02)
    folder = work / f"model_{shape_name}"
    save_omni_folder(folder, model, tok, dtype=torch_dtype(precision))
    params = {part: sum(p.numel() for p in getattr(model, part).parameters())
              for part in ("speech_encoder", "speech_projector", "llm")}
    return {"folder": str(folder), "llm_layers": layers, "llm_layers_full": spec["llm"]["num_hidden_layers"],
            "device_gib": device_gib, "params": params, "seconds": round(time.perf_counter() - t0, 1)}


def _device_gib(device: str) -> Optional[float]:
    import torch
    if device != "cuda":
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2 ** 30


# ---- training steps ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_config(work: Path, run: dict, peak_tflops: Optional[float]) -> dict:
    """The training config of one measured run (`run`: shape, stage, encoder, attn, micro, steps,
    warmup, recompute, precision): exactly micro x (warmup + steps) samples, one epoch, no
    checkpoints, evaluation or logging sinks."""
    n = run["micro"] * (run["warmup"] + run["steps"])
    pool = _pool(work)
    if len(pool) < n:
        raise ValueError(f"{len(pool)} clips in the pool, the run needs {n}")
    out = work / "runs" / run["name"].replace(":", "_")
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in pool[:n]))
    return {
        "stage": run["stage"], "precision": run["precision"], "seed": 0, "output_dir": str(out / "out"),
        "model": {"init_from": str(work / f"model_{run['shape']}"), "attn_implementation": run["attn"],
                  "gradient_checkpointing": run["recompute"],
                  # a folder without a decoder does not say its shape: the shape's own (stage 2)
                  "omni": {"encoder_mode": run["encoder"], "ctc_decoder_config": shapes()[run["shape"]]["decoder"]}},
        "data": {"train_manifest": str(manifest), "cache_in_memory": True},
        "batch": {"per_device_train_batch_size": run["micro"], "global_batch_size": run["micro"]},
        "optim": {"max_steps": run["warmup"] + run["steps"], "learning_rate": 1e-5, "warmup_ratio": 0.0},
        "checkpoint": {"every_steps": 0, "save_final": False},
        "eval": {"every_steps": 0},
        "log": {"every_steps": 1000, "report_to": [], "progress_bar": False, "peak_tflops": peak_tflops},
    }


def _dist_env() -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "1"})


def _median(rows: list[dict], key: str) -> Optional[float]:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def train_steps(work: Path, run: dict, peak_tflops: Optional[float] = None) -> dict:
    """warmup + steps optimizer steps through Trainer.train_step(); medians of the measured steps'
    own scalars (the Trainer's FLOPs model gives mfu / hfu), peak memory, and the memory estimate
    of the same run for comparison."""
    import torch
    from omni_ds.train.config import build_config
    from omni_ds.train.metrics import max_memory_gib
    from omni_ds.train.trainer import Trainer
    cfg = build_config(stage_config(work, run, peak_tflops))
    if "MASTER_PORT" not in os.environ:
        _dist_env()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, str(REPO / "ds_configs" / "zero2.json"))
    build_s = time.perf_counter() - t0
    rows = [trainer.train_step() for _ in range(run["warmup"] + run["steps"])]
    trainer.close()
    measured = rows[run["warmup"]:]
    out = {k: _median(measured, k) for k in ("step_time_s", "tokens_per_s", "samples_per_s", "mfu", "hfu",
                                             "tflops_per_device", "decoder_tokens_per_s")}
    out.update({"max_memory_gib": max_memory_gib(), "build_seconds": round(build_s, 1),
                "final_loss": rows[-1]["loss"], "steps": run["steps"], "warmup": run["warmup"],
                "micro_batch": run["micro"], "peak_tflops": trainer.peak_tflops,
                "llm_layers": trainer.model.llm.config.num_hidden_layers,
                "attn": trainer.model.llm.config._attn_implementation,
                "encoder_attn": trainer.model.speech_encoder.encoder.config._attn_implementation,
                "params": trainer.info["params"]})
    if out["tokens_per_s"] and out["samples_per_s"]:
        out["llm_positions_per_sample"] = out["tokens_per_s"] / out["samples_per_s"]
    out["memory_measure"] = "torch.cuda.max_memory_allocated" if torch.cuda.is_available() else "host peak RSS"
    if torch.cuda.is_available():
        out["max_reserved_gib"] = torch.cuda.max_memory_reserved() / 2 ** 30
    out["estimate_gib"] = _estimate_gib(cfg, run, int(max(trainer.train_set.lengths)))
    del trainer, rows
    return out


def _estimate_gib(cfg, run: dict, longest: int) -> float:
    """omni_ds.train.memory's estimate of this very run (what the dry run would print)."""
    from omni_ds.train import memory as mem
    from omni_ds.train.dry_run import model_shape
    shape = model_shape(cfg)[0]
    plan = mem.estimate(shape, mem.RunSettings(run["stage"], 1, run["micro"], longest, run["precision"]),
                        mem.MemorySetup(2, run["recompute"]))
    return round(plan.total_gib, 2)


def gemm_tflops(dtype_name: str, n: int = 1024, reps: int = 8) -> float:
    """Measured dense GEMM throughput of this CPU in `dtype_name`: the peak the tiny run's MFU is
    taken against."""
    from omni_ds.train.flops import measured_gemm_tflops
    return measured_gemm_tflops(dtype_name, n, reps)


# ---- unit extraction -----------------------------------------------------------------------------------------
def units(work: Path, device: str, full_size: bool, n_clusters: int, n_clips: int, passes: int = 3,
          batch_seconds: float = 80.0) -> dict:
    """audio-s/s of the batched extractor in fp32, bf16, fp16 on `device`, and the share of frames
    whose unit equals fp32's. Random mHuBERT weights (full-size Base, or the tiny parity shape);
    the centroids are frames of the fp32 features (a quantizer whose cells hold real frames, as a
    fitted k-means' do; random centroids would leave every frame near a tie)."""
    import numpy as np
    import torch
    from omni_ds.data.audio import load_audio
    from omni_ds.tiny.hubert import write_tiny_hubert
    from omni_ds.units.extract import FeatureExtractor, UnitExtractor
    from omni_ds.units.hubert import load_hubert
    arch = dict(conv_dim=512, width=768, heads=12, ffn=3072, layers=12) if full_size else {}
    model = load_hubert(write_tiny_hubert(work / "hubert.pt", seed=0, **arch))
    waves = [load_audio(r["speech_instruction_path"]) for r in _pool(work)[:n_clips]]
    audio_s = sum(len(w) for w in waves) / SR
    feats = torch.cat(FeatureExtractor(model, device, batch_seconds).features(waves))
    pick = np.random.default_rng(0).choice(len(feats), size=min(n_clusters, len(feats)), replace=False)
    centers = feats[pick].numpy()
    out: dict = {"audio_seconds": round(audio_s, 1), "clips": len(waves), "frames": len(feats),
                 "clusters": len(centers), "width": model.spec.embed_dim, "batch_seconds": batch_seconds}
    ref = None
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        try:
            ex = UnitExtractor(FeatureExtractor(model, device, batch_seconds, dtype), centers, dedup=False)
        except ValueError as e:                 # reduced precision refused on this device
            out[name] = {"refused": str(e)}
            continue
        seconds, got = _timed_units(ex, waves, device, passes)
        ref = got if ref is None else ref
        same = sum(int((a == b).sum()) for a, b in zip(ref, got))
        out[name] = {"audio_s_per_s": audio_s / seconds, "seconds": seconds,
                     "agreement_vs_fp32": same / sum(len(a) for a in ref)}
    return out


def _timed_units(ex, waves: list, device: str, passes: int) -> tuple[float, list]:
    """Best of `passes` passes over all waves (one warm-up pass on the first clip before)."""
    import torch
    ex.frame_units(waves[:1])
    best, got = float("inf"), None
    for _ in range(passes):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        got = ex.frame_units(waves)             # CPU tensors: the device has finished
        best = min(best, time.perf_counter() - t)
    return best, got
