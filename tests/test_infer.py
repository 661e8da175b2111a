"""tools/infer.py on a tiny saved model, and streaming units equal offline units."""
import json
import subprocess
import sys

import torch

from omni_ds.inference import UnitStreamer, answer
from omni_ds.model.checkpoint import build_from_parts, save_omni_folder
from omni_ds.tiny.models import tiny_omni_config
from conftest import REPO


def test_infer_cli_prints_text_ids_and_units(tiny_parts, real_clips, tmp_path):
    tok, whisper, llm = tiny_parts
    model, tokenizer = build_from_parts(whisper, llm, tiny_omni_config())
    save_omni_folder(tmp_path / "m", model, tokenizer)
    cmd = [sys.executable, str(REPO / "tools" / "infer.py"), "--model", str(tmp_path / "m"),
           "--wav", str(real_clips[0]), "--max-new-tokens", "5"]
    out = json.loads(subprocess.run(cmd + ["--json"], check=True, capture_output=True, text=True).stdout)
    assert set(out) == {"text", "token_ids", "units"}
    assert len(out["token_ids"]) <= 5 and all(isinstance(u, int) and 0 <= u < 1000 for u in out["units"])
    # the same answer as the library call, and as the plain-text output
    direct = answer(model, tokenizer, real_clips[0], max_new_tokens=5)
    assert direct["token_ids"] == out["token_ids"] and direct["units"] == out["units"]
    text = subprocess.run(cmd + ["--units-out", str(tmp_path / "u.txt")], check=True,
                          capture_output=True, text=True).stdout
    assert "token_ids:" in text and "units:" in text
    assert (tmp_path / "u.txt").read_text().split() == [str(u) for u in out["units"]]


def test_streaming_chunks_concatenate_to_offline_units(tiny_parts, real_clips):
    tok, whisper, llm = tiny_parts
    model, tokenizer = build_from_parts(whisper, llm, tiny_omni_config())
    offline = answer(model, tokenizer, real_clips[1], max_new_tokens=12)
    for omega in (1, 10, 40):
        streamed = answer(model, tokenizer, real_clips[1], max_new_tokens=12, stream_chunk_units=omega)
        assert streamed["token_ids"] == offline["token_ids"]
        chunks = streamed["unit_chunks"]
        assert [u for c in chunks for u in c] == offline["units"]
        assert all(len(c) >= omega for c in chunks[:-1]) and all(chunks)


def test_unit_streamer_emits_nothing_before_omega():
    torch.manual_seed(0)
    from transformers import LlamaConfig
    from omni_ds.model.ctc_decoder import CTCSpeechGenerator
    gen = CTCSpeechGenerator(LlamaConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=2),
                             "(1,8,2,16)", upsample_factor=25, unit_vocab_size=50).eval()
    streamer = UnitStreamer(gen, chunk_units=10_000)
    for _ in range(3):
        streamer.push(torch.randn(8))
    assert streamer.chunks == []
    streamer.flush()
    assert streamer.chunks == [gen.predict(torch.stack(streamer.states))]
