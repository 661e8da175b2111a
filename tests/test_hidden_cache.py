"""Stage-2 hidden-state cache: built once, reused, invalidated, and loss-identical to no cache."""
import json

import torch

from omni_ds.data.collator import OmniCollator
from omni_ds.data.dataset import OmniSpeechDataset
from omni_ds.data.manifest import load_manifest
from omni_ds.data.prompt import PromptBuilder
from omni_ds.data.validate import ValidationConfig
from omni_ds.model.checkpoint import build_from_parts, save_omni_folder
from omni_ds.tiny.models import tiny_omni_config
from omni_ds.train.hidden_cache import (CachedStatesDataset, HiddenStateCache, StateSource, cache_key,
                                        collate_cached)


def make_stage2_set(tmp_path, real_clips, tiny_parts):
    tok, whisper, llm = tiny_parts
    g = torch.Generator().manual_seed(0)
    records = [{"id": f"r{i}", "speech_instruction_path": str(c), "text_instruction": "question",
                "text_response": f"answer number {i} is short", "speech_response_path": str(c),
                "units": torch.randint(0, 1000, (int(torch.randint(5, 40, (1,), generator=g)),), generator=g).tolist()}
               for i, c in enumerate(real_clips[:5])]
    manifest = tmp_path / "train_units.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    torch.manual_seed(0)
    model, tokenizer = build_from_parts(whisper, llm, tiny_omni_config(encoder_mode="trimmed"))
    save_omni_folder(tmp_path / "stage1", model, tokenizer)
    data = OmniSpeechDataset(load_manifest(manifest), PromptBuilder(tokenizer),
                             ValidationConfig(stage=2, mel_mode="trimmed"))
    return model.set_stage(2).eval(), tokenizer, data, manifest


def test_cached_and_uncached_losses_are_equal(tmp_path, real_clips, tiny_parts):
    model, tokenizer, data, manifest = make_stage2_set(tmp_path, real_clips, tiny_parts)
    key = cache_key(tmp_path / "stage1", manifest, {"encoder_mode": "trimmed"})
    cache = HiddenStateCache(tmp_path / "cache", key, dtype="fp32")
    collate = OmniCollator(tokenizer.pad_token_id)
    # two "ranks" writing their shares, as a 2-rank run does (no process group needed here)
    for rank in (0, 1):
        cache.build(StateSource(model, data, collate, batch_size=2, device="cpu", float_dtype=torch.float32),
                    rank=rank, world=2)
    assert cache.complete and len(list(cache.dir.glob("part-*.json"))) == 2
    cached = CachedStatesDataset(data, cache)
    for rows in ([0, 1], [2, 3, 4]):
        live = model(**collate([data[i] for i in rows]))
        hit = model(**collate_cached([cached[i] for i in rows]))
        torch.testing.assert_close(hit["loss"], live["loss"], rtol=1e-5, atol=1e-5)
        assert hit["n_targets"] == live["n_targets"]


def test_cache_key_changes_with_model_data_and_settings(tmp_path, real_clips, tiny_parts):
    model, tokenizer, data, manifest = make_stage2_set(tmp_path, real_clips, tiny_parts)
    base = cache_key(tmp_path / "stage1", manifest, {"encoder_mode": "trimmed"})
    assert base == cache_key(tmp_path / "stage1", manifest, {"encoder_mode": "trimmed"})
    assert base != cache_key(tmp_path / "stage1", manifest, {"encoder_mode": "padded"})
    manifest.write_text(manifest.read_text().replace("answer number 0", "answer number zero"))
    assert base != cache_key(tmp_path / "stage1", manifest, {"encoder_mode": "trimmed"})
    cfg = tmp_path / "stage1" / "config.json"
    cfg.write_text(cfg.read_text().replace('"ctc_upsample_factor": 25', '"ctc_upsample_factor": 24'))
    assert base != cache_key(tmp_path / "stage1", manifest, {"encoder_mode": "trimmed"})


def test_bf16_cache_is_close_and_half_the_size(tmp_path, real_clips, tiny_parts):
    model, tokenizer, data, manifest = make_stage2_set(tmp_path, real_clips, tiny_parts)
    collate = OmniCollator(tokenizer.pad_token_id)
    sizes = {}
    for dtype in ("fp32", "bf16"):
        cache = HiddenStateCache(tmp_path / "cache", f"k-{dtype}", dtype=dtype)
        cache.build(StateSource(model, data, collate, batch_size=3, device="cpu", float_dtype=torch.float32))
        sizes[dtype] = sum(p.stat().st_size for p in cache.dir.glob("*.bin"))
        states = CachedStatesDataset(data, cache)[1]["response_states"]
        ref = collate([data[1]])
        live, n = model.response_hidden_states(ref["input_ids"], ref["attention_mask"], ref["labels"],
                                               ref["speech_mel"], ref["speech_frames"])
        torch.testing.assert_close(states, live[0, : int(n[0])], rtol=1e-2, atol=1e-2)
    assert sizes["bf16"] * 2 == sizes["fp32"]
