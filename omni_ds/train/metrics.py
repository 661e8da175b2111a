"""Observability on rank 0: tqdm bar, TensorBoard scalars, wandb (only when asked),
`metrics.jsonl` (one line per logged step) and the JSON summary at the end."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch


def max_memory_gib() -> Optional[float]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # host RSS (Linux: KiB)
    except Exception:
        return None


class Observer:
    def __init__(self, cfg, rank: int, total_steps: int, start_step: int, run_info: dict):
        self.rank = rank
        self.active = rank == 0
        self.total = total_steps
        self.out = Path(cfg.output_dir)
        self.bar = None
        self.tb = None
        self.wandb = None
        self.history: list[dict] = []
        self.t_start = time.time()
        if not self.active:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.out / "metrics.jsonl", "a")
        if cfg.log.progress_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc=f"stage {cfg.stage}",
                            unit="step", dynamic_ncols=True)
        if "tensorboard" in cfg.log.report_to:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        if "wandb" in cfg.log.report_to:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("report_to includes 'wandb' but wandb is not installed: "
                                   "pip install wandb (or remove it from report_to)") from None
            self.wandb = wandb.init(project=cfg.log.wandb_project, name=cfg.log.run_name, config=run_info,
                                    dir=str(self.out), resume="allow")

    def log(self, step: int, scalars: dict, prefix: str = "train") -> None:
        if not self.active:
            return
        row = {"step": step, **{f"{prefix}/{k}": v for k, v in scalars.items() if v is not None}}
        self.history.append(row)
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def log_samples(self, step: int, rows: list[dict], sampling_rate: Optional[int] = None) -> None:
        """Sample answers (omni_ds.train.sample_answers): TensorBoard text per sample and, where a
        row has `audio`, TensorBoard audio and a wav under output_dir/eval_audio/; one
        metrics.jsonl line `{"step", "eval/sample_answers": [...]}` (the rows without the waveform)."""
        if not self.active or not rows:
            return
        from omni_ds.evaluation.pipeline import safe_name
        from omni_ds.train.sample_answers import audio_path, sample_markdown
        kept = []
        for row in rows:
            row = dict(row)
            audio = row.pop("audio", None)
            tag = safe_name(row["id"])
            if audio is not None and audio.numel():
                row["wav"] = str(self._write_wav(audio_path(self.out, step, row["id"]), audio, sampling_rate))
                if self.tb is not None:
                    self.tb.add_audio(f"eval_audio/{tag}", audio[None], step, sample_rate=sampling_rate)
            if self.tb is not None:
                self.tb.add_text(f"eval_answers/{tag}", sample_markdown(row), step)
            kept.append(row)
        self.jsonl.write(json.dumps({"step": step, "eval/sample_answers": kept}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            self.tb.flush()

    @staticmethod
    def _write_wav(path: Path, audio: torch.Tensor, sampling_rate: int) -> Path:
        import soundfile as sf
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), audio.numpy(), sampling_rate)
        return path

    def progress(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.1f}",
                                 refresh=False)
            self.bar.update(step - self.bar.n)      # tqdm rate-limits its own redraws

    def message(self, text: str) -> None:
        if self.active:
            if self.bar is not None:
                self.bar.write(text)
            else:
                print(text, flush=True)

    def close(self, summary: Optional[dict] = None) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.close()
        if summary is not None:
            tmp = self.out / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2, default=str))
            os.replace(tmp, self.out / "summary.json")
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.jsonl.close()
