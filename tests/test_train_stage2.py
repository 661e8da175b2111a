"""Stage 2 for real on CPU: launch/stage2.py under the deepspeed launcher, 2 ranks, ZeRO-2, fp32.

Inputs are built here: the tiny models and real clips of `write_tiny_setup`, a "stage-1 folder"
saved from a tiny model built from parts WITHOUT a speech decoder (stage 2 then starts the
decoder from a seeded random init, as from a real stage-1 folder), and synthetic unit targets in
range (20-39 random units per record). val_units.jsonl holds two TRAINING records, so the
validation's unit edit distance measures how well the training samples are fitted.

Runs, shared by the tests of this module (all 2 ranks, fp32, global batch 4, ZeRO-2 unless said):
    cached    cache_hidden_states (fp32 cache), the demo's cosine schedule, STEPS steps, eval at the end
    uncached  ZeRO-3, no cache (the frozen LLM runs inside each step, partitioned), constant lr, 3 steps,
              a checkpoint at step 2
    resumed   uncached's step-2 checkpoint alone in a new output_dir: resumes and runs step 3
    rerun     the cache dir of `cached` (train cache reused), constant lr, 3 steps, a val manifest
              with one unit changed (new val cache)
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from omni_ds.train.demo import demo_stage2_config, write_tiny_stage2_setup
from launcher import DEEPSPEED, free_port, launcher_env

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 420
STEPS = 400




def launch(cfg: dict, path: Path, n: int = 2, ds: str = "zero2"):
    path.write_text(json.dumps(cfg))
    cmd = [DEEPSPEED, "--num_gpus", str(n), "--master_port", str(free_port()), "launch/stage2.py",
           "--config", str(path), "--ds", f"ds_configs/{ds}.json"]
    p = subprocess.run(cmd, cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, f"{path.name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return json.loads((Path(cfg["output_dir"]) / "summary.json").read_text())


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    d = write_tiny_stage2_setup(root / "demo")
    common = dict(learning_rate=1e-2, logging_steps=1, report_to=[], progress_bar=False, save_steps=0)
    short = dict(common, lr_scheduler_type="constant", warmup_ratio=0.0, max_steps=3)
    out = {k: root / k for k in ("cached", "uncached", "rerun")}
    # the rerun: same model and train manifest (cache reused), a val manifest differing in one unit
    val = [json.loads(line) for line in open(d / "val_units.jsonl")]
    val[0]["units"][0] = (val[0]["units"][0] + 1) % 1000
    (root / "val_changed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    cfgs = {
        "cached": demo_stage2_config(d, output_dir=str(out["cached"]), max_steps=STEPS, **common),
        "uncached": demo_stage2_config(d, output_dir=str(out["uncached"]), cache_hidden_states=False,
                                       val_manifest=None, **dict(short, save_steps=2, save_total_limit=2)),
        "rerun": demo_stage2_config(d, output_dir=str(out["rerun"]),
                                    val_manifest=str(root / "val_changed.jsonl"), **short),
    }
    summaries = {}
    summaries["cached"] = launch(cfgs["cached"], root / "cached.json")
    parts = {p: p.stat().st_mtime_ns for p in (d / "runs" / "hidden_cache").rglob("*")}
    summaries["uncached"] = launch(cfgs["uncached"], root / "uncached.json", ds="zero3")
    summaries["rerun"] = launch(cfgs["rerun"], root / "rerun.json")
    out["resumed"] = root / "resumed"
    shutil.copytree(out["uncached"] / "checkpoints" / "step_000002", out["resumed"] / "checkpoints" / "step_000002")
    (out["resumed"] / "checkpoints" / "latest").write_text("step_000002")
    cfgs["resumed"] = dict(cfgs["uncached"], output_dir=str(out["resumed"]))
    summaries["resumed"] = launch(cfgs["resumed"], root / "resumed.json", ds="zero3")
    return {"demo": d, "out": out, "summary": summaries, "cfg": cfgs, "cache_files": parts}


def test_only_the_decoder_changes_and_holds_optimizer_state(runs):
    from safetensors.torch import load_file
    d, out = runs["demo"], runs["out"]["cached"]
    summary = runs["summary"]["cached"]
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    init = load_file(d / "runs" / "stage1" / "final" / "model.safetensors")
    final = {}
    for f in sorted((out / "final").glob("*.safetensors")):
        final.update(load_file(f))
    decoder = {k for k in final if k.startswith("speech_generator.")}
    assert decoder and not any(k.startswith("speech_generator.") for k in init)
    assert set(final) == set(init) | decoder
    changed = [k for k in init if not torch.equal(init[k], final[k]) or init[k].dtype != final[k].dtype]
    assert not changed, changed[:5]
    # optimizer state: read back from the engine's optimizer by the trainer (summary), per module
    n_decoder = sum(final[k].numel() for k in decoder)
    assert summary["optimizer_state_params"] == {"speech_generator": n_decoder}
    assert summary["params"]["trainable"] == n_decoder


def _checkpoint_files(step_dir: Path) -> dict:
    return {f.name: torch.load(f, map_location="cpu", weights_only=False) for f in step_dir.glob("*model_states.pt")}


@pytest.mark.parametrize("run,step", [("cached", STEPS), ("uncached", 2)])
def test_checkpoints_hold_the_decoder_and_its_optimizer_only(runs, run, step):
    """The frozen encoder, projector and LLM are rebuilt from init_from at resume: a checkpoint
    holds the decoder's weights and optimizer states, nothing else (ZeRO-2 and ZeRO-3)."""
    from safetensors.torch import load_file
    ckpt = runs["out"][run] / "checkpoints" / f"step_{step:06d}"
    for name, st in _checkpoint_files(ckpt).items():
        # (ZeRO-3 keeps the weights in the optimizer's partitions: its module entries are empty)
        assert st["module"] and all(k.startswith("speech_generator.") for k in st["module"]), \
            (name, [k for k in st["module"] if not k.startswith("speech_generator.")][:5])
        assert not st.get("frozen_param_fragments") and not st.get("frozen_param_shapes"), name
    final = load_file(runs["out"]["cached"] / "final" / "model.safetensors")
    decoder_bytes = sum(v.numel() * 4 for k, v in final.items() if k.startswith("speech_generator."))
    all_bytes = sum(v.numel() * v.element_size() for v in final.values())
    size = sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file())
    # fp32 weights + fp32 master + Adam's two moments = 4x the decoder, plus pickling overhead;
    # the frozen weights alone (all - decoder) would not fit in the margin
    assert size < 4 * decoder_bytes + 200_000 < 4 * decoder_bytes + (all_bytes - decoder_bytes), \
        (size, decoder_bytes, all_bytes)


def test_resume_from_a_decoder_only_checkpoint_is_exact(runs):
    """ZeRO-3, no cache: step 3 after resuming from step 2 equals step 3 of the uninterrupted run."""
    resumed = runs["summary"]["resumed"]
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("step_000002")
    assert losses(runs["out"]["resumed"]) == pytest.approx(losses(runs["out"]["uncached"])[2:], rel=1e-6)


def test_decoder_overfits_the_training_units(runs):
    from omni_ds.data.collator import OmniCollator
    from omni_ds.data.dataset import OmniSpeechDataset
    from omni_ds.data.manifest import load_manifest
    from omni_ds.data.validate import ValidationConfig
    from omni_ds.model.checkpoint import load_omni_folder
    from omni_ds.train.edit_distance import levenshtein
    d, out = runs["demo"], runs["out"]["cached"]
    model, tok = load_omni_folder(out / "final")
    model.set_stage(2).eval()
    cfg = runs["cfg"]["cached"]
    from omni_ds.train.config import build_config
    builder = build_config({k: v for k, v in cfg.items() if k != "_comment"}).prompt_builder(tok)
    data = OmniSpeechDataset(load_manifest(d / "train_units.jsonl"), builder,
                             ValidationConfig(stage=2, mel_mode="trimmed"))
    collate = OmniCollator(tok.pad_token_id)
    edits = total = 0
    with torch.no_grad():
        for i in range(len(data)):
            b = collate([data[i]])
            states, n = model.response_hidden_states(b["input_ids"], b["attention_mask"], b["labels"],
                                                     b["speech_mel"], b["speech_frames"])
            pred = model.speech_generator.predict(states[0, : int(n[0])])
            target = data[i]["units"].tolist()
            edits += levenshtein(pred, target)
            total += len(target)
    assert edits / total <= 0.10, (edits, total)
    # the trainer's own validation (rank-sharded over 2 ranks) agrees that these samples are fitted
    ev = runs["summary"]["cached"]["evals"][-1]
    assert ev["samples"] == 2 and ev["unit_edit_distance"] <= 0.10 and ev["loss"] < 1.0
    first = losses(out)[0]
    assert runs["summary"]["cached"]["final_loss"] < 0.2 * first


def test_cached_and_uncached_training_give_the_same_losses(runs):
    """Cached (ZeRO-2) vs uncached (ZeRO-3, the frozen LLM's forward partitioned inside stage 2)."""
    cached, uncached = losses(runs["out"]["rerun"]), losses(runs["out"]["uncached"])
    assert len(cached) == len(uncached) == 3
    assert cached == pytest.approx(uncached, rel=1e-5, abs=1e-5)
    assert "hidden_cache" in runs["summary"]["rerun"] and "hidden_cache" not in runs["summary"]["uncached"]
    assert runs["summary"]["uncached"]["zero_stage"] == 3
    assert runs["summary"]["uncached"]["optimizer_state_params"] == runs["summary"]["rerun"]["optimizer_state_params"]
    # the losses move between steps, so equal losses compare real training, not a constant
    assert len({round(x, 4) for x in uncached}) == 3


def test_rerun_reuses_the_cache_and_new_data_gets_a_new_key(runs):
    first = runs["summary"]["cached"]["hidden_cache"]
    again = runs["summary"]["rerun"]["hidden_cache"]
    assert first["train"]["built"] and first["val"]["built"]
    assert again["train"]["key"] == first["train"]["key"] and not again["train"]["built"]
    assert again["val"]["key"] != first["val"]["key"] and again["val"]["built"]
    # the reused cache's files were not rewritten
    for p, mtime in runs["cache_files"].items():
        assert p.stat().st_mtime_ns == mtime, p
    assert first["frozen_parts_device"] == "cpu"


def test_a_changed_model_gives_a_new_cache_key(runs, tmp_path):
    import shutil
    from safetensors.torch import load_file, save_file
    from omni_ds.train.hidden_cache import cache_key
    d = runs["demo"]
    src = d / "runs" / "stage1" / "final"
    manifest = d / "train_units.jsonl"
    key = runs["summary"]["cached"]["hidden_cache"]["train"]["key"]
    from omni_ds.model.checkpoint import load_omni_folder
    from omni_ds.train.config import build_config
    from omni_ds.train.parts import cache_settings
    cfg = build_config({k: v for k, v in runs["cfg"]["cached"].items() if k != "_comment"})
    model, _ = load_omni_folder(src, omni_overrides=cfg.model.omni, with_speech_generator=True)
    settings = cache_settings(cfg, model)
    assert cache_key(src, manifest, settings) == key               # the trainer's key, recomputed
    copy = tmp_path / "model"
    shutil.copytree(src, copy)
    assert cache_key(copy, manifest, settings) == key              # same files, same key
    state = load_file(copy / "model.safetensors")
    name = next(k for k in state if k.startswith("model.layers.0."))
    state[name] = state[name] + 1e-3
    save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    assert cache_key(copy, manifest, settings) != key
