"""Dataset + collator: the batch contract of docs/ARCHITECTURE.md, stage 2 units, load failures."""
import os

import pytest
import torch
from transformers import AutoTokenizer

from data_fixtures import copy_real, flat, write_jsonl
from omni_ds.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omni_ds.data.audio import load_audio, log_mel
from omni_ds.data.collator import OmniCollator
from omni_ds.data.dataset import OmniSpeechDataset
from omni_ds.data.manifest import load_manifest
from omni_ds.data.prompt import PromptBuilder
from omni_ds.data.sampler import Batching, DistributedBatchSampler
from omni_ds.data.validate import DataError, ValidationConfig
from omni_ds.tiny.tokenizer import write_tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


@pytest.fixture
def manifest(tmp_path):
    clips = copy_real(tmp_path / "audio", 3)
    recs = [flat(f"audio/{c.name}", response=r, units=u) for c, r, u in
            zip(clips, ["Yes.", "A much longer answer with several words in it.", "No, thanks."],
                [[1, 2, 3], [4, 5, 6, 7, 8], [999]])]
    recs.append(flat("audio/missing.wav"))                       # skipped at validation
    return load_manifest(write_jsonl(tmp_path / "m.jsonl", recs))


@pytest.mark.parametrize("mode", ["padded", "trimmed"])
def test_batch_contract(manifest, tok, mode):
    ds = OmniSpeechDataset(manifest, PromptBuilder(tok), ValidationConfig(mel_mode=mode))
    assert len(ds) == 3 and ds.n_skipped == 1 and list(ds.indices) == [0, 1, 2]
    items = [ds[i] for i in range(3)]
    batch = OmniCollator(tok.pad_token_id)(items)
    assert list(batch) == ["input_ids", "labels", "attention_mask", "speech_mel", "speech_frames",
                           "sample_index"]
    B, L = batch["input_ids"].shape
    lens = [len(it["input_ids"]) for it in items]
    assert B == 3 and L == max(lens)
    for b, it in enumerate(items):
        n = lens[b]
        assert torch.equal(batch["input_ids"][b, :n], it["input_ids"])
        assert (batch["input_ids"][b, n:] == tok.pad_token_id).all()
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (L - n)
        assert (batch["input_ids"][b] == SPEECH_TOKEN_INDEX).sum() == 1
        sup = batch["labels"][b][batch["labels"][b] != IGNORE_INDEX].tolist()
        assert tok.decode(sup) == manifest[b]["response_text"] + "<|eot_id|>"
    assert batch["sample_index"].tolist() == [0, 1, 2]
    for t in batch.values():
        assert t.dtype == (torch.float32 if t.dim() == 3 else torch.long)
    frames = batch["speech_frames"].tolist()
    mel = batch["speech_mel"]
    ref = [log_mel(load_audio(manifest[b]["speech_path"]))[0] for b in range(3)]
    if mode == "padded":
        assert mel.shape == (3, 128, 3000) and frames == [3000] * 3
        assert all(torch.equal(mel[b], ref[b]) for b in range(3))
    else:
        assert mel.shape == (3, 128, max(frames)) and frames == [216, 842, 374]
        for b in range(3):
            assert torch.equal(mel[b, :, :frames[b]], ref[b][:, :frames[b]])
            assert (mel[b, :, frames[b]:] == ref[b].min()).all()


def test_stage2_units_padded(manifest, tok):
    ds = OmniSpeechDataset(manifest, PromptBuilder(tok), ValidationConfig(stage=2))
    batch = OmniCollator(tok.pad_token_id)([ds[i] for i in range(3)])
    assert batch["units"].tolist() == [[1, 2, 3, -100, -100], [4, 5, 6, 7, 8], [999, -100, -100, -100, -100]]
    assert list(batch)[-2:] == ["units", "sample_index"]


def test_dataloader_with_sampler(manifest, tok):
    ds = OmniSpeechDataset(manifest, PromptBuilder(tok), ValidationConfig(mel_mode="trimmed"))
    sampler = DistributedBatchSampler(ds.lengths, batch_size=2, seed=3, batching=Batching("length_grouped"))
    dl = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=OmniCollator(tok.pad_token_id))
    seen = sorted(i for b in dl for i in b["sample_index"].tolist())
    assert seen == [0, 1, 2]


def test_file_vanishing_after_validation(manifest, tok):
    builder = PromptBuilder(tok)
    ds = OmniSpeechDataset(manifest, builder, ValidationConfig())
    gone = manifest[1]["speech_path"]
    os.remove(gone)
    item = ds[1]                                   # skip policy: a marker, no record stands in
    assert item["sample_index"] == 1 and set(item) == {"load_failed", "sample_index"}
    assert "record m.jsonl:1" in item["load_failed"] and gone in item["load_failed"]
    batch = OmniCollator(tok.pad_token_id)([ds[0], ds[1], ds[2]])
    assert batch["sample_index"].tolist() == [0, 2] and batch["input_ids"].shape[0] == 2
    assert batch["load_failures"] == [item["load_failed"]]
    with pytest.raises(DataError, match="every record of a micro-batch failed to load"):
        OmniCollator(tok.pad_token_id)([ds[1]])
    strict = OmniSpeechDataset(manifest, builder, ValidationConfig(on_bad="error"),
                               report=ds.report)
    with pytest.raises(DataError, match=r"record m.jsonl:1 \(manifest index 1\)") as e:
        strict[1]
    assert e.value.record_id == "m.jsonl:1"


def test_error_policy_at_construction(manifest, tok):
    with pytest.raises(DataError, match="m.jsonl:3: missing file"):
        OmniSpeechDataset(manifest, PromptBuilder(tok), ValidationConfig(on_bad="error"))


def test_collator_needs_pad_id():
    with pytest.raises(ValueError, match="pad token"):
        OmniCollator(None)
