"""Run inside the fairseq oracle venv: make a random unit HiFi-GAN with fairseq itself, save it as
fairseq's vocoder checkpoint, and synthesize units with fairseq's CodeHiFiGANVocoder.

usage: python vocoder_fairseq_oracle.py OUT_DIR UNITS_JSON
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from fairseq.models.text_to_speech.codehifigan import CodeGenerator
from fairseq.models.text_to_speech.vocoder import CodeHiFiGANVocoder

out = Path(sys.argv[1])
units = json.loads(sys.argv[2])
cfg = json.loads((out / "config.json").read_text())
torch.manual_seed(0)
gen = CodeGenerator(cfg)
for p in gen.parameters():           # fairseq initialises near zero; widen so outputs are not ~0
    torch.nn.init.normal_(p, 0.0, 0.3) if p.dim() > 1 else None
torch.save({"generator": gen.state_dict()}, out / "g_00000001")
voc = CodeHiFiGANVocoder(str(out / "g_00000001"), cfg)
for dur in (True, False):
    wav = voc({"code": torch.tensor([units])}, dur).numpy()
    np.save(out / f"fairseq_{'dur' if dur else 'nodur'}.npy", wav)
