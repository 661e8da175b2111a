"""Tiny random-weight models with the real architectures, for tests and the demo.

Whisper (128 mel bins, 1500 positions, as large-v3, but 64 wide and 2 layers deep) and a Llama
(Llama-3.1 RoPE settings, GQA, 2 layers) small enough that a training step takes milliseconds.
Weights come from a fixed seed, so every call writes the same model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, WhisperConfig,
                          WhisperFeatureExtractor, WhisperForConditionalGeneration)

from omni_ds.hf_compat import save_portable_tokenizer
from omni_ds.model.omni_config import OmniConfig

TINY_CTC_DECODER = "(2,64,4,128)"


def tiny_whisper_config(d_model: int = 64, layers: int = 2, heads: int = 4) -> WhisperConfig:
    return WhisperConfig(
        num_mel_bins=128, d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads,
        encoder_ffn_dim=2 * d_model, decoder_layers=1, decoder_attention_heads=heads,
        decoder_ffn_dim=2 * d_model, max_source_positions=1500, max_target_positions=64,
        vocab_size=51866, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )


def write_tiny_whisper(out_dir, seed: int = 0, **kw) -> Path:
    out = Path(out_dir)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(tiny_whisper_config(**kw))
    # At init std 0.02 and width 64, the encoder output is ~97 % sinusoidal position table, so
    # two clips differ by ~3 % and training learns clip length instead of content. A trained
    # Whisper is dominated by content: scaling the input convolutions x10 restores that.
    with torch.no_grad():
        model.model.encoder.conv1.weight.mul_(10.0)
        model.model.encoder.conv2.weight.mul_(10.0)
    model.save_pretrained(str(out))
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(out))
    return out


def tiny_llama_config(vocab_size: int, bos_token_id: int, eos_token_ids: list[int],
                      hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=bos_token_id,
        eos_token_id=eos_token_ids,
    )


def write_tiny_llm(out_dir, tokenizer_dir, seed: int = 0, **kw) -> Path:
    """A tiny Llama whose vocabulary is the tokenizer's; tokenizer files written beside it."""
    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    eos = [tok.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), tok.bos_token_id, eos, **kw))
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids("<|finetune_right_pad_id|>")
    model.save_pretrained(str(out))
    save_portable_tokenizer(tok, out)
    return out


def tiny_omni_config(**overrides) -> OmniConfig:
    """OmniConfig sized for the tiny models (projector 128 wide, decoder 2x64)."""
    base = dict(speech_projector_hidden_size=128, ctc_decoder_config=TINY_CTC_DECODER)
    base.update(overrides)
    return OmniConfig(**base)


def write_tiny_whisper_asr(out_dir, tokenizer_dir, seed: int = 0) -> Path:
    """A tiny random Whisper *speech-to-text* folder (80 mel bins as tiny.en, the tiny tokenizer,
    a generation config) that transformers' Whisper generate can run: the plumbing of ASR-based
    metrics is tested with it; its transcripts are noise."""
    from transformers import GenerationConfig, WhisperTokenizerFast
    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    bos, eot = tok.bos_token_id, tok.convert_tokens_to_ids("<|end_of_text|>")
    cfg = tiny_whisper_config()
    cfg.update({"num_mel_bins": 80, "vocab_size": len(tok), "max_target_positions": 128,
                "decoder_start_token_id": bos, "bos_token_id": bos, "eos_token_id": eot, "pad_token_id": eot})
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg)
    # Whisper's generate reads the timestamp token even when timestamps are off: any spare id does.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=bos, bos_token_id=bos, eos_token_id=eot, pad_token_id=eot, max_length=128,
        is_multilingual=False, return_timestamps=False,
        no_timestamps_token_id=tok.convert_tokens_to_ids("<|reserved_special_token_7|>"))
    model.save_pretrained(str(out))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(out))
    WhisperTokenizerFast(tokenizer_file=str(Path(tokenizer_dir) / "tokenizer.json"), bos_token=tok.bos_token,
                         eos_token="<|end_of_text|>", unk_token="<|end_of_text|>",
                         pad_token="<|end_of_text|>").save_pretrained(str(out))
    return out
