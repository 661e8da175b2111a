"""Our unit HiFi-GAN equals fairseq's CodeHiFiGANVocoder on a checkpoint fairseq wrote."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from omni_ds.tiny.vocoder import TINY_VOCODER_CONFIG as TINY_CFG
from omni_ds.vocoder import load_vocoder
from conftest import REPO

ORACLE = Path(os.environ.get("OMNI_DS_FAIRSEQ_PYTHON", REPO / ".venv-fairseq" / "bin" / "python"))


@pytest.mark.skipif(not ORACLE.exists(), reason=f"fairseq oracle venv not found at {ORACLE} "
                                                "(tools/install_fairseq_oracle.sh builds it)")
def test_vocoder_matches_fairseq(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_CFG))
    units = [5, 17, 17, 999, 0, 3, 250, 42, 42, 42, 7]
    subprocess.run([str(ORACLE), str(REPO / "tests" / "vocoder_fairseq_oracle.py"), str(tmp_path),
                    json.dumps(units)], check=True, capture_output=True)
    ours = load_vocoder(tmp_path)
    for dur, name in ((True, "dur"), (False, "nodur")):
        ref = np.load(tmp_path / f"fairseq_{name}.npy")
        wav = ours(units, dur_prediction=dur).numpy()
        assert wav.shape == ref.shape
        assert np.abs(ref).max() > 1e-3            # a real signal, not silence
        np.testing.assert_allclose(wav, ref, atol=1e-5, rtol=1e-4)
    assert ours(units, dur_prediction=False).shape[0] == 320 * len(units)


def test_vocoder_rejects_a_config_it_does_not_implement(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_CFG, resblock="2")))
    torch.save({"generator": {}}, tmp_path / "g_1")
    with pytest.raises(ValueError, match="resblock"):
        load_vocoder(tmp_path)


def test_infer_cli_synthesizes_with_the_vocoder(tiny_parts, real_clips, tmp_path):
    import sys
    import soundfile as sf
    from omni_ds.model.checkpoint import build_from_parts, save_omni_folder
    from omni_ds.tiny.models import tiny_omni_config
    from omni_ds.vocoder import UnitVocoder
    voc_dir = tmp_path / "vocoder"
    voc_dir.mkdir()
    (voc_dir / "config.json").write_text(json.dumps(TINY_CFG))
    torch.manual_seed(0)
    torch.save({"generator": UnitVocoder(TINY_CFG).state_dict()}, voc_dir / "g_00500000")
    tok, whisper, llm = tiny_parts
    model, tokenizer = build_from_parts(whisper, llm, tiny_omni_config())
    save_omni_folder(tmp_path / "m", model, tokenizer)
    out = subprocess.run([sys.executable, str(REPO / "tools" / "infer.py"), "--model", str(tmp_path / "m"),
                          "--wav", str(real_clips[0]), "--max-new-tokens", "3", "--json",
                          "--vocoder", str(voc_dir), "--wav-out", str(tmp_path / "a.wav")],
                         check=True, capture_output=True, text=True)
    units = json.loads(out.stdout)["units"]
    wav, sr = sf.read(tmp_path / "a.wav")
    assert sr == 16000 and len(units) > 0 and len(wav) >= 320 * len(units)
