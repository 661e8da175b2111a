"""Torch Dataset over a validated manifest: prompt ids + labels, log-mel, and units (stage 2).

Only records that passed validation are exposed (index i -> manifest record `indices[i]`), so
planning never decodes audio. A record that still fails when it is loaded (a file changed after
validation) follows the bad-record policy: "error" raises `DataError` naming its id and reason;
"skip" returns a failure marker in its place (`load_failed`: id and reason), which the collator
leaves out of the batch and lists under `load_failures`, so the trainer logs and counts it. No
other record stands in for it: each sample trains at most once per epoch.
"""
from __future__ import annotations

import logging

import torch

from omni_ds.data.audio import load_audio, log_mel, speech_positions
from omni_ds.data.manifest import Manifest
from omni_ds.data.prompt import PromptBuilder
from omni_ds.data.validate import DataError, ValidationConfig, ValidationReport, turn_units, validate_manifest

log = logging.getLogger("omni_ds.data")


class OmniSpeechDataset(torch.utils.data.Dataset):
    def __init__(self, manifest: Manifest, builder: PromptBuilder, cfg: ValidationConfig | None = None,
                 n_mels: int = 128, report: ValidationReport | None = None):
        self.manifest = manifest
        self.builder = builder
        self.cfg = cfg or ValidationConfig()
        self.n_mels = n_mels
        self.report = report or validate_manifest(manifest, self.cfg, builder)
        self.indices = self.report.good                       # manifest index per item
        self.lengths = self.report.lengths[self.indices]      # planning lengths per item
        self.n_skipped = len(self.report.bad)
        if len(self.indices) == 0:
            raise DataError(f"{manifest.path}: no usable records ({self.report.summary()})")
        if self.n_skipped:
            log.warning("%s: skipping %d bad record(s): %s", manifest.path, self.n_skipped,
                        self.report.summary())

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> dict:
        """Item i, raising on any failure (with the record id in the message)."""
        index = int(self.indices[i])
        rid = self.manifest.arrow_column("id")[index].as_py()
        try:
            turns = self.manifest.turns(index)
            mels, frames = zip(*(log_mel(load_audio(t["speech_path"]), n_mels=self.n_mels, mode=self.cfg.mel_mode)
                                 for t in turns))
            positions = [speech_positions(f, self.cfg.speech_ds_rate) for f in frames]
            built = self.builder.build_dialogue([(t["prompt_instruction"], t["response_text"]) for t in turns],
                                                positions, supervise=self.cfg.supervise)
        except Exception as e:
            raise DataError(f"record {rid} (manifest index {index}): {type(e).__name__}: {e}", rid) from e
        kept = built["n_turns"]              # whole trailing turns dropped to fit model_max_length
        single = len(turns) == 1
        item = {
            "input_ids": torch.tensor(built["input_ids"], dtype=torch.long),
            "labels": torch.tensor(built["labels"], dtype=torch.long),
            "speech_mel": mels[0] if single else list(mels[:kept]),
            "speech_frames": frames[0] if single else list(frames[:kept]),
            "sample_index": index,
        }
        if self.cfg.stage == 2:
            units = [self._units(t, rid, index, k) for k, t in enumerate(turns[:kept])]
            item["units"] = units[0] if single else units
        return item

    def _units(self, turn: dict, rid: str, index: int, k: int) -> torch.Tensor:
        units = turn_units(turn, self.cfg.unit_source) or []
        if not units or min(units) < 0 or max(units) >= self.cfg.unit_vocab_size:
            raise DataError(f"record {rid} (manifest index {index}), answer {k + 1}: units missing or "
                            f"outside 0..{self.cfg.unit_vocab_size - 1}", rid)
        return torch.tensor(units, dtype=torch.long)

    def __getitem__(self, i: int) -> dict:
        if self.cfg.on_bad == "error":
            return self.load(i)
        try:
            return self.load(i)
        except DataError as e:
            log.warning("skipping a record that failed to load: %s", e)
            return {"load_failed": str(e), "sample_index": int(self.indices[i])}
