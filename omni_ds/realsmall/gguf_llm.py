"""A GGUF chat LLM (SmolLM2-135M-Instruct, Q4_1) -> a plain Hugging Face Llama folder.

transformers reads GGUF itself (`gguf_file=`, needs the `gguf` package) and de-quantizes every
tensor to float. That model cannot be saved as it is in every transformers version, so its state
goes into a freshly built `LlamaForCausalLM` from the same config, with the input embedding and
the LM head tied (SmolLM2 ties them; the GGUF stores the embedding once).

The tokenizer transformers builds from a GGUF byte-level BPE is a Llama tokenizer class with a
post-processor that prepends <|im_start|> as BOS and with eos = <|im_start|>: neither is how
SmolLM2-Instruct's own tokenizer behaves (no automatic BOS; a turn ends with <|im_end|>, which is
also its pad token, and the model's config.json says eos_token_id 2 = <|im_end|>). So the
vocabulary and merges are kept as read, and a `PreTrainedTokenizerFast` is written with the
byte-level post-processor and decoder, those special tokens and the GGUF's ChatML chat template.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CHATML_TURN_END = "<|im_end|>"


class GgufLlmError(ValueError):
    """The GGUF does not give a model/tokenizer this exporter can write (message names the file/key)."""


def load_gguf_tokenizer(gguf_dir: str | Path, gguf_file: str, eos_token: str = CHATML_TURN_END):
    from tokenizers import decoders, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    src = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    where = f"{Path(gguf_dir) / gguf_file}"
    template = getattr(src, "chat_template", None)
    if not template:
        raise GgufLlmError(f"{where}: no tokenizer.chat_template in the GGUF metadata")
    vocab = src.get_vocab()
    for t in (eos_token, "<|im_start|>"):
        if t not in vocab:
            raise GgufLlmError(f"{where}: special token {t} not in the vocabulary")
    backend = src.backend_tokenizer
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    unk = src.unk_token if src.unk_token in vocab else None
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token=eos_token,
                                  pad_token=eos_token, unk_token=unk, chat_template=template,
                                  model_max_length=8192, clean_up_tokenization_spaces=False)
    # The same ids as transformers' GGUF tokenizer without its added BOS: checked on a few texts.
    for text in ("Hello world", "What is the capital of France?\n", "<|im_start|>user\nTwo plus two?<|im_end|>\n"):
        a = src(text, add_special_tokens=False).input_ids
        b = tok(text).input_ids
        if a != b or tok.decode(b) != text:
            raise GgufLlmError(f"{where}: rebuilt tokenizer disagrees on {text!r}: {a} vs {b}")
    return tok


def export_gguf_llm(gguf_dir: str | Path, gguf_file: str, out_dir: str | Path,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write `out_dir`: config.json, generation_config.json, model.safetensors, tokenizer files."""
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from omni_ds.hf_compat import save_portable_tokenizer
    gguf_dir, out = Path(gguf_dir), Path(out_dir)
    path = gguf_dir / gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file missing")
    tok = load_gguf_tokenizer(gguf_dir, gguf_file)
    src = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file, dtype=torch.float32)
    cfg = src.config
    if cfg.model_type != "llama":
        raise GgufLlmError(f"{path}: model_type {cfg.model_type!r}; this exporter writes Llama folders")
    keys = cfg.to_dict()
    for k in ("quantization_config", "_name_or_path", "transformers_version", "dtype", "torch_dtype",
              "architectures"):
        keys.pop(k, None)
    eos_id = tok.convert_tokens_to_ids(CHATML_TURN_END)
    keys.update(eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=tok.bos_token_id)
    config = LlamaConfig(**keys)
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    state = {k: v for k, v in src.state_dict().items() if k != "lm_head.weight" or not config.tie_word_embeddings}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise GgufLlmError(f"{path}: state does not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.to(dtype)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos_id,
                                               pad_token_id=eos_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    save_portable_tokenizer(tok, out)
    (out / "omni_ds_source.json").write_text(json.dumps(
        {"converted_from": str(path), "by": "omni_ds.realsmall.gguf_llm", "dequantized_to": str(dtype)}, indent=2))
    return out


@torch.no_grad()
def chat_answer(llm_dir: str | Path, question: str, max_new_tokens: int = 24) -> str:
    """Greedy answer of the exported folder to one user turn (a check that it still works)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype=torch.float32).eval()
    # rendered to text first: with tokenize=True transformers 5 returns a BatchEncoding, 4.x ids
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     tokenize=False)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
