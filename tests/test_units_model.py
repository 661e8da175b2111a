"""HuBERT loading without fairseq: restricted unpickling, architecture refusal, batched ==
unbatched, k-means .bin vs .npy."""
from __future__ import annotations

import datetime
import pickle

import numpy as np
import pytest
import torch

from units_fixtures import CLIPS, generated_waves
from omni_ds.data.audio import load_audio
from omni_ds.tiny.hubert import write_tiny_hubert, write_tiny_kmeans
from omni_ds.units.extract import FeatureExtractor, UnitExtractor, merge_repeats
from omni_ds.units.fairseq_checkpoint import (StandIn, load_fairseq_checkpoint,
                                              save_fairseq_checkpoint)
from omni_ds.units.hubert import load_hubert
from omni_ds.units.kmeans import NearestCentroid, load_centroids, save_centroids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("units_model")
    ckpt = write_tiny_hubert(d / "tiny.pt", seed=1)
    km = write_tiny_kmeans(ckpt, CLIPS[:4], d / "km.bin", n_clusters=40, seed=0)
    yield d, ckpt, km
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def waves():
    return [load_audio(p) for p in CLIPS] + list(generated_waves().values())


def test_checkpoint_reads_without_fairseq_with_inert_dictionary(tiny):
    state = load_fairseq_checkpoint(tiny[1])
    d = state["task_state"]["dictionaries"][0]
    assert isinstance(d, StandIn) and d._ref == ("fairseq.data.dictionary", "Dictionary")
    assert d.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"]     # state kept, no behaviour
    assert state["cfg"]["model"]["encoder_layers"] == 12
    # Written under fairseq's own global name, so fairseq can load the file too.
    import zipfile
    with zipfile.ZipFile(tiny[1]) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"cfairseq.data.dictionary\nDictionary\n" in pkl


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    state = {"model": {"w": torch.zeros(2)}, "cfg": {}, "when": datetime.date(2024, 1, 1)}
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt.*datetime\.date"):
        load_fairseq_checkpoint(tmp_path / "evil.pt")

    class Boom:                       # a reduce that would run os.system under plain pickle
        def __reduce__(self):
            import os
            return (os.system, ("echo should-not-run",))
    with open(tmp_path / "boom.pt", "wb") as f:
        pickle.dump({"model": {}, "x": Boom()}, f)
    with pytest.raises(ValueError, match=r"boom\.pt.*(posix|os)\.system"):
        load_fairseq_checkpoint(tmp_path / "boom.pt")


@pytest.mark.parametrize("field,value", [("layer_norm_first", True),
                                         ("extractor_mode", "layer_norm"),
                                         ("layer_type", "conformer"),
                                         ("pos_conv_depth", 5)])
def test_unmapped_architecture_is_refused(tiny, tmp_path, field, value):
    state = load_fairseq_checkpoint(tiny[1])
    state["cfg"]["model"][field] = value
    save_fairseq_checkpoint(state, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=rf"other\.pt: unsupported HuBERT architecture: {field}="):
        load_hubert(tmp_path / "other.pt")


def test_unknown_or_missing_weights_are_refused(tiny, tmp_path):
    state = load_fairseq_checkpoint(tiny[1])
    state["model"]["encoder.layers.0.adapter.weight"] = torch.zeros(3)
    save_fairseq_checkpoint(state, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="does not know"):
        load_hubert(tmp_path / "extra.pt")
    del state["model"]["encoder.layers.0.adapter.weight"], state["model"]["encoder.layers.3.fc1.bias"]
    save_fairseq_checkpoint(state, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="lacks parameters.*layers.3.fc1.bias"):
        load_hubert(tmp_path / "missing.pt")


def test_mapping_uses_every_weight(tiny):
    """A perturbed weight anywhere in blocks 1..11 or the front end changes layer 11 features;
    a perturbed block 12 (not run) or final_proj does not."""
    state = load_fairseq_checkpoint(tiny[1])
    wave = [load_audio(CLIPS[0])[:16000]]
    base = FeatureExtractor(load_hubert(tiny[1])).features(wave)[0]
    for key, changes in [("feature_extractor.conv_layers.0.2.bias", True),
                         ("encoder.pos_conv.0.weight_g", True),
                         ("encoder.layers.10.final_layer_norm.bias", True),
                         ("encoder.layers.11.fc1.weight", False), ("final_proj.weight", False)]:
        st = {**state, "model": dict(state["model"])}
        st["model"][key] = st["model"][key] + 0.5
        path = tiny[0] / "perturbed.pt"
        save_fairseq_checkpoint(st, path)
        f = FeatureExtractor(load_hubert(path)).features(wave)[0]
        assert bool((f - base).abs().max() > 1e-3) == changes, key


def test_batched_units_equal_unbatched(tiny, waves):
    _, ckpt, km = tiny
    model, centers = load_hubert(ckpt), load_centroids(km)
    single = UnitExtractor(FeatureExtractor(model, batch_seconds=0.001), centers, dedup=False)
    batched = UnitExtractor(FeatureExtractor(model, batch_seconds=60), centers, dedup=False)
    a, b = single.frame_units(waves), batched.frame_units(waves)
    assert [len(x) for x in a] == [len(x) for x in b]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # 123.4 s -> a 100 s chunk (4999 frames) + a 23.4 s chunk (1169 frames), like fairseq.
    assert len(a[len(CLIPS)]) == 4999 + 1169


def test_merge_repeats_and_too_short(tiny):
    assert merge_repeats([3, 3, 1, 1, 1, 3, 2, 2]) == [3, 1, 3, 2]
    assert merge_repeats([]) == []
    fx = FeatureExtractor(load_hubert(tiny[1]))
    assert fx.too_short(399) and fx.too_short(400) is None
    with pytest.raises(ValueError, match="too short"):
        fx.features([np.zeros(100, np.float32)])


def test_kmeans_bin_and_npy_agree(tiny, waves, tmp_path):
    import joblib
    _, ckpt, km = tiny
    c_bin = load_centroids(km)
    npy = save_centroids(c_bin, tmp_path / "km.npy")
    c_npy = load_centroids(npy)
    assert np.array_equal(c_bin, c_npy)
    feats = FeatureExtractor(load_hubert(ckpt)).features(waves[:10])
    x = torch.cat(feats)
    ours = NearestCentroid(c_npy)(x).numpy()
    sk = joblib.load(km).predict(x.numpy())
    assert (ours == sk).mean() >= 0.999, (ours == sk).mean()
    with pytest.raises(ValueError, match="finite"):
        np.save(tmp_path / "bad.npy", np.array([np.nan, 1.0]))
        load_centroids(tmp_path / "bad.npy")


def test_tiny_writers_are_deterministic(tiny, tmp_path):
    import joblib
    d, ckpt, km = tiny
    again = write_tiny_hubert(tmp_path / "tiny.pt", seed=1)    # same name: torch.save puts it
    assert again.read_bytes() == ckpt.read_bytes()              # inside the archive
    km2 = write_tiny_kmeans(again, CLIPS[:4], tmp_path / "km.bin", n_clusters=40, seed=0)
    assert np.array_equal(joblib.load(km2).cluster_centers_, joblib.load(km).cluster_centers_)
    other = write_tiny_hubert(tmp_path / "other" / "tiny.pt", seed=2)
    assert other.read_bytes() != ckpt.read_bytes()
