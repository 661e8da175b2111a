"""LoRA stage 1 (config section `lora`, omni_ds/train/lora.py) for real: 2 CPU ranks through the
`deepspeed` launcher and launch/stage1.py, on the tiny demo models and 10 real clips. The runs are
shared by the tests of this module (each is a launch; 6 steps, global batch 2, checkpoints every 2,
sample trace):

    z3_bf16     ZeRO-3 + gradient checkpointing, bf16 (the paper's recipe)
    z2          ZeRO-2, fp32: the uninterrupted reference of z2_resume
    z2_resume   ZeRO-2, fp32, dies (SIGKILL) while saving step 4, then the same output_dir again:
                resumes from step 2 and runs to 6
    z3, z3_resume   the same pair under ZeRO-3 + gradient checkpointing

Exact resume is checked in fp32, at the tolerance test_train_dist.py uses (rel 1e-6): on this CPU
two fresh launches of the same bf16 run already differ in the 7th digit at step 1 (the kernels'
summation order), and bf16 rounding of the weights amplifies that from step to step. Each run
ends with output_dir/final (the merged model) and output_dir/lora_adapter (peft format).
"""
import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from omni_ds.train.config import ConfigError, build_config
from omni_ds.train.demo import demo_stage1_config, write_tiny_setup
from test_train_dist import launch, losses, trace, _check

REPO = Path(__file__).resolve().parents[1]
RANK = 8
Z3 = ("--set", "gradient_checkpointing=true")
BF16 = ("--set", "precision=bf16")


def _crash_and_resume(cfg_path, out, ds, *sets):
    crashed = launch(cfg_path, out, ds, 2, "--set", "crash_at_step=4", *sets)
    assert crashed.returncode != 0, "the fault injection did not stop the run"
    before = trace(out)
    shutil.rmtree(out / "trace")
    resumed = launch(cfg_path, out, ds, 2, *sets)
    _check(resumed, f"{ds} resumed LoRA run")
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout, resumed.stdout[-2000:]
    return before


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    data = write_tiny_setup(root / "data", n_clips=10, val_clips=2)
    cfg = demo_stage1_config(data, per_device_train_batch_size=1, global_batch_size=2, max_steps=6,
                             save_steps=2, save_total_limit=3, logging_steps=1, trace_samples=True,
                             report_to=[], progress_bar=False, **{"lora.rank": RANK})
    cfg_path = root / "stage1_lora.json"
    cfg_path.write_text(json.dumps(cfg))
    out = {k: root / k for k in ("z3_bf16", "z2", "z2_resume", "z3", "z3_resume")}
    _check(launch(cfg_path, out["z3_bf16"], "zero3", 2, *Z3, *BF16), "2-rank ZeRO-3 bf16 LoRA run")
    _check(launch(cfg_path, out["z2"], "zero2", 2), "2-rank ZeRO-2 LoRA run")
    _check(launch(cfg_path, out["z3"], "zero3", 2, *Z3), "2-rank ZeRO-3 LoRA run")
    before = {"z2": _crash_and_resume(cfg_path, out["z2_resume"], "zero2"),
              "z3": _crash_and_resume(cfg_path, out["z3_resume"], "zero3", *Z3)}
    return {"root": root, "data": data, "out": out, "before_crash": before}


def _summary(out) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())


def _safetensors(folder) -> dict:
    from omni_ds.model.checkpoint import read_tensors
    return read_tensors(Path(folder), lambda n: True)


def test_lora_trains_only_adapters_and_projector_under_zero2_and_zero3(runs):
    for name, dtype in (("z3_bf16", "bfloat16"), ("z2", "float32"), ("z3", "float32")):
        s = _summary(runs["out"][name])
        assert s["status"] == "completed" and s["steps"] == 6, s
        assert set(s["optimizer_state_params"]) == {"projector", "lora"}, s["optimizer_state_params"]
        assert {g for g in s["param_groups"] if g.startswith("lora")} == {"lora"}
        assert s["param_groups"]["lora"]["lr"] == s["config"]["optim"]["learning_rate"]
        assert "llm_trainable" not in s["params"], s["params"]          # the base LLM is frozen
        assert all(d == [dtype] for d in s["param_dtypes"].values()), s["param_dtypes"]
        assert s["lora"]["rank"] == RANK and s["lora"]["alpha"] == 2.0 * RANK
        curve = losses(runs["out"][name])
        assert len(curve) == 6 and curve[-1] < curve[0], curve
    # the same data, schedule and init: ZeRO-3 (+ recompute) follows ZeRO-2; bf16 follows fp32
    for a, b, c in zip(losses(runs["out"]["z2"]), losses(runs["out"]["z3"]), losses(runs["out"]["z3_bf16"])):
        assert b == pytest.approx(a, rel=1e-4) and c == pytest.approx(b, rel=2e-2)


@pytest.mark.parametrize("name", ["z3_bf16", "z2"])
def test_final_folder_is_merged_and_loads(runs, name, real_clips):
    from omni_ds.model.checkpoint import load_omni_folder
    final = runs["out"][name] / "final"
    tensors = _safetensors(final)
    assert not [k for k in tensors if "lora" in k or "base_layer" in k]
    base = _safetensors(runs["data"] / "models" / "llm")
    # adapted projections changed; what LoRA does not touch (embeddings, norms) is the base, bit for bit
    dtype = tensors["lm_head.weight"].dtype
    for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert not torch.equal(tensors[k], base[k].to(dtype)), k
    for k in ("model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "lm_head.weight"):
        assert torch.equal(tensors[k], base[k].to(dtype)), k
    model, _ = load_omni_folder(final, dtype=dtype)
    assert not [n for n, _ in model.named_parameters() if "lora" in n]
    sys.path.insert(0, str(REPO / "tools"))
    import infer
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = infer.main(["--model", str(final), "--wav", str(real_clips[0]), "--max-new-tokens", "4", "--json"])
    assert rc in (0, None)
    assert len(json.loads(buf.getvalue().strip().splitlines()[-1])["token_ids"]) >= 1


@pytest.mark.parametrize("name", ["z3_bf16", "z2"])
def test_peft_loads_the_adapter_and_its_merge_is_the_final_folder(runs, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    adapter = runs["out"][name] / "lora_adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == RANK
    final = _safetensors(runs["out"][name] / "final")
    base = AutoModelForCausalLM.from_pretrained(str(runs["data"] / "models" / "llm"), dtype=final["lm_head.weight"].dtype)
    peft_model = PeftModel.from_pretrained(base, str(adapter))
    saved = _safetensors(adapter)
    loaded = {k.replace(".default.", "."): v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert set(loaded) == set(saved) and len(saved) == 2 * 7 * 2        # A, B x 7 projections x 2 layers
    for k, v in saved.items():
        assert torch.equal(loaded[k], v), k
    merged = peft_model.merge_and_unload().state_dict()
    for k, v in merged.items():
        assert torch.equal(final[k], v), k


@pytest.mark.parametrize("name", ["z2", "z3"])
def test_resume_is_exact(runs, name):
    ref = {r["step"]: r["loss"] for r in trace(runs["out"][name])}
    before = [r for r in runs["before_crash"][name] if r["step"] <= 2]
    resumed = trace(runs["out"][f"{name}_resume"])
    assert sorted({r["step"] for r in resumed}) == [3, 4, 5, 6]
    for r in before + resumed:
        assert r["loss"] == pytest.approx(ref[r["step"]], rel=1e-6, abs=1e-6), (name, r, ref)
    # every sample of epoch 0 (steps 1-5) exactly once: 2 before the crash, 3 after the resume
    epoch0 = [i for r in before + resumed if r["epoch"] == 0 for i in r["samples"]]
    assert sorted(epoch0) == list(range(10))
    a = _safetensors(runs["out"][name] / "final")
    b = _safetensors(runs["out"][f"{name}_resume"] / "final")
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def test_export_of_a_lora_checkpoint_is_merged(runs, tmp_path):
    from launcher import load_tool
    out = tmp_path / "exported"
    assert load_tool("export").main(["--checkpoint", str(runs["out"]["z3"]), "--out", str(out), "--dtype", "fp32"]) == 0
    exported, final = _safetensors(out), _safetensors(runs["out"]["z3"] / "final")
    assert set(exported) == set(final) and not [k for k in exported if "lora" in k]
    for k in final:             # an fp32 run: the checkpoint's masters are the final folder's weights
        assert torch.equal(exported[k], final[k]), k


# ---- the config's rules, without a launch ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_setup_dir(tmp_path_factory):
    return write_tiny_setup(tmp_path_factory.mktemp("lora_rules"), n_clips=2, val_clips=1)


def _cfg(data_dir, **overrides):
    return build_config(demo_stage1_config(data_dir, **overrides), source="test")


def test_lora_config_rules(tmp_path):
    with pytest.raises(ConfigError, match="'lora.rank' = 0: must be >= 1"):
        _cfg(tmp_path, **{"lora.rank": 0})
    with pytest.raises(ConfigError, match="freeze_backbone exclude each other"):
        _cfg(tmp_path, **{"lora.rank": 8, "model.freeze_backbone": True})
    with pytest.raises(ConfigError, match="'lora.load_in_4bit' = True: needs lora.rank"):
        _cfg(tmp_path, **{"lora.load_in_4bit": True})
    with pytest.raises(ConfigError, match="'lora.dropout' = 1.5"):
        _cfg(tmp_path, **{"lora.rank": 8, "lora.dropout": 1.5})
    assert _cfg(tmp_path, **{"lora.rank": 8}).lora.scale_alpha() == 16.0
    assert _cfg(tmp_path, **{"lora.rank": 8, "lora.alpha": 4}).lora.scale_alpha() == 4.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_qlora_on_cpu_is_a_clear_error(tiny_setup_dir):
    from omni_ds.train.parts import build_model
    cfg = _cfg(tiny_setup_dir, **{"lora.rank": 8, "lora.load_in_4bit": True})
    with pytest.raises(ConfigError, match="QLoRA's 4-bit base needs a CUDA GPU"):
        build_model(cfg, {})


def test_target_modules_that_match_nothing_are_named(tiny_setup_dir):
    from omni_ds.train.parts import build_model
    cfg = _cfg(tiny_setup_dir, **{"lora.rank": 8, "lora.target_modules": ["qkv_proj"]})
    with pytest.raises(ConfigError, match=r"'lora.target_modules' = \['qkv_proj'\]"):
        build_model(cfg, {})


# ---- the memory model with LoRA ----------------------------------------------------------------------------
def test_lora_param_count_is_what_peft_adds():
    """The memory model's adapter count (llama_linear_shapes x rank) against peft's own layers on a
    meta-device Llama of the 8B widths (2 layers: the count is per layer)."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from omni_ds.train import memory as mem
    preset = dict(mem.LLM_PRESETS["llama-3.1-8b"], num_hidden_layers=2)
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**preset))
    inject_adapter_in_model(LoraConfig(r=64, target_modules=list(mem.LLAMA_LINEARS)), llm)
    peft_count = sum(p.numel() for n, p in llm.named_parameters() if ".lora_" in n)
    shape = mem.with_lora(mem.shape_for(preset), preset, 64)
    assert shape.lora_params == peft_count == 2 * 64 * 81920


def test_estimate_memory_lora_8b_fits_one_24gb_gpu():
    import subprocess
    cmd = [sys.executable, "tools/estimate_memory.py", "--llm", "llama-3.1-8b", "--gpus", "1", "--gpu-memory-gib", "24",
           "--zero", "2", "--lora-rank", "64"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "FITS: 22.9 GiB of 24.0 GiB" in r.stdout, r.stdout + r.stderr
    assert "LoRA r=64: 167.8 M adapter params" in r.stdout and "recompute on" in r.stdout
    assert "total per GPU" in r.stdout and "frozen weights, 8.67 B" in r.stdout
    full = subprocess.run(cmd[:-2], capture_output=True, text=True, cwd=REPO)       # full fine-tuning
    assert full.returncode == 1 and "DOES NOT FIT: model states alone need 150.0 GiB" in full.stdout
    q = subprocess.run(cmd + ["--qlora"], capture_output=True, text=True, cwd=REPO)
    assert q.returncode == 0 and "frozen LLM base in 4-bit NF4" in q.stdout and "FITS: 13.3 GiB" in q.stdout


def test_dry_run_of_the_24gb_lora_recipe(tmp_path, tiny_setup_dir, capsys, monkeypatch):
    """launch/configs/stage1_lora_24gb.json with the 8B and large-v3 shapes (config files only) on
    one 24 GB GPU: the dry run counts the adapters exactly (meta-device LLM) and says it fits."""
    from transformers import LlamaConfig, WhisperConfig
    from omni_ds.train import memory as mem
    from omni_ds.train.demo import with_overrides
    from omni_ds.train.recipe import main
    llm = tmp_path / "llama8b"
    LlamaConfig(**mem.LLM_PRESETS["llama-3.1-8b"]).save_pretrained(llm)
    whisper = tmp_path / "whisper-large-v3"
    WhisperConfig(d_model=1280, encoder_layers=32, encoder_ffn_dim=5120, num_mel_bins=128,
                  max_source_positions=1500, encoder_attention_heads=20).save_pretrained(whisper)
    rows = [json.loads(line) for line in open(tiny_setup_dir / "train.jsonl")]
    manifest = tmp_path / "train.jsonl"          # 32 records: one global batch
    manifest.write_text("".join(json.dumps(dict(r, id=f"{r['id']}_{k}")) + "\n" for k in range(16) for r in rows))
    cfg = with_overrides(json.loads((REPO / "launch/configs/stage1_lora_24gb.json").read_text()), {
        "model.whisper_path": str(whisper), "model.llm_path": str(llm), "output_dir": str(tmp_path / "o"),
        "model.tokenizer_path": str(tiny_setup_dir / "models" / "tokenizer"),
        "data.train_manifest": str(manifest), "data.val_manifest": None})
    path = tmp_path / "stage1_lora_24gb.json"
    path.write_text(json.dumps(cfg))
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RANK", raising=False)
    args = ["--config", str(path), "--dry-run", "--world-size", "1", "--gpu-memory-gib", "24", "--ds", "ds_configs/zero2.json"]
    assert main(args, stage=1) == 0
    out = capsys.readouterr().out
    assert "LoRA r=64 (alpha 128) on q_proj" in out and "167.77 M adapter params" in out, out
    assert "micro batch 2 x GAS 16 x 1 ranks = global batch 32" in out
    assert "FITS" in out and "dry run: OK" in out and "supervised positions" in out, out
    assert main(args + ["--set", "lora.load_in_4bit=true"], stage=1) == 0          # planning needs no GPU
    assert "frozen LLM base in 4-bit NF4" in capsys.readouterr().out


def test_resume_with_other_lora_settings_is_refused(tiny_setup_dir):
    """Another rank changes the adapters' shapes (the checkpoint would not load) and what trains:
    the resume check names it before any weights load; a run without LoRA digests as before."""
    from omni_ds.train.resume_check import check_resume, model_digest, run_identity
    old_cfg = _cfg(tiny_setup_dir, **{"lora.rank": 8})
    new_cfg = _cfg(tiny_setup_dir, **{"lora.rank": 16})
    saved = {"resume_identity": run_identity(old_cfg, 4, 2, "abc"), "config": old_cfg.to_dict()}
    with pytest.raises(ConfigError, match=r"model .*lora rank 8 .* -> .*lora rank 16"):
        check_resume(saved, run_identity(new_cfg, 4, 2, "abc"), new_cfg, "ckpt")
    assert check_resume(saved, run_identity(old_cfg, 4, 2, "abc"), old_cfg, "ckpt") == []
    plain = _cfg(tiny_setup_dir).to_dict()
    assert model_digest(plain["model"], plain["lora"]) == model_digest(plain["model"])
