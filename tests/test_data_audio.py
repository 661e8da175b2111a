"""Whisper front end: matches transformers' WhisperFeatureExtractor; trimmed == padded prefix."""
import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperFeatureExtractor

from data_fixtures import REAL_CLIPS, write_tone
from omni_ds.data.audio import load_audio, log_mel, log_mel_batch, mel_filterbank, num_frames, speech_positions


@pytest.fixture(scope="module")
def fe():
    return WhisperFeatureExtractor(feature_size=128)


def test_real_clips_present():
    assert len(REAL_CLIPS) == 10


def test_filterbank_matches_whisper(fe):
    np.testing.assert_allclose(mel_filterbank(128).numpy(), fe.mel_filters, atol=1e-7)


@pytest.mark.parametrize("clip", REAL_CLIPS, ids=lambda p: p.name)
def test_mel_matches_whisper_feature_extractor(fe, clip):
    assert sf.info(str(clip)).samplerate == 22050          # resampled on the way in
    wave = load_audio(clip)
    assert abs(len(wave) - sf.info(str(clip)).frames * 16000 / 22050) <= 2
    ref = fe(wave, sampling_rate=16000, return_tensors="np").input_features[0]
    mel, frames = log_mel(wave, mode="padded")
    assert mel.shape == (128, 3000) and frames == 3000 and mel.dtype == torch.float32
    assert np.abs(mel.numpy() - ref).max() < 1e-4
    trimmed, n = log_mel(wave, mode="trimmed")
    assert n == num_frames(len(wave)) == int(np.ceil(len(wave) / 160))
    assert trimmed.shape == (128, n)
    assert torch.equal(trimmed, mel[:, :n])


def test_long_clip_truncated_to_30s(tmp_path, fe):
    wave = load_audio(write_tone(tmp_path / "long.wav", 31.5))
    mel, _ = log_mel(wave)
    cut, _ = log_mel(wave[:480000])
    assert torch.equal(mel, cut)
    trimmed, n = log_mel(wave, mode="trimmed")
    assert n == 3000 and torch.equal(trimmed, mel)
    ref = fe(wave, sampling_rate=16000, return_tensors="np").input_features[0]
    assert np.abs(mel.numpy() - ref).max() < 1e-4


def test_stereo_mixdown_and_resample(tmp_path):
    mono = load_audio(write_tone(tmp_path / "m.wav", 1.0, sr=44100))
    stereo = load_audio(write_tone(tmp_path / "s.wav", 1.0, sr=44100, channels=2))
    assert len(mono) == 16000 and np.allclose(mono, stereo, atol=1e-6)


def test_bad_mode_and_shape():
    with pytest.raises(ValueError, match="mode"):
        log_mel(np.zeros(100, np.float32), mode="cropped")
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 100), np.float32))


def test_speech_positions():
    assert speech_positions(3000) == 300          # REFERENCE.md: every padded clip -> 300
    assert speech_positions(750) == 75            # 7.5 s trimmed -> ~75
    assert speech_positions(8) == 0 and speech_positions(9) == 1      # ceil(9 / 2) = 5 frames


def test_shortcut_equals_full_30s_computation(tmp_path):
    # log_mel skips the STFT of all-zero frames; log_mel_batch computes all 3000 of them.
    waves = [load_audio(c) for c in REAL_CLIPS[:3]]
    waves += [np.zeros(0, np.float32), np.full(1, 0.5, np.float32), load_audio(write_tone(tmp_path / "t.wav", 29.99))]
    for w in waves:
        fast, _ = log_mel(w)
        full = log_mel_batch(torch.from_numpy(w)[None])[0]
        assert fast.shape == full.shape == (128, 3000)
        assert (fast - full).abs().max() < 1e-5
