"""The composed model: losses, trimmed/padded encoder, generation, and the LLaMA-Omni folder layout."""
import json

import pytest
import torch
import torch.nn.functional as F

from omni_ds.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omni_ds.data.audio import load_audio, log_mel
from omni_ds.hf_compat import rope_parameters
from omni_ds.model.checkpoint import (build_from_parts, load_omni_folder, omni_state_dict,
                                      save_omni_folder, write_safetensors)
from omni_ds.model.speech_encoder import hf_to_openai_name
from omni_ds.tiny.models import tiny_omni_config
from released_layout import write_released_layout


@pytest.fixture(scope="module")
def tiny_model(tiny_parts):
    tok, whisper, llm = tiny_parts
    torch.manual_seed(0)
    return build_from_parts(whisper, llm, tiny_omni_config())


def toy_batch(mode="padded"):
    g = torch.Generator().manual_seed(1)
    T = 3000 if mode == "padded" else 420
    ids = torch.tensor([[5, 6, SPEECH_TOKEN_INDEX, 7, 8, 9, 10, 11], [5, SPEECH_TOKEN_INDEX, 7, 8, 9, 0, 0, 0]])
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    labels = torch.tensor([[IGNORE_INDEX] * 5 + [9, 10, 11], [IGNORE_INDEX] * 3 + [8, 9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    mel = torch.randn(2, 128, T, generator=g)
    frames = torch.tensor([T, T - 77]) if mode == "trimmed" else torch.tensor([T, T])
    units = torch.tensor([[3, 4, 5, 6], [7, 8, IGNORE_INDEX, IGNORE_INDEX]])
    return dict(input_ids=ids, attention_mask=mask, labels=labels, speech_mel=mel, speech_frames=frames, units=units)


def test_text_loss_equals_full_logits_cross_entropy_on_the_response(tiny_model):
    model, _ = tiny_model
    model.set_stage(1)
    batch = toy_batch()
    out = model(**batch)
    embeds, mask, labels = model.embed_inputs(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                              batch["speech_mel"], batch["speech_frames"])
    logits = model.llm(inputs_embeds=embeds, attention_mask=mask).logits
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    assert out["n_targets"].item() == 5
    # 300 speech positions spliced in place of the placeholder, all unsupervised
    assert embeds.shape[1] == 8 - 1 + 300
    assert (labels[0, 2:302] == IGNORE_INDEX).all() and labels[0, 302:].tolist() == \
        [IGNORE_INDEX, IGNORE_INDEX, 9, 10, 11]


def test_stage_freezing(tiny_model):
    model, _ = tiny_model
    model.set_stage(1)
    trainable = {n.split(".")[0] for n, _ in model.named_trainable_parameters()}
    assert trainable == {"speech_projector", "llm"}
    model.set_stage(1, freeze_backbone=True)
    assert {n.split(".")[0] for n, _ in model.named_trainable_parameters()} == {"speech_projector"}
    model.set_stage(2)
    model.train()
    assert {n.split(".")[0] for n, _ in model.named_trainable_parameters()} == {"speech_generator"}
    assert not model.llm.training and not model.speech_encoder.training and model.speech_generator.training
    out = model(**toy_batch())
    out["loss"].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("speech_generator."))
    model.zero_grad(set_to_none=True)
    model.set_stage(1)


def test_ctc_hidden_source_alignment(tiny_model):
    model, _ = tiny_model
    batch = toy_batch()
    states, lengths = model.response_hidden_states(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                                   batch["speech_mel"], batch["speech_frames"])
    embeds, mask, labels = model.embed_inputs(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                              batch["speech_mel"], batch["speech_frames"])
    hidden = model.llm.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    assert lengths.tolist() == [3, 2]
    first = (labels[0] != IGNORE_INDEX).nonzero()[0].item()
    # paper: the state that predicts the first response token sits one position earlier
    torch.testing.assert_close(states[0, 0], hidden[0, first - 1])


def test_trimmed_speech_positions_on_real_clips(tiny_parts, real_clips):
    tok, whisper, llm = tiny_parts
    model, _ = build_from_parts(whisper, llm, tiny_omni_config(encoder_mode="trimmed"))
    for clip in real_clips:
        mel, frames = log_mel(load_audio(clip), mode="trimmed")
        speech, n = model.encode_speech(mel[None], torch.tensor([frames]))
        expected = ((frames + 1) // 2) // 5
        assert n.item() == expected == speech.shape[1], clip.name


def test_trimmed_batch_equals_one_by_one(tiny_parts, real_clips):
    tok, whisper, llm = tiny_parts
    model, _ = build_from_parts(whisper, llm, tiny_omni_config(encoder_mode="trimmed"))
    mels = [log_mel(load_audio(c), mode="trimmed") for c in real_clips[:3]]
    T = max(m.shape[1] for m, _ in mels)
    batch = torch.stack([F.pad(m, (0, T - m.shape[1]), value=-1.5) for m, _ in mels])
    frames = torch.tensor([f for _, f in mels])
    together, n = model.encode_speech(batch, frames)
    for i, (m, f) in enumerate(mels):
        alone, k = model.encode_speech(m[None], torch.tensor([f]))
        torch.testing.assert_close(together[i, : k.item()], alone[0], rtol=1e-4, atol=1e-4)


def test_trimmed_equals_padded_when_the_clip_fills_30_seconds(tiny_parts):
    tok, whisper, llm = tiny_parts
    padded, _ = build_from_parts(whisper, llm, tiny_omni_config(encoder_mode="padded"))
    trimmed, _ = build_from_parts(whisper, llm, tiny_omni_config(encoder_mode="trimmed"))
    mel = torch.randn(1, 128, 3000)
    a, _ = padded.speech_encoder(mel, torch.tensor([3000]))
    b, _ = trimmed.speech_encoder(mel, torch.tensor([3000]))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_greedy_generation_with_kv_cache_equals_full_recompute(tiny_model):
    model, tok = tiny_model
    model.eval()
    batch = toy_batch()
    prompt = [5, 6, SPEECH_TOKEN_INDEX, 7]
    out = model.generate(batch["speech_mel"][:1], batch["speech_frames"][:1], prompt, max_new_tokens=6)
    ids = list(prompt)
    for _ in range(6):
        t = torch.tensor([ids])
        embeds, mask, _ = model.embed_inputs(t, torch.ones_like(t), None, batch["speech_mel"][:1], batch["speech_frames"][:1])
        ids.append(int(model.llm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1].argmax()))
    assert out["token_ids"] == ids[len(prompt):]
    assert out["states"].shape == (6, model.llm.config.hidden_size)
    assert out["units"] == model.speech_generator.predict(out["states"])


def test_save_load_round_trip_is_bit_exact(tiny_model, tmp_path):
    model, tok = tiny_model
    save_omni_folder(tmp_path / "m", model, tok, metadata={"stage": 1})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "omni_speech2s_llama"
    assert cfg["architectures"] == ["OmniSpeech2SLlamaForCausalLM"]
    for key, value in {"speech_encoder_type": "whisper", "speech_encoder_ds_rate": 5, "speech_encoder_hidden_size": 64,
                       "speech_projector_type": "linear", "speech_generator_type": "ctc",
                       "ctc_decoder_config": "(2,64,4,128)", "ctc_upsample_factor": 25, "ctc_loss_weight": 1.0,
                       "unit_vocab_size": 1000, "tokenizer_model_max_length": 2048}.items():
        assert cfg[key] == value, key
    # RoPE as the released config.json spells it, which transformers 4.x and the official code
    # read (transformers 5 alone would write one rope_parameters dict that they ignore).
    assert "rope_parameters" not in cfg and cfg["rope_theta"] == 500000.0
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_scaling"]["factor"] == 8.0
    # Tokenizer files as the released folder has them: loadable by transformers 4.x and 5.x alike
    tok_cfg = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and tok_cfg["chat_template"]
    loaded, tok2 = load_omni_folder(tmp_path / "m")
    assert rope_parameters(loaded.llm.config) == rope_parameters(model.llm.config)
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert tok2.pad_token == "<|finetune_right_pad_id|>"
    # sharded writing gives the same tensors
    state = omni_state_dict(model.state_dict())
    write_safetensors(state, tmp_path, max_shard_bytes=200_000)
    assert (tmp_path / "model.safetensors.index.json").exists()


def test_release_names(tiny_model):
    model, _ = tiny_model
    names = set(omni_state_dict(model.state_dict()))
    for expected in ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                     "model.layers.0.self_attn.q_proj.weight", "model.speech_projector.linear1.weight",
                     "model.speech_projector.linear2.bias", "speech_generator.input_proj.weight",
                     "speech_generator.layers.1.mlp.down_proj.weight", "speech_generator.output_proj.bias",
                     "model.speech_encoder.conv1.weight", "model.speech_encoder.positional_embedding",
                     "model.speech_encoder.blocks.1.attn.query.weight", "model.speech_encoder.blocks.1.attn.key.weight",
                     "model.speech_encoder.blocks.0.attn_ln.bias", "model.speech_encoder.blocks.0.mlp.0.weight",
                     "model.speech_encoder.blocks.0.mlp.2.bias", "model.speech_encoder.blocks.0.mlp_ln.weight",
                     "model.speech_encoder.ln_post.weight"]:
        assert expected in names, expected
    assert not any("rotary" in n for n in names)


@pytest.mark.parametrize("encoder_inline", [True, False])
def test_released_layout_folder_loads(tiny_model, tmp_path, encoder_inline):
    model, tok = tiny_model
    # the released projector is 2048 wide; the tiny one is not, so give it that width here
    from omni_ds.model.projector import SpeechProjector
    torch.manual_seed(3)
    model.speech_projector = SpeechProjector(64, model.llm.config.hidden_size, 5, 2048)
    model.omni_config = model.omni_config.replace(speech_projector_hidden_size=2048)
    write_released_layout(model, tok, tmp_path / "released", encoder_inline)
    loaded, _ = load_omni_folder(tmp_path / "released")
    assert loaded.omni_config.encoder_mode == "padded"
    a, b = model.state_dict(), loaded.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    model.set_stage(1)
    loaded.set_stage(1)
    torch.testing.assert_close(model(**toy_batch())["loss"], loaded(**toy_batch())["loss"])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_parts):
    tok, whisper, llm = tiny_parts
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, _ = build_from_parts(whisper, llm, tiny_omni_config(with_speech_generator=False))
        model.set_stage(1)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**toy_batch())["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_trainable_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


def test_bf16_forward_backward(tiny_parts):
    tok, whisper, llm = tiny_parts
    model, _ = build_from_parts(whisper, llm, tiny_omni_config(), dtype=torch.bfloat16)
    for stage in (1, 2):
        model.set_stage(stage)
        out = model(**toy_batch())
        assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32   # losses in fp32
        out["loss"].backward()
