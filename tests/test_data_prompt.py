"""Prompt ids and labels: REFERENCE.md's Llama-3 format, one BOS, one placeholder, exact masks."""
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from omni_ds.constants import DEFAULT_INSTRUCTION, IGNORE_INDEX, SPEECH_TOKEN_INDEX, SYSTEM_PROMPT
from omni_ds.data.prompt import PromptBuilder, PromptError, PromptTooLong
from omni_ds.tiny.tokenizer import build_tiny_tokenizer, write_tiny_tokenizer

RESPONSE = "The capital of France is Paris."


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


@pytest.fixture(scope="module")
def chatml_tok():
    """The tiny BPE with ChatML specials and a ChatML template (as Qwen2.5 / SmolLM2 use)."""
    t = build_tiny_tokenizer()
    t.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    t.post_processor = None
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                "'<|im_end|>' + '\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>",
                                   pad_token="<|finetune_right_pad_id|>", chat_template=template)


def _split(tok, ids):
    i = ids.index(SPEECH_TOKEN_INDEX)
    return tok.decode(ids[:i]), tok.decode(ids[i + 1:])


def test_llama3_ids_text_and_labels(tok):
    out = PromptBuilder(tok).build(RESPONSE)
    ids, labels = out["input_ids"], out["labels"]
    assert len(ids) == len(labels) and ids.count(SPEECH_TOKEN_INDEX) == 1
    before, after = _split(tok, ids)
    assert before == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                      f"{SYSTEM_PROMPT}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
    assert after == (f"\n{DEFAULT_INSTRUCTION}<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
                     f"\n\n{RESPONSE}<|eot_id|>")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    sup = [k for k, l in enumerate(labels) if l != IGNORE_INDEX]
    # supervised = one contiguous tail: the response tokens + the final <|eot_id|>
    assert sup == list(range(len(ids) - len(sup), len(ids)))
    assert tok.decode([labels[k] for k in sup]) == RESPONSE + "<|eot_id|>"
    assert [labels[k] for k in sup] == ids[sup[0]:]
    assert labels[-1] == tok.convert_tokens_to_ids("<|eot_id|>")
    assert out["n_response"] == len(sup) and not out["truncated"]


def test_generation_prompt(tok):
    out = PromptBuilder(tok).build()
    assert set(out["labels"]) == {IGNORE_INDEX}
    assert _split(tok, out["input_ids"])[1].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    full = PromptBuilder(tok).build(RESPONSE)["input_ids"]
    assert full[:len(out["input_ids"])] == out["input_ids"]     # training prefix == inference prompt


def test_custom_system_and_instruction(tok):
    b = PromptBuilder(tok, system_prompt="Be brief.", instruction="Answer it.")
    before, after = _split(tok, b.build(RESPONSE)["input_ids"])
    assert "Be brief.<|eot_id|>" in before and after.startswith("\nAnswer it.<|eot_id|>")
    _, after2 = _split(tok, b.build(RESPONSE, instruction="Per record.")["input_ids"])
    assert after2.startswith("\nPer record.<|eot_id|>")


def test_tokenizer_template_equals_llama3_for_llama3_tokenizer(tok):
    assert PromptBuilder(tok, template="tokenizer").build(RESPONSE) == PromptBuilder(tok).build(RESPONSE)


def test_chatml_template_masking(chatml_tok):
    b = PromptBuilder(chatml_tok, template="tokenizer")
    out = b.build(RESPONSE)
    ids, labels = out["input_ids"], out["labels"]
    assert ids.count(SPEECH_TOKEN_INDEX) == 1
    before, after = _split(chatml_tok, ids)
    assert before == f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
    assert after == f"\n{DEFAULT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n{RESPONSE}<|im_end|>\n"
    sup = [l for l in labels if l != IGNORE_INDEX]
    assert chatml_tok.decode(sup) == RESPONSE + "<|im_end|>"     # the trailing newline unsupervised
    assert labels[-1] == IGNORE_INDEX


def test_llama3_template_needs_llama3_specials():
    from tokenizers import Tokenizer, models, pre_tokenizers
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel()
    t.add_tokens([chr(c) for c in range(32, 127)])
    with pytest.raises(ValueError, match="Llama-3 special token"):
        PromptBuilder(PreTrainedTokenizerFast(tokenizer_object=t), template="llama3")
    with pytest.raises(ValueError, match="chat_template"):
        PromptBuilder(PreTrainedTokenizerFast(tokenizer_object=t), template="tokenizer")


def test_truncation_cuts_response_tail_only(tok):
    full = PromptBuilder(tok).build(RESPONSE)
    n_prompt = full["n_prompt"]
    b = PromptBuilder(tok, model_max_length=n_prompt + 3)
    out = b.build(RESPONSE)
    assert out["truncated"] and out["input_ids"] == full["input_ids"][:n_prompt + 3]
    assert [l for l in out["labels"] if l != IGNORE_INDEX] == full["input_ids"][n_prompt:n_prompt + 3]
    # the placeholder counts as `speech_positions` LLM positions
    with pytest.raises(PromptTooLong, match="no response token would remain"):
        b.build(RESPONSE, speech_positions=4)
    assert b.build(RESPONSE, speech_positions=3)["n_response"] == 1
    with pytest.raises(PromptTooLong):
        PromptBuilder(tok, model_max_length=n_prompt).build(RESPONSE)
    with pytest.raises(PromptTooLong):
        PromptBuilder(tok, model_max_length=n_prompt - 1).build()   # prompt alone overflows


def test_placeholder_in_system_prompt_rejected(tok):
    with pytest.raises(PromptError, match="exactly one"):
        PromptBuilder(tok, system_prompt="Use <speech> well.").build(RESPONSE)


def test_unknown_template(tok):
    with pytest.raises(ValueError, match="allowed"):
        PromptBuilder(tok, template="vicuna")
