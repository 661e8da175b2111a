"""Whisper encoder dimensions come from the checkpoint (the .pt's dims, the HF config, the omni_ds
block), never from a rule of thumb; a disagreement with the weights names both values."""
import json

import pytest
import torch

from omni_ds.model.checkpoint import load_omni_folder, load_whisper_encoder_weights, save_omni_folder
from omni_ds.model.whisper_dims import WhisperDimsError
from released_layout import openai_dims, write_released_layout


def _openai_pt(path, config, state, **dims_changes):
    from omni_ds.model.speech_encoder import hf_to_openai_name
    dims = dict(openai_dims(config), **dims_changes)
    torch.save({"dims": dims, "model_state_dict": {"encoder." + hf_to_openai_name(k): v for k, v in state.items()}},
               path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_parts):
    from omni_ds.model.checkpoint import build_from_parts
    from omni_ds.tiny.models import tiny_omni_config
    _, whisper_dir, llm_dir = tiny_parts
    torch.manual_seed(0)
    return build_from_parts(whisper_dir, llm_dir, tiny_omni_config())


@pytest.fixture()
def encoder(tiny_parts):
    _, whisper_dir, _ = tiny_parts
    return load_whisper_encoder_weights(whisper_dir)


def test_head_count_comes_from_the_checkpoint_dims(encoder, tmp_path):
    config, state = encoder
    # 64 wide: heads = width / 64 would say 1; the dims say 4 (head width 16)
    pt = _openai_pt(tmp_path / "e.pt", config, state, n_audio_head=4)
    got, _ = load_whisper_encoder_weights(pt)
    assert got.encoder_attention_heads == 4 and got.d_model == config.d_model


@pytest.mark.parametrize("change, named", [({"n_audio_state": 96}, "d_model = 96 (stated) but 64 (weights)"),
                                           ({"n_audio_layer": 3}, "encoder_layers = 3 (stated) but 2 (weights)"),
                                           ({"n_audio_head": 5}, "encoder_attention_heads = 5 does not divide")])
def test_dims_that_disagree_with_the_weights_are_an_error_naming_both(encoder, tmp_path, change, named):
    config, state = encoder
    pt = _openai_pt(tmp_path / "e.pt", config, state, **change)
    with pytest.raises(WhisperDimsError, match="e.pt") as e:
        load_whisper_encoder_weights(pt)
    assert named in str(e.value)


def test_a_checkpoint_without_dims_is_refused(encoder, tmp_path):
    config, state = encoder
    torch.save({"model_state_dict": {"encoder.conv1.weight": torch.zeros(1)}}, tmp_path / "nodims.pt")
    with pytest.raises(WhisperDimsError, match="no 'dims'"):
        load_whisper_encoder_weights(tmp_path / "nodims.pt")


def test_saved_folder_block_is_checked_against_its_weights(tiny_model, tmp_path):
    model, tok = tiny_model
    out = save_omni_folder(tmp_path / "m", model, tok)
    raw = json.loads((out / "config.json").read_text())
    assert raw["omni_ds"]["speech_encoder_config"]["encoder_attention_heads"] == \
        model.speech_encoder.config.encoder_attention_heads
    raw["omni_ds"]["speech_encoder_config"]["encoder_ffn_dim"] += 1
    (out / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WhisperDimsError, match="encoder_ffn_dim = .* \\(stated\\) but .* \\(weights\\)"):
        load_omni_folder(out)


def test_released_config_width_must_match_the_encoder(tiny_model, tmp_path):
    model, tok = tiny_model
    write_released_layout(model, tok, tmp_path / "rel", encoder_inline=False)
    raw = json.loads((tmp_path / "rel" / "config.json").read_text())
    raw["speech_encoder_hidden_size"] = 1280
    (tmp_path / "rel" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WhisperDimsError, match="speech_encoder_hidden_size = 1280 but the speech encoder is 64 wide"):
        load_omni_folder(tmp_path / "rel")


def test_inline_encoder_without_any_stated_dims_is_refused_unless_published(tiny_model, tmp_path):
    model, tok = tiny_model
    folder = tmp_path / "rel"
    write_released_layout(model, tok, folder, encoder_inline=True)
    (folder / "models" / "speech_encoder" / "large-v3.pt").unlink()
    with pytest.raises(WhisperDimsError, match="no published Whisper size"):
        load_omni_folder(folder)
