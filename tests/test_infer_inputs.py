"""tools/infer.py at the edges of its input: audio it cannot answer is refused in one line with
the validator's reason (exit 2); a clip over 30 s is answered, and the user is told it was cut."""
import numpy as np
import pytest
import soundfile as sf

from launcher import load_tool


@pytest.mark.parametrize("kind, reason", [("nan", "non-finite samples"), ("empty", "empty audio"),
                                          ("garbage", "corrupt audio")])
def test_unanswerable_audio_is_refused_in_one_line(tmp_path, capsys, kind, reason):
    wav = tmp_path / f"{kind}.wav"
    if kind == "garbage":
        wav.write_bytes(b"RIFF....not a wav")
    else:
        sf.write(wav, np.full(1600 if kind == "nan" else 0, np.nan, np.float32), 16000, subtype="FLOAT")
    rc = load_tool("infer").main(["--model", str(tmp_path / "unused"), "--wav", str(wav)])
    err = capsys.readouterr().err
    assert rc == 2 and reason in err and str(wav) in err and "Traceback" not in err


def test_a_long_clip_is_answered_and_said_to_be_cut(tiny_parts, tmp_path, capsys):
    import torch
    from omni_ds.model.checkpoint import build_from_parts, save_omni_folder
    from omni_ds.tiny.models import tiny_omni_config
    _, whisper, llm = tiny_parts
    torch.manual_seed(0)
    model, tok = build_from_parts(whisper, llm, tiny_omni_config())
    folder = save_omni_folder(tmp_path / "m", model, tok)
    wav = tmp_path / "long.wav"
    t = np.arange(35 * 16000) / 16000
    sf.write(wav, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    assert load_tool("infer").main(["--model", str(folder), "--wav", str(wav), "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "is 35.0 s; the speech encoder hears its first 30 s" in out and "text:" in out
