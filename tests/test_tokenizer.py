"""The offline Llama-3-style tokenizer: specials, BOS post-processor, chat template, determinism."""
import hashlib

import pytest
from transformers import AutoTokenizer

from omni_ds.tiny.tokenizer import CHAT_TEMPLATE, write_tiny_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(str(tok_dir))


def test_special_tokens_have_llama3_names(tok):
    assert tok.bos_token == "<|begin_of_text|>"
    assert tok.eos_token == "<|eot_id|>"
    assert tok.pad_token == "<|finetune_right_pad_id|>"
    for name in ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>"]:
        ids = tok(name, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [name]
    assert 1000 <= len(tok) <= 2000
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3


def test_bos_prepended_once_and_roundtrip(tok):
    text = "What is the capital of France? Ünïcode ✓ 123456"
    with_bos = tok(text).input_ids
    without = tok(text, add_special_tokens=False).input_ids
    assert with_bos == [tok.bos_token_id] + without
    assert tok.decode(without) == text          # byte-level: any text round-trips
    assert tok.unk_token_id is None or tok.unk_token_id not in without


def test_chat_template_is_llama3(tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "<speech>\nQ"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\n<speech>\nQ<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.chat_template == CHAT_TEMPLATE


def test_deterministic_files(tmp_path):
    def digest(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
    a = write_tiny_tokenizer(tmp_path / "a")
    b = write_tiny_tokenizer(tmp_path / "b")
    assert digest(a) == digest(b)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(digest(a))
