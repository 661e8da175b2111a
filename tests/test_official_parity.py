"""A released-layout folder answers as the official LLaMA-Omni inference does.

The official pipeline is rebuilt here from its parts: openai-whisper's own front end and encoder
(`whisper.log_mel_spectrogram`, `whisper.load_model(...).encoder`, on an openai-whisper
checkpoint written by openai-whisper), the LLaVA-style `tokenizer_speech_token` prompt (which
carries BOS twice), and Hugging Face `generate(inputs_embeds=...)` with the hidden states it
returns (last prompt state + each generated token's state) feeding the CTC decoder.
omni_ds must give the same tokens and units with `double_bos=True`.
"""
import dataclasses

import pytest
import torch

from omni_ds.constants import DEFAULT_INSTRUCTION, SPEECH_TOKEN_INDEX, SYSTEM_PROMPT
from omni_ds.data.audio import load_audio
from omni_ds.inference import PromptOptions, answer, eos_token_ids
from omni_ds.model.checkpoint import build_from_parts, load_omni_folder
from omni_ds.tiny.models import tiny_omni_config
from released_layout import write_released_layout

whisper = pytest.importorskip("whisper", reason="openai-whisper is the oracle (dev extra)")


def official_prompt_ids(tokenizer):
    """conv_llama_3 rendering + tokenizer_speech_token: every chunk tokenised with the tokenizer's
    BOS, the BOS of later chunks stripped; the template's literal BOS stays too."""
    prompt = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT + "<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n<speech>\n" + DEFAULT_INSTRUCTION + "<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    first, second = prompt.split("<speech>")
    return tokenizer(first).input_ids + [SPEECH_TOKEN_INDEX] + tokenizer(second).input_ids[1:]


# (encoder width, heads): head width 64 as in every published Whisper, and 16, which a rule of
# thumb (heads = width / 64) would get wrong: the dims must come from the checkpoint.
ENCODERS = {"head64": (128, 2), "head16": (64, 4)}


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def released(request, tiny_parts, tmp_path_factory):
    tok, _, llm = tiny_parts
    root = tmp_path_factory.mktemp("released")
    width, heads = ENCODERS[request.param]
    dims = whisper.model.ModelDimensions(n_mels=128, n_audio_ctx=1500, n_audio_state=width, n_audio_head=heads,
                                         n_audio_layer=2, n_vocab=51866, n_text_ctx=16, n_text_state=width,
                                         n_text_head=heads, n_text_layer=1)
    torch.manual_seed(0)
    ow = whisper.model.Whisper(dims)
    pt = root / "large-v3.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": ow.state_dict()}, pt)
    model, tokenizer = build_from_parts(pt, llm, tiny_omni_config(speech_projector_hidden_size=2048))
    write_released_layout(model, tokenizer, root / "Llama-3.1-8B-Omni", encoder_inline=False, encoder_pt=pt)
    return root / "Llama-3.1-8B-Omni", pt


@pytest.fixture(scope="module")
def official(released):
    """The official pipeline's modules: openai-whisper encoder, HF Llama from the folder, and the
    projector/decoder weights of the folder."""
    from transformers import LlamaForCausalLM
    folder, pt = released
    encoder = whisper.load_model(str(pt), device="cpu").encoder.eval()
    ours, _ = load_omni_folder(folder)            # projector + decoder weights only
    llm = LlamaForCausalLM.from_pretrained(str(folder)).eval()
    return encoder, ours, llm


@torch.no_grad()
def official_answer(official, tokenizer, wav, max_new_tokens):
    encoder, ours, llm = official
    audio = torch.from_numpy(load_audio(wav))      # ffmpeg decoding replaced by the same samples
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), n_mels=128)
    feats = encoder(mel[None])                     # [1, 1500, 128]
    b, t, d = feats.shape
    speech = ours.speech_projector.linear2(torch.relu(ours.speech_projector.linear1(
        feats[:, : t - t % 5].reshape(b, t // 5, d * 5))))
    ids = official_prompt_ids(tokenizer)
    p = ids.index(SPEECH_TOKEN_INDEX)
    emb = llm.get_input_embeddings()
    embeds = torch.cat([emb(torch.tensor(ids[:p])), speech[0], emb(torch.tensor(ids[p + 1:]))])[None]
    out = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                       do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_token_ids(ours, tokenizer),
                       output_hidden_states=True, return_dict_in_generate=True, use_cache=True)
    hs = out.hidden_states
    states = torch.cat([hs[0][-1][:, -1:]] + [hs[i][-1] for i in range(1, len(hs))], dim=1)[0]
    return out.sequences[0].tolist(), ours.speech_generator.predict(states), mel, feats


def test_released_folder_matches_official_inference(released, official, real_clips):
    folder, pt = released
    model, tokenizer = load_omni_folder(folder)
    assert model.omni_config.encoder_mode == "padded"
    dims = torch.load(pt, weights_only=True)["dims"]
    assert model.speech_encoder.config.encoder_attention_heads == dims["n_audio_head"]
    for wav in real_clips[:3]:
        ours = answer(model, tokenizer, wav, max_new_tokens=8, prompt=PromptOptions(double_bos=True))
        tokens, units, mel, feats = official_answer(official, tokenizer, wav, 8)
        assert ours["token_ids"] == tokens, wav.name
        assert ours["units"] == units, wav.name
    # and the pieces agree numerically: front end and encoder
    from omni_ds.data.audio import log_mel
    ours_mel, _ = log_mel(load_audio(real_clips[0]), mode="padded")
    _, _, mel, feats = official_answer(official, tokenizer, real_clips[0], 1)
    torch.testing.assert_close(ours_mel, mel, rtol=0, atol=1e-4)
    enc, _ = model.speech_encoder(ours_mel[None], torch.tensor([3000]))
    torch.testing.assert_close(enc, feats, rtol=1e-4, atol=1e-4)


def test_single_bos_by_default(released, real_clips):
    folder, _ = released
    model, tokenizer = load_omni_folder(folder)
    from omni_ds.data.prompt import PromptBuilder
    ids = PromptBuilder(tokenizer).build(None)["input_ids"]
    official = official_prompt_ids(tokenizer)
    assert official[:2] == [tokenizer.bos_token_id] * 2 and ids.count(tokenizer.bos_token_id) == 1
    assert official[1:] == ids


def _teacher_forced(tokenizer, answer_text):
    """The official training sample: double-BOS prompt + answer + <|eot_id|>, labels on the answer."""
    from omni_ds.constants import IGNORE_INDEX
    prompt = official_prompt_ids(tokenizer)
    answer_ids = tokenizer(answer_text, add_special_tokens=False).input_ids + [
        tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    ids = torch.tensor([prompt + answer_ids])
    labels = torch.tensor([[IGNORE_INDEX] * len(prompt) + answer_ids])
    return ids, labels


@torch.no_grad()
def test_released_folder_losses_match_official(released, official, real_clips):
    """Stage-1 text loss and stage-2 CTC loss (ctc_hidden_source "at_token", as the official
    training forward takes them) on the official pipeline's features equal ours."""
    import torch.nn.functional as F
    from omni_ds.constants import IGNORE_INDEX
    from omni_ds.data.audio import log_mel
    folder, _ = released
    encoder, _, llm = official
    model, tokenizer = load_omni_folder(folder, omni_overrides={"ctc_hidden_source": "at_token"})
    ids, labels = _teacher_forced(tokenizer, "Paris is in France.")
    mel, _ = log_mel(load_audio(real_clips[1]), mode="padded")
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "speech_mel": mel[None], "speech_frames": torch.tensor([3000]),
             "units": torch.tensor([[5, 9, 3, 7, 1, 2, 8, 4, 6, 0, 11, 12]])}
    model.set_stage(1)
    ours_text = model(**batch)["loss"]
    model.set_stage(2)
    ours_ctc = model(**batch)["loss"]

    feats = encoder(whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(load_audio(real_clips[1]))),
                                                n_mels=128)[None])
    b, t, d = feats.shape
    proj = model.speech_projector
    speech = proj.linear2(torch.relu(proj.linear1(feats[:, : t - t % 5].reshape(b, t // 5, d * 5))))
    p = int((ids[0] == SPEECH_TOKEN_INDEX).nonzero())
    emb = llm.get_input_embeddings()
    embeds = torch.cat([emb(ids[0, :p]), speech[0], emb(ids[0, p + 1:])])[None]
    full_labels = torch.cat([labels[0, :p], torch.full((speech.shape[1],), IGNORE_INDEX), labels[0, p + 1:]])
    out = llm(inputs_embeds=embeds, output_hidden_states=True)
    official_text = F.cross_entropy(out.logits[0, :-1].float(), full_labels[1:], ignore_index=IGNORE_INDEX)
    states = out.hidden_states[-1][0][full_labels.ne(IGNORE_INDEX)]
    ctc_sum, n = model.speech_generator.ctc_loss_sum(states[None], torch.tensor([states.shape[0]]), batch["units"])
    torch.testing.assert_close(ours_text, official_text, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_ctc, ctc_sum / n * model.omni_config.ctc_loss_weight, rtol=1e-4, atol=1e-4)
