"""Writes a folder exactly as ICTNLP/Llama-3.1-8B-Omni ships it (shared by several tests)."""
import json

import torch
from safetensors.torch import save_file

from omni_ds.hf_compat import legacy_rope_keys
from omni_ds.model.checkpoint import omni_state_dict


def openai_dims(config) -> dict:
    """The encoder half of openai-whisper's ModelDimensions for a WhisperConfig."""
    return {"n_mels": config.num_mel_bins, "n_audio_ctx": config.max_source_positions,
            "n_audio_state": config.d_model, "n_audio_head": config.encoder_attention_heads,
            "n_audio_layer": config.encoder_layers}


def write_released_layout(model, tok, folder, encoder_inline: bool, encoder_pt=None):
    """A folder exactly as ICTNLP/Llama-3.1-8B-Omni ships it: released config keys only (no
    omni_ds block), sharded safetensors with LLaMA-Omni names, the encoder either inline or as an
    openai-whisper checkpoint that config['speech_encoder'] points at."""
    folder.mkdir()
    state = omni_state_dict(model.state_dict())
    enc = {k: v for k, v in state.items() if k.startswith("model.speech_encoder.")}
    # The openai-whisper checkpoint config['speech_encoder'] names is always there (the official
    # loader builds the encoder from it, then loads inline weights, if any, over it).
    (folder / "models" / "speech_encoder").mkdir(parents=True)
    target = folder / "models" / "speech_encoder" / "large-v3.pt"
    if encoder_pt is not None:      # a real openai-whisper checkpoint
        target.write_bytes(encoder_pt.read_bytes())
    else:
        torch.save({"dims": openai_dims(model.speech_encoder.config), "model_state_dict":
                    {"encoder." + k[len("model.speech_encoder."):]: v for k, v in enc.items()}}, target)
    if not encoder_inline:
        state = {k: v for k, v in state.items() if k not in enc}
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate([names[:half], names[half:]]):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: state[n].contiguous() for n in part}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = legacy_rope_keys(model.llm.config.to_dict())     # the released config.json's spelling
    cfg.update({"_name_or_path": "Llama-3.1-8B-Omni", "architectures": ["OmniSpeech2SLlamaForCausalLM"],
                "model_type": "omni_speech2s_llama", "speech_encoder": "models/speech_encoder/large-v3.pt",
                "speech_encoder_type": "whisper", "speech_encoder_ds_rate": 5, "speech_encoder_hidden_size": model.speech_encoder.hidden_size,
                "speech_projector_type": "linear", "speech_projector_lr": None, "speech_normalize": False,
                "speech_generator_type": "ctc", "ctc_decoder_config": model.omni_config.ctc_decoder_config, "ctc_upsample_factor": 25,
                "ctc_loss_weight": 1.0, "unit_vocab_size": 1000, "freeze_speech_projector": False,
                "tune_speech_projector": False, "tokenizer_model_max_length": 2048,
                "tokenizer_padding_side": "right", "torch_dtype": "float16", "transformers_version": "4.43.4"})
    (folder / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(str(folder))
