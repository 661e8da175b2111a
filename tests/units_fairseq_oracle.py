"""The fairseq reference, run inside the oracle venv (tools/install_fairseq_oracle.sh) by the
parity test and the benchmark; never imported by omni_ds.

  save SRC DST         build a HuBERT with fairseq from SRC's config and weights and save it
                       with fairseq's Trainer (fairseq's own checkpoint format)
  units CKPT KM LAYER OUT WAV...
                       fairseq's gslm HubertFeatureReader (one file at a time, CPU, fp32)
                       + scikit-learn KMeans.predict; writes {"units": [[...]], "seconds": s}
  job SPEC.json        save, then fit a k-means on the saved model's fairseq features
                       ({"fit": {"wavs", "k", "seed", "out"}}), then units, in one process

The checkpoints are made by the test itself, so full unpickling (weights_only=False) is fine here.
"""
import json
import os
import sys
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")   # fairseq predates torch 2.6


def save(src: str, dst: str) -> None:
    import torch
    from omegaconf import OmegaConf
    from fairseq import checkpoint_utils, tasks
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models.hubert import HubertConfig
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from fairseq.criterions.hubert_criterion import HubertCriterionConfig
    from fairseq.trainer import Trainer

    state = torch.load(src, map_location="cpu", weights_only=False)
    cfg = OmegaConf.structured(FairseqConfig())
    keep = lambda dc, d: {k: v for k, v in d.items() if k in dc.__dataclass_fields__}
    cfg.model = OmegaConf.structured(HubertConfig(**keep(HubertConfig, state["cfg"]["model"])))
    cfg.task = OmegaConf.structured(
        HubertPretrainingConfig(**keep(HubertPretrainingConfig, state["cfg"]["task"])))
    cfg.criterion = OmegaConf.structured(HubertCriterionConfig(pred_masked_weight=1.0))
    cfg.criterion._name = "hubert"
    cfg.optimizer = {"_name": "adam", "lr": [5e-4], "adam_betas": "(0.9,0.98)",
                     "adam_eps": 1e-6, "weight_decay": 0.01}
    cfg.lr_scheduler = {"_name": "fixed", "warmup_updates": 0}
    cfg.common.cpu = True
    cfg.distributed_training.distributed_world_size = 1
    task = tasks.setup_task(cfg.task)
    task.load_state_dict(state["task_state"])     # the km Dictionary, as training would have
    model = task.build_model(cfg.model)
    model.load_state_dict(state["model"], strict=True)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    trainer.consolidate_optimizer()       # as checkpoint_utils.save_checkpoint does
    trainer.save_checkpoint(dst, {"note": "omni_ds parity oracle"})
    print(f"fairseq saved {dst}")


def units(ckpt: str, km: str, layer: int, out: str, wavs: list[str]) -> None:
    import joblib
    from fairseq.examples.textless_nlp.gslm.speech2unit.pretrained.hubert_feature_reader import (
        HubertFeatureReader)

    reader = HubertFeatureReader(ckpt, layer=layer, use_cuda=False)
    kmeans = joblib.load(km)
    kmeans.verbose = False
    if wavs:        # warm-up, untimed: a fresh process's first call pays one-off set-up costs
        kmeans.predict(reader.get_feats(wavs[0]).cpu().numpy())
    result, start = [], time.perf_counter()
    for wav in wavs:                           # the reference: one utterance at a time
        feats = reader.get_feats(wav).cpu().numpy()
        result.append(kmeans.predict(feats).tolist())
    seconds = time.perf_counter() - start
    with open(out, "w") as f:
        json.dump({"units": result, "seconds": seconds}, f)


def fit(ckpt: str, layer: int, wavs: list[str], k: int, seed: int, out: str) -> None:
    import joblib
    import numpy as np
    from sklearn.cluster import KMeans
    from fairseq.examples.textless_nlp.gslm.speech2unit.pretrained.hubert_feature_reader import (
        HubertFeatureReader)
    reader = HubertFeatureReader(ckpt, layer=layer, use_cuda=False)
    feats = np.concatenate([reader.get_feats(w).numpy() for w in wavs])
    joblib.dump(KMeans(n_clusters=k, n_init=4, random_state=seed).fit(feats), out)


def job(spec_path: str) -> None:
    spec = json.load(open(spec_path))
    save(spec["src"], spec["ckpt"])
    f = spec["fit"]
    fit(spec["ckpt"], spec["layer"], f["wavs"], f["k"], f["seed"], f["out"])
    units(spec["ckpt"], f["out"], spec["layer"], spec["out"], spec["wavs"])
    if spec.get("backend_out"):       # omni_ds's --backend fairseq on the same files
        backend(spec["ckpt"], f["out"], spec["layer"], spec["backend_out"], spec["wavs"])


def backend(ckpt: str, km: str, layer: int, out: str, wavs: list[str]) -> None:
    import joblib
    import soundfile as sf
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from omni_ds.units.fairseq_backend import FairseqUnitExtractor
    ex = FairseqUnitExtractor(ckpt, joblib.load(km).cluster_centers_, layer, dedup=False)
    result = [ex.units([sf.read(w, dtype="float32")[0]])[0] for w in wavs]
    with open(out, "w") as f:
        json.dump({"units": result}, f)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "save":
        save(sys.argv[2], sys.argv[3])
    elif cmd == "job":
        job(sys.argv[2])
    elif cmd == "units":
        units(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6:])
    else:
        raise SystemExit(f"unknown command {cmd}")
