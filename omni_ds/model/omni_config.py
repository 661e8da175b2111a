"""OmniConfig: the speech-side settings of a LLaMA-Omni model, and their config.json keys.

The LLM keeps its own Hugging Face config; this dataclass holds only what LLaMA-Omni adds on top
(REFERENCE.md "Released config.json keys") plus the few omni_ds choices the released format has no
key for (encoder mode, projector width, CTC hidden-state alignment), stored under "omni_ds".
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

ENCODER_MODES = ("padded", "trimmed")
# "predicting": the LLM state that predicts each response token, c_i = M(S, Y<i) (the paper, and
#               what official inference feeds the decoder).
# "at_token":   the state at each response token's own position (the official training forward,
#               one position later). Kept as an option for reproducing that behaviour.
CTC_HIDDEN_SOURCES = ("predicting", "at_token")
_DECODER_SPEC = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)$")


def parse_ctc_decoder_config(spec: str) -> tuple[int, int, int, int]:
    """"(layers,width,heads,ffn)" -> ints, with an error that shows the expected form."""
    m = _DECODER_SPEC.match(str(spec))
    if not m:
        raise ValueError(f"ctc_decoder_config={spec!r}: expected '(layers,width,heads,ffn)', "
                         "e.g. '(2,4096,32,11008)'")
    layers, width, heads, ffn = map(int, m.groups())
    if width % heads:
        raise ValueError(f"ctc_decoder_config={spec!r}: width {width} is not divisible by heads {heads}")
    return layers, width, heads, ffn


@dataclass
class OmniConfig:
    encoder_mode: str = "padded"
    speech_encoder_ds_rate: int = 5
    speech_projector_hidden_size: int = 2048
    with_speech_generator: bool = True
    ctc_decoder_config: str = "(2,4096,32,11008)"
    ctc_upsample_factor: int = 25
    ctc_loss_weight: float = 1.0
    unit_vocab_size: int = 1000
    ctc_hidden_source: str = "predicting"
    tokenizer_model_max_length: int = 2048
    speech_encoder: Optional[str] = None     # where the encoder came from (informational)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode={self.encoder_mode!r}: allowed {ENCODER_MODES}")
        if self.ctc_hidden_source not in CTC_HIDDEN_SOURCES:
            raise ValueError(f"ctc_hidden_source={self.ctc_hidden_source!r}: allowed {CTC_HIDDEN_SOURCES}")
        for key in ("speech_encoder_ds_rate", "speech_projector_hidden_size",
                    "ctc_upsample_factor", "unit_vocab_size", "tokenizer_model_max_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r}: must be a positive integer")
        parse_ctc_decoder_config(self.ctc_decoder_config)

    def replace(self, **changes: Any) -> "OmniConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown OmniConfig keys: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    # ---- config.json ------------------------------------------------------------------------
    def to_llama_omni_keys(self, encoder_hidden_size: int) -> dict[str, Any]:
        """The keys the released ICTNLP/Llama-3.1-8B-Omni config.json carries beyond Llama's."""
        keys: dict[str, Any] = {
            "speech_encoder": self.speech_encoder or "",
            "speech_encoder_type": "whisper",
            "speech_encoder_ds_rate": self.speech_encoder_ds_rate,
            "speech_encoder_hidden_size": encoder_hidden_size,
            "speech_projector_type": "linear",
            "speech_projector_lr": None,
            "speech_normalize": False,
            "tokenizer_model_max_length": self.tokenizer_model_max_length,
            "tokenizer_padding_side": "right",
        }
        if self.with_speech_generator:
            keys.update({
                "speech_generator_type": "ctc",
                "ctc_decoder_config": self.ctc_decoder_config,
                "ctc_upsample_factor": self.ctc_upsample_factor,
                "ctc_loss_weight": self.ctc_loss_weight,
                "unit_vocab_size": self.unit_vocab_size,
            })
        return keys

    def to_omni_ds_keys(self) -> dict[str, Any]:
        return {"encoder_mode": self.encoder_mode,
                "speech_projector_hidden_size": self.speech_projector_hidden_size,
                "ctc_hidden_source": self.ctc_hidden_source}

    @classmethod
    def from_config_dict(cls, cfg: dict[str, Any]) -> "OmniConfig":
        """Read a LLaMA-Omni config.json (released, or written by omni_ds)."""
        ours = cfg.get("omni_ds", {})
        has_generator = cfg.get("speech_generator_type") == "ctc"
        if cfg.get("speech_projector_type", "linear") != "linear":
            raise ValueError(f"speech_projector_type={cfg['speech_projector_type']!r}: only 'linear' "
                             "(the released type) is supported")
        if cfg.get("speech_encoder_type", "whisper") != "whisper":
            raise ValueError(f"speech_encoder_type={cfg['speech_encoder_type']!r}: only 'whisper' is supported")
        defaults = cls()
        return cls(
            # A released folder has no encoder mode: the official code always pads to 30 s.
            encoder_mode=ours.get("encoder_mode", "padded"),
            speech_encoder_ds_rate=int(cfg.get("speech_encoder_ds_rate", defaults.speech_encoder_ds_rate)),
            speech_projector_hidden_size=int(ours.get("speech_projector_hidden_size", 2048)),
            with_speech_generator=has_generator,
            ctc_decoder_config=cfg.get("ctc_decoder_config", defaults.ctc_decoder_config),
            ctc_upsample_factor=int(cfg.get("ctc_upsample_factor", defaults.ctc_upsample_factor)),
            ctc_loss_weight=float(cfg.get("ctc_loss_weight", defaults.ctc_loss_weight)),
            unit_vocab_size=int(cfg.get("unit_vocab_size", defaults.unit_vocab_size)),
            ctc_hidden_source=ours.get("ctc_hidden_source", "predicting"),
            tokenizer_model_max_length=int(cfg.get("tokenizer_model_max_length", 2048)),
            speech_encoder=cfg.get("speech_encoder") or None,
        )
