"""A CTranslate2 Whisper model folder -> a Hugging Face `WhisperForConditionalGeneration` folder.

CTranslate2's Whisper layout ("WhisperSpec") and transformers' names, per layer:

    encoder/conv{1,2}/{weight,bias}                   model.encoder.conv{1,2}.*
    encoder/position_encodings/encodings              model.encoder.embed_positions.weight
    encoder/layer_N/self_attention/linear_0  [3D, D]  q_proj | k_proj | v_proj stacked (k has no bias in
                                                      Whisper; CTranslate2 stores zeros there)
    encoder/layer_N/self_attention/linear_1           self_attn.out_proj
    encoder/layer_N/self_attention/layer_norm         self_attn_layer_norm       (gamma/beta = weight/bias)
    encoder/layer_N/ffn/linear_{0,1}                  fc1, fc2
    encoder/layer_N/ffn/layer_norm                    final_layer_norm
    encoder/layer_norm                                model.encoder.layer_norm
    decoder/embeddings/weight                         model.decoder.embed_tokens.weight (proj_out is tied)
    decoder/position_encodings/encodings              model.decoder.embed_positions.weight
    decoder/layer_N/self_attention/*                  as in the encoder
    decoder/layer_N/attention/linear_0                encoder_attn.q_proj
    decoder/layer_N/attention/linear_1       [2D, D]  encoder_attn.k_proj | v_proj stacked
    decoder/layer_N/attention/linear_2                encoder_attn.out_proj
    decoder/layer_N/attention/layer_norm              encoder_attn_layer_norm
    decoder/layer_norm                                model.decoder.layer_norm

Scalars in the file are checked against Whisper's semantics (pre-norm, exact GELU, no embedding
scale, no ALiBi) so that a model of another kind is refused rather than converted wrongly.
The folder's tokenizer.json and config.json (suppressed tokens, alignment heads) become the HF
tokenizer and generation config, so `model.generate(input_features)` transcribes.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from omni_ds.realsmall.ct2 import Ct2Model, read_ct2_model

# CTranslate2 ActivationType: 0 ReLU, 1 GELU (tanh approximation), 2 Swish, 3 GELU, 4 GELU (sigmoid), 5 Tanh
_EXPECTED_SCALARS = {"activation": 3, "pre_norm": 1, "scale_embeddings": 0, "alibi": 0}


class Ct2WhisperError(ValueError):
    """The CTranslate2 folder does not hold a Whisper model this converter can map (names the key)."""


def _layer_count(m: Ct2Model, side: str) -> int:
    pat = re.compile(rf"^{side}/layer_(\d+)/")
    ids = {int(g.group(1)) for n in m.names() if (g := pat.match(n))}
    if not ids or ids != set(range(max(ids) + 1)):
        raise Ct2WhisperError(f"{side}: layers {sorted(ids)} are not 0..N-1")
    return max(ids) + 1


def _t(m: Ct2Model, name: str, path: str) -> torch.Tensor:
    if name not in m:
        raise Ct2WhisperError(f"{path}: variable {name!r} missing")
    return torch.from_numpy(np.asarray(m.get(name), dtype=np.float32).copy())


def _scalar(m: Ct2Model, name: str, path: str) -> int:
    if name not in m:
        raise Ct2WhisperError(f"{path}: scalar {name!r} missing")
    return int(m.get(name))


def _check_whisper_semantics(m: Ct2Model, path: str) -> None:
    """Refuse a model whose spec or scalars say it is not Whisper (it would convert, but wrongly)."""
    if m.spec_name != "WhisperSpec":
        raise Ct2WhisperError(f"{path}: spec {m.spec_name!r}, expected 'WhisperSpec'")
    for side in ("encoder", "decoder"):
        for key, want in _EXPECTED_SCALARS.items():
            name = f"{side}/{key}"
            if name in m and _scalar(m, name, path) != want:
                raise Ct2WhisperError(f"{path}: {name} = {_scalar(m, name, path)}, Whisper needs {want}")


class _StateMapper:
    """Copies CTranslate2 variables into an HF state dict under transformers' names."""

    def __init__(self, m: Ct2Model, path: str):
        self.m, self.path = m, path
        self.sd: dict[str, torch.Tensor] = {}

    def tensor(self, dst: str, src: str) -> None:
        self.sd[dst] = _t(self.m, src, self.path)

    def norm(self, dst: str, src: str) -> None:
        self.tensor(dst + ".weight", src + "/gamma")
        self.tensor(dst + ".bias", src + "/beta")

    def linear(self, dst: str, src: str) -> None:
        self.tensor(dst + ".weight", src + "/weight")
        self.tensor(dst + ".bias", src + "/bias")

    def split(self, dst_prefix: str, src: str, parts: str) -> None:
        """A stacked projection (e.g. "qkv") -> one Linear per part; k_proj takes no bias."""
        w, b = _t(self.m, src + "/weight", self.path), _t(self.m, src + "/bias", self.path)
        if w.shape[0] % len(parts):
            raise Ct2WhisperError(f"{self.path}: {src}/weight rows {w.shape[0]} do not split in {len(parts)}")
        for p, wp, bp in zip(parts, w.chunk(len(parts)), b.chunk(len(parts))):
            self.sd[f"{dst_prefix}.{p}_proj.weight"] = wp.contiguous()
            if p == "k":
                if bp.abs().max() > 0:
                    raise Ct2WhisperError(f"{self.path}: {src}/bias has a non-zero key part; Whisper's k_proj "
                                          "has no bias")
            else:
                self.sd[f"{dst_prefix}.{p}_proj.bias"] = bp.contiguous()

    def self_attention(self, d: str, s: str) -> None:
        """The pre-norm self-attention block, the same in encoder and decoder layers."""
        self.norm(f"{d}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        self.split(f"{d}.self_attn", f"{s}/self_attention/linear_0", "qkv")
        self.linear(f"{d}.self_attn.out_proj", f"{s}/self_attention/linear_1")

    def cross_attention(self, d: str, s: str) -> None:
        """The decoder's attention over the encoder output (its keys and values are stacked)."""
        self.norm(f"{d}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
        self.linear(f"{d}.encoder_attn.q_proj", f"{s}/attention/linear_0")
        self.split(f"{d}.encoder_attn", f"{s}/attention/linear_1", "kv")
        self.linear(f"{d}.encoder_attn.out_proj", f"{s}/attention/linear_2")

    def ffn(self, d: str, s: str) -> None:
        self.norm(f"{d}.final_layer_norm", f"{s}/ffn/layer_norm")
        self.linear(f"{d}.fc1", f"{s}/ffn/linear_0")
        self.linear(f"{d}.fc2", f"{s}/ffn/linear_1")

    def encoder(self, n_layers: int) -> None:
        self.linear("model.encoder.conv1", "encoder/conv1")
        self.linear("model.encoder.conv2", "encoder/conv2")
        self.tensor("model.encoder.embed_positions.weight", "encoder/position_encodings/encodings")
        for i in range(n_layers):
            s, d = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
            self.self_attention(d, s)
            self.ffn(d, s)
        self.norm("model.encoder.layer_norm", "encoder/layer_norm")

    def decoder(self, n_layers: int) -> None:
        self.tensor("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
        self.tensor("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings")
        for i in range(n_layers):
            s, d = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
            self.self_attention(d, s)
            self.cross_attention(d, s)
            self.ffn(d, s)
        self.norm("model.decoder.layer_norm", "decoder/layer_norm")


def _check_tied_projection(m: Ct2Model, sd: dict[str, torch.Tensor], path: str) -> None:
    """HF Whisper ties proj_out to embed_tokens, so an untied output projection cannot be kept."""
    if "decoder/projection/weight" in m:
        proj = _t(m, "decoder/projection/weight", path)
        if not torch.equal(proj, sd["model.decoder.embed_tokens.weight"]):
            raise Ct2WhisperError(f"{path}: decoder/projection/weight differs from decoder/embeddings/weight; "
                                  "Whisper ties them")


def _whisper_config(m: Ct2Model, sd: dict[str, torch.Tensor], n_enc: int, n_dec: int, path: str) -> dict:
    """WhisperConfig keyword arguments read off the tensor shapes and the head-count scalars."""
    enc_heads, dec_heads = _scalar(m, "encoder/num_heads", path), _scalar(m, "decoder/num_heads", path)
    conv1 = sd["model.encoder.conv1.weight"]
    return dict(
        vocab_size=sd["model.decoder.embed_tokens.weight"].shape[0],
        num_mel_bins=conv1.shape[1], d_model=conv1.shape[0],
        encoder_layers=n_enc, decoder_layers=n_dec,
        encoder_attention_heads=enc_heads, decoder_attention_heads=dec_heads,
        encoder_ffn_dim=sd["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=sd["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=sd["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=sd["model.decoder.embed_positions.weight"].shape[0],
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
    )


def ct2_whisper_state(m: Ct2Model, path: str = "model.bin") -> tuple[dict, dict[str, torch.Tensor]]:
    """(WhisperConfig keyword arguments, HF state dict in float32) from a read WhisperSpec model."""
    _check_whisper_semantics(m, path)
    n_enc, n_dec = _layer_count(m, "encoder"), _layer_count(m, "decoder")
    mapper = _StateMapper(m, path)
    mapper.encoder(n_enc)
    mapper.decoder(n_dec)
    _check_tied_projection(m, mapper.sd, path)
    return _whisper_config(m, mapper.sd, n_enc, n_dec, path), mapper.sd


def _special_ids(tokenizer_json: Path) -> dict[str, int]:
    try:
        added = json.loads(tokenizer_json.read_text())["added_tokens"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise Ct2WhisperError(f"{tokenizer_json}: cannot read added_tokens ({e})") from None
    return {a["content"]: int(a["id"]) for a in added}


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` (config, safetensors, generation config, feature extractor, tokenizer)."""
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperTokenizerFast)
    ct2_dir, out = Path(ct2_dir), Path(out_dir)
    model_bin, tok_json, cfg_json = ct2_dir / "model.bin", ct2_dir / "tokenizer.json", ct2_dir / "config.json"
    for f in (model_bin, tok_json):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing (a CTranslate2 Whisper folder holds model.bin and tokenizer.json)")
    ct2_cfg = json.loads(cfg_json.read_text()) if cfg_json.is_file() else {}
    kwargs, sd = ct2_whisper_state(read_ct2_model(model_bin), str(model_bin))
    sp = _special_ids(tok_json)
    for t in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
        if t not in sp:
            raise Ct2WhisperError(f"{tok_json}: special token {t} missing")
    eot, sot, no_ts = sp["<|endoftext|>"], sp["<|startoftranscript|>"], sp["<|notimestamps|>"]
    multilingual = kwargs["vocab_size"] >= 51865
    suppress = [int(i) for i in ct2_cfg.get("suppress_ids", [])]
    begin_suppress = [int(i) for i in ct2_cfg.get("suppress_ids_begin", [220, eot])]
    config = WhisperConfig(**kwargs, pad_token_id=eot, bos_token_id=sot, eos_token_id=eot,
                           decoder_start_token_id=sot)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]       # tied to embed_tokens
    if missing or unexpected:
        raise Ct2WhisperError(f"{model_bin}: mapping incomplete; missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    gen = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=sot, eos_token_id=eot, pad_token_id=eot,
        max_length=kwargs["max_target_positions"], suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress, no_timestamps_token_id=no_ts,
        is_multilingual=multilingual, return_timestamps=False,
        alignment_heads=ct2_cfg.get("alignment_heads"),
    )
    if multilingual:
        gen.lang_to_id = {t: i for t, i in sp.items() if re.fullmatch(r"<\|[a-z]{2,3}\|>", t)}
        gen.task_to_id = {"transcribe": sp.get("<|transcribe|>"), "translate": sp.get("<|translate|>")}
    model.generation_config = gen
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    WhisperFeatureExtractor(feature_size=kwargs["num_mel_bins"]).save_pretrained(str(out))
    WhisperTokenizerFast(tokenizer_file=str(tok_json), bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                         unk_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(str(out))
    (out / "omni_ds_source.json").write_text(json.dumps(
        {"converted_from": str(ct2_dir), "ct2_binary": "model.bin", "by": "omni_ds.realsmall.ct2_whisper"}, indent=2))
    return out


class Transcriber:
    """Greedy transcripts with transformers' own front end and decoding (a check of the conversion
    that shares nothing with omni_ds's log-mel or the converter's name mapping)."""

    def __init__(self, whisper_dir: str | Path):
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast
        self.model = WhisperForConditionalGeneration.from_pretrained(str(whisper_dir)).eval()
        self.fe = WhisperFeatureExtractor.from_pretrained(str(whisper_dir))
        self.tok = WhisperTokenizerFast.from_pretrained(str(whisper_dir))

    @torch.no_grad()
    def __call__(self, wav: str | Path, max_new_tokens: int = 64) -> str:
        from omni_ds.data.audio import load_audio
        feats = self.fe(load_audio(str(wav)), sampling_rate=16000, return_tensors="pt").input_features
        ids = self.model.generate(feats, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
        return self.tok.decode(ids[0], skip_special_tokens=True).strip()
