"""The real-small converters on tiny files written here: nothing large is downloaded.

- CTranslate2 model.bin: bytes laid out by hand (independently of the writer) read back; writer/reader
  round trip with aliases and every data type.
- CTranslate2 Whisper -> HF: a tiny random HF Whisper is turned into CTranslate2 variables by the
  inverse mapping written out in this file, converted back, and must give identical tensors and
  identical encoder/decoder outputs.
- GGUF -> HF Llama: a tiny Llama written as GGUF with the `gguf` package (llama.cpp's q/k row
  permutation applied here) is exported and must give the original model's logits and a ChatML
  tokenizer that ends turns with <|im_end|> (skipped with the reason when `gguf` is not installed).
- The spoken-question set and the stage-1 config of the variant.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from omni_ds.hf_compat import rope_parameters
from omni_ds.realsmall.ct2 import Ct2FormatError, read_ct2_model, write_ct2_model


# ---- CTranslate2 model.bin -------------------------------------------------------------------------
def _s(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def test_ct2_reader_reads_hand_laid_bytes(tmp_path):
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    bf16 = np.array([1.5, -2.0], dtype=np.float32)
    bf16_bits = (bf16.view(np.uint32) >> 16).astype("<u2")
    body = [struct.pack("<I", 6), _s("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", 3),
            _s("a/weight"), struct.pack("<B", 2), struct.pack("<II", 2, 3), struct.pack("<B", 4),
            struct.pack("<I", w.nbytes), w.astype("<f2").tobytes(),
            _s("a/num_heads"), struct.pack("<B", 0), struct.pack("<B", 2), struct.pack("<I", 2),
            struct.pack("<h", 6),
            _s("b/gamma"), struct.pack("<B", 1), struct.pack("<I", 2), struct.pack("<B", 5),
            struct.pack("<I", 4), bf16_bits.tobytes(),
            struct.pack("<I", 1), _s("c/weight"), _s("a/weight")]
    p = tmp_path / "model.bin"
    p.write_bytes(b"".join(body))
    m = read_ct2_model(p)
    assert (m.binary_version, m.spec_name, m.spec_revision) == (6, "WhisperSpec", 3)
    assert m.get("a/weight").dtype == np.float16 and np.array_equal(m.get("a/weight"), w)
    assert int(m.get("a/num_heads")) == 6
    assert np.array_equal(m.get("b/gamma"), bf16)
    assert np.array_equal(m.get("c/weight"), w) and "c/weight" in m


def test_ct2_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    vars_ = {"x/w": rng.standard_normal((4, 5)).astype(np.float32),
             "x/h": rng.standard_normal((3,)).astype(np.float16),
             "x/i8": np.int8(3), "x/i16": np.int16(-1), "x/i32": np.arange(4, dtype=np.int32)}
    p = tmp_path / "model.bin"
    write_ct2_model(p, "TestSpec", vars_, aliases={"y/w": "x/w"}, spec_revision=2)
    m = read_ct2_model(p)
    assert m.spec_name == "TestSpec" and m.spec_revision == 2
    for k, v in vars_.items():
        assert m.get(k).dtype == np.asarray(v).dtype and np.array_equal(m.get(k), v)
    assert np.array_equal(m.get("y/w"), vars_["x/w"])
    data = p.read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:40])
    with pytest.raises(Ct2FormatError, match="cut.bin: truncated"):
        read_ct2_model(tmp_path / "cut.bin")
    (tmp_path / "v9.bin").write_bytes(struct.pack("<I", 9) + data[4:])
    with pytest.raises(Ct2FormatError, match="binary version 9"):
        read_ct2_model(tmp_path / "v9.bin")


# ---- CTranslate2 Whisper -> HF ---------------------------------------------------------------------
def _tiny_whisper(vocab: int):
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=vocab, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=50, max_target_positions=16,
                        pad_token_id=vocab - 3, bos_token_id=vocab - 2, eos_token_id=vocab - 3,
                        decoder_start_token_id=vocab - 2)
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():       # non-trivial norms and biases, so a swapped name cannot pass
        for n, p in model.named_parameters():
            if n.endswith("bias") or "layer_norm" in n:
                p.normal_(0, 0.5)
    return model


def _to_ct2_variables(model) -> dict[str, np.ndarray]:
    """HF Whisper -> CTranslate2 WhisperSpec names (the inverse of the converter, written out here)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    out: dict[str, np.ndarray] = {}

    def ln(dst, src):
        out[dst + "/gamma"], out[dst + "/beta"] = sd[src + ".weight"], sd[src + ".bias"]

    def lin(dst, src):
        out[dst + "/weight"], out[dst + "/bias"] = sd[src + ".weight"], sd[src + ".bias"]

    def fused(dst, src, parts):
        out[dst + "/weight"] = np.concatenate([sd[f"{src}.{p}_proj.weight"] for p in parts])
        out[dst + "/bias"] = np.concatenate([sd[f"{src}.{p}_proj.bias"] if p != "k"
                                             else np.zeros_like(sd[f"{src}.q_proj.bias"]) for p in parts])

    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    out["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    for i in range(model.config.encoder_layers):
        e, h = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        ln(f"{e}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        fused(f"{e}/self_attention/linear_0", f"{h}.self_attn", "qkv")
        lin(f"{e}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        ln(f"{e}/ffn/layer_norm", f"{h}.final_layer_norm")
        lin(f"{e}/ffn/linear_0", f"{h}.fc1")
        lin(f"{e}/ffn/linear_1", f"{h}.fc2")
    ln("encoder/layer_norm", "model.encoder.layer_norm")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    for i in range(model.config.decoder_layers):
        e, h = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        ln(f"{e}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        fused(f"{e}/self_attention/linear_0", f"{h}.self_attn", "qkv")
        lin(f"{e}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        ln(f"{e}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
        lin(f"{e}/attention/linear_0", f"{h}.encoder_attn.q_proj")
        out[f"{e}/attention/linear_1/weight"] = np.concatenate(
            [sd[f"{h}.encoder_attn.k_proj.weight"], sd[f"{h}.encoder_attn.v_proj.weight"]])
        out[f"{e}/attention/linear_1/bias"] = np.concatenate(
            [np.zeros_like(sd[f"{h}.encoder_attn.v_proj.bias"]), sd[f"{h}.encoder_attn.v_proj.bias"]])
        lin(f"{e}/attention/linear_2", f"{h}.encoder_attn.out_proj")
        ln(f"{e}/ffn/layer_norm", f"{h}.final_layer_norm")
        lin(f"{e}/ffn/linear_0", f"{h}.fc1")
        lin(f"{e}/ffn/linear_1", f"{h}.fc2")
    ln("decoder/layer_norm", "model.decoder.layer_norm")
    for side, heads in (("encoder", model.config.encoder_attention_heads),
                        ("decoder", model.config.decoder_attention_heads)):
        out[f"{side}/num_heads"] = np.int16(heads)
        out[f"{side}/pre_norm"] = np.int8(1)
        out[f"{side}/activation"] = np.int8(3)
    out["decoder/scale_embeddings"] = np.int8(0)
    return out


def _byte_level_tokenizer_json(path, specials: list[str]) -> None:
    """A byte-level BPE tokenizer.json with no merges: every byte is a token, then the specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.save(str(path))


def _ct2_whisper_folder(tmp_path, model, specials):
    d = tmp_path / "ct2"
    d.mkdir()
    vars_ = _to_ct2_variables(model)
    vars_ = {k: (v.astype(np.float16) if k.endswith("encodings") else v) for k, v in vars_.items()}
    write_ct2_model(d / "model.bin", "WhisperSpec", vars_, aliases={"decoder/projection/weight":
                                                                   "decoder/embeddings/weight"}, spec_revision=3)
    _byte_level_tokenizer_json(d / "tokenizer.json", specials)
    (d / "config.json").write_text(json.dumps({"suppress_ids": [1, 2], "suppress_ids_begin": [220]}))
    return d


SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]


def test_ct2_whisper_conversion_equals_the_model(tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast
    from omni_ds.realsmall.ct2_whisper import convert_ct2_whisper
    vocab = 256 + len(SPECIALS)
    ref = _tiny_whisper(vocab)
    src = _ct2_whisper_folder(tmp_path, ref, SPECIALS)
    out = convert_ct2_whisper(src, tmp_path / "hf")
    got = WhisperForConditionalGeneration.from_pretrained(str(out)).eval()
    want = ref.state_dict()
    for k, v in got.state_dict().items():
        w = want[k]
        if k.endswith("embed_positions.weight"):
            w = w.half().float()      # stored as float16 in the CT2 file
        assert torch.equal(v, w), k
    assert got.config.num_mel_bins == 80 and got.config.encoder_layers == 2
    assert got.proj_out.weight.data_ptr() == got.model.decoder.embed_tokens.weight.data_ptr()
    torch.manual_seed(1)
    mel = torch.randn(1, 80, 100)
    dec = torch.tensor([[vocab - 2, 5, 7]])
    ref.model.encoder.embed_positions.weight.data = ref.model.encoder.embed_positions.weight.half().float()
    ref.model.decoder.embed_positions.weight.data = ref.model.decoder.embed_positions.weight.half().float()
    with torch.no_grad():
        a = ref(input_features=mel, decoder_input_ids=dec).logits
        b = got(input_features=mel, decoder_input_ids=dec).logits
    assert torch.equal(a, b)
    tok = WhisperTokenizerFast.from_pretrained(str(out))
    assert tok.convert_tokens_to_ids("<|notimestamps|>") == 258
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["no_timestamps_token_id"] == 258 and gen["suppress_tokens"] == [1, 2]


def test_ct2_whisper_refuses_other_semantics(tmp_path):
    from omni_ds.realsmall.ct2 import Ct2Model
    from omni_ds.realsmall.ct2_whisper import Ct2WhisperError, ct2_whisper_state
    vars_ = _to_ct2_variables(_tiny_whisper(259))
    vars_["encoder/activation"] = np.int8(1)          # tanh-approximated GELU: not Whisper
    with pytest.raises(Ct2WhisperError, match="encoder/activation = 1"):
        ct2_whisper_state(Ct2Model(6, "WhisperSpec", 3, vars_))
    vars_ = _to_ct2_variables(_tiny_whisper(259))
    del vars_["decoder/layer_1/attention/linear_2/bias"]
    with pytest.raises(Ct2WhisperError, match="decoder/layer_1/attention/linear_2/bias"):
        ct2_whisper_state(Ct2Model(6, "WhisperSpec", 3, vars_))
    with pytest.raises(Ct2WhisperError, match="spec 'TransformerSpec'"):
        ct2_whisper_state(Ct2Model(6, "TransformerSpec", 1, vars_))


# ---- GGUF -> HF Llama --------------------------------------------------------------------------------
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """The row order llama.cpp stores q/k projections in (pairs of rotary halves interleaved)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_gguf(path, model, tokens: list[str], token_types: list[int], merges: list[str]):
    import gguf
    c = model.config
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny-chatml-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(rope_parameters(c)["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_unk_token_id(tokens.index("<|endoftext|>"))
    w.add_chat_template(CHATML)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {"self_attn.o_proj": "attn_output", "self_attn.v_proj": "attn_v", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        h = f"model.layers.{i}"
        w.add_tensor(f"blk.{i}.attn_q.weight", _llama_cpp_permute(sd[f"{h}.self_attn.q_proj.weight"],
                                                                  c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _llama_cpp_permute(sd[f"{h}.self_attn.k_proj.weight"],
                                                                  c.num_key_value_heads))
        for hf, gg in names.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[f"{h}.{hf}.weight"])
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[f"{h}.input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[f"{h}.post_attention_layernorm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_llm_export_keeps_logits_and_chatml(tmp_path):
    pytest.importorskip("gguf", reason="the `gguf` package is not installed (pip install gguf; "
                                       "tools/prepare_real_small.py installs it)")
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from omni_ds.realsmall.gguf_llm import export_gguf_llm
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġt", "he"]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    merges = ["Ġ t", "h e"]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2)
    ref = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    _write_tiny_gguf(tmp_path / "tiny.gguf", ref, tokens, types, merges)
    out = export_gguf_llm(tmp_path, "tiny.gguf", tmp_path / "hf")

    got = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert got.config.tie_word_embeddings and got.config.eos_token_id == 2
    assert got.lm_head.weight.data_ptr() == got.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 40, 41, 42, 2, 50]])
    with torch.no_grad():
        assert torch.allclose(ref(ids).logits, got(ids).logits, atol=1e-5)

    tok = AutoTokenizer.from_pretrained(str(out))
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    # byte-level BPE with the GGUF's merges, and no BOS added
    assert tok("Hi there").input_ids == [tokens.index(t) for t in ("H", "i", "Ġt", "he", "r", "e")]
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok(text).input_ids) == text


# ---- the data set and the config -------------------------------------------------------------------
def test_question_set_and_stage1_config(tmp_path):
    from omni_ds.realsmall.prepare import stage1_config, word_errors
    from omni_ds.realsmall.qa import splits
    from omni_ds.train.config import build_config
    s = splits()
    assert (len(s["train"]), len(s["val"])) == (56, 8)
    assert not {i for i, _, _ in s["val"]} & {i for i, _, _ in s["train"]}
    for _, q, a in s["train"] + s["val"]:
        assert q.endswith("?") and a.endswith(".") and a.count(".") == 1 and len(a.split()) <= 8, (q, a)
    cfg = build_config(stage1_config(tmp_path), "stage1.json")      # every key it writes is valid
    assert cfg.model.omni["encoder_mode"] == "trimmed" and cfg.precision == "fp32"
    assert cfg.data.prompt_template == "tokenizer"            # SmolLM2 is ChatML
    assert word_errors("What is the capital of Japan?", "what is the capital of japan") == 0
    assert word_errors("two plus three", "two plus four") == 1


def test_80_mel_front_end_matches_whisper_tiny_extractor():
    """Whisper tiny.en takes 80 mel bins: the data pipeline's log-mel at n_mels=80 must equal
    transformers' WhisperFeatureExtractor(feature_size=80) (the 128-bin case is tested elsewhere)."""
    from transformers import WhisperFeatureExtractor
    from omni_ds.data.audio import log_mel
    t = np.arange(16000 * 2) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 1.5 * t)).astype(np.float32)
    wave += np.random.default_rng(0).normal(0, 0.01, wave.shape).astype(np.float32)
    ref = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="np").input_features[0]
    mel, frames = log_mel(wave, n_mels=80, mode="padded")
    assert mel.shape == (80, 3000) and frames == 3000
    assert np.abs(mel.numpy() - ref).max() < 1e-4
