"""An offline Llama-3-style tokenizer for tests and the demo.

A small byte-level BPE trained in memory on a built-in English corpus, carrying the Llama-3
special tokens under their Llama-3 names, a post-processor that prepends `<|begin_of_text|>`
(as the real Llama-3 tokenizer does) and the Llama-3 chat template. Training is deterministic,
so the written files are byte-identical run to run.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<|begin_of_text|>"
EOT_TEXT = "<|end_of_text|>"
EOT = "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"

# Appended after the BPE vocabulary (Llama-3 puts its specials after the regular tokens too).
SPECIAL_TOKENS = [
    BOS,
    EOT_TEXT,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    PAD,
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    EOT,
    "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(3, 8)]

# An upper bound: the small corpus runs out of merges first (994 tokens + 16 specials = 1010 ids).
BPE_VOCAB_SIZE = 1008

# Llama-3 splits text with this regex before byte-level BPE (contractions, letter runs,
# digit groups of up to three, punctuation runs, newlines, spaces).
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama-3-Instruct's chat format: BOS once, a header per turn, content trimmed, <|eot_id|> after
# each turn, and the assistant header when a generation prompt is asked for.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Everyday English plus the project's own prompt wording, so prompts tokenise compactly.
_CORPUS = """
You are a helpful language and speech assistant. You are able to understand the speech content
that the user provides, and assist the user with a variety of tasks using natural language.
Please directly answer the questions in the user's speech. Please answer the questions in the
user's input speech.
What is the capital of France? The capital of France is Paris. How do I bake a loaf of bread?
Mix flour, water, salt and yeast, let the dough rise for an hour, then bake it in a hot oven.
What are some good ways to stay healthy? Eat vegetables and fruit, sleep well, drink water, and
walk or exercise every day. Can you recommend a book to read this summer? I would suggest a
classic novel, a short story collection, or a popular science book about the stars and planets.
How do I learn to play the guitar? Start with a few simple chords, practice a little every day,
and play songs you like. Why is the sky blue? Sunlight is scattered by the air, and blue light is
scattered more than red light, so the sky looks blue during the day.
Tell me a joke. Why did the computer go to the doctor? Because it had a virus!
What is the difference between weather and climate? Weather is what happens today; climate is the
average over many years. How many legs does a spider have? A spider has eight legs.
Write a short poem about the sea. The sea is wide, the waves are high, the gulls are singing in
the sky. Give me three tips for a job interview: be on time, know the company, ask questions.
How can I improve my time management skills? Make a list, set priorities, and take short breaks.
What are the most effective ways to deal with stress? Breathe slowly, talk to a friend, go for a
walk, and get enough sleep. Explain the basics of quantum computing in simple words.
Quantum computers use qubits, which can hold zero and one at the same time, to solve some
problems faster than ordinary computers. What are the main differences between Python and
JavaScript programming languages? How do vaccines work to protect individuals and communities?
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 20 25 30 50 100 200 1000 2024 3.14 1,000,000.
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June
July August September October November December. Yes, no, maybe, thank you, hello, goodbye.
"I'm sure it's fine," she said. "We'll see; they've already left, and you'd better hurry."
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with one step.
"""


def build_tiny_tokenizer() -> Tokenizer:
    """Train the byte-level BPE and attach the Llama-3 specials and BOS post-processor."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        # Every byte is in the base alphabet, so any text encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Repeat the corpus so frequent words win merges over noise; order is fixed -> deterministic.
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0",
        pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return tok


def write_tiny_tokenizer(out_dir) -> Path:
    """Write a `PreTrainedTokenizerFast` folder loadable with `AutoTokenizer.from_pretrained`."""
    from transformers import PreTrainedTokenizerFast

    from omni_ds.hf_compat import save_portable_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tiny_tokenizer(),
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        model_max_length=2048,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    save_portable_tokenizer(fast, out)
    return out
