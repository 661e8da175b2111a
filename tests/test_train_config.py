"""Training config, DeepSpeed config filling, schedule, parameter-name rules, memory estimate and
FLOPs model: single-process, no engine."""
import json

import pytest

from omni_ds.train import memory as mem
from omni_ds.train.config import ConfigError, build_config, dotted_place, load_config, parse_value
from omni_ds.train.ds_config import fill_ds_config, read_ds_config
from omni_ds.train.flops import FlopsModel, guess_peak_tflops, mfu
from omni_ds.train.param_groups import module_of, no_weight_decay
from omni_ds.train.schedule import lr_factor, plan_steps, warmup_steps

BASE = {"whisper_path": "w", "llm_path": "l", "train_manifest": "t.jsonl"}


def write(tmp_path, data, name="c.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


# ---- config ----------------------------------------------------------------------------------------
def test_set_values_are_json_when_they_parse(tmp_path):
    path = write(tmp_path, BASE)
    cfg = load_config(path, ["learning_rate=1e-4", "max_steps=7", "report_to=[]", "output_dir=runs/a b",
                             "speech_projector_lr=null", "freeze_backbone=true", "omni.encoder_mode=trimmed"])
    assert cfg.optim.learning_rate == 1e-4 and cfg.optim.max_steps == 7 and cfg.log.report_to == []
    assert cfg.output_dir == "runs/a b" and cfg.optim.speech_projector_lr is None and cfg.model.freeze_backbone is True
    assert cfg.model.omni == {"encoder_mode": "trimmed"}
    assert parse_value("abc") == "abc" and parse_value("3") == 3 and parse_value('{"a": 1}') == {"a": 1}


def test_unknown_keys_are_named(tmp_path):
    path = write(tmp_path, {**BASE, "learning_rat": 1e-5})
    with pytest.raises(ConfigError, match="learning_rat"):
        load_config(path)
    with pytest.raises(ConfigError, match="warmup_ration"):
        load_config(write(tmp_path, BASE, "ok.json"), ["warmup_ration=0.1"])


@pytest.mark.parametrize("key,value,needle", [
    ("precision", "bf32", "'precision' = 'bf32'"),
    ("warmup_ratio", 1.5, "'optim.warmup_ratio' = 1.5"),
    ("per_device_train_batch_size", 0, "'batch.per_device_train_batch_size' = 0"),
    ("learning_rate", "fast", "'optim.learning_rate' = 'fast'"),
    ("report_to", ["tensorboard", "mlflow"], "mlflow"),
    ("stage", 3, "'stage' = 3"),
])
def test_validation_names_key_and_value(key, value, needle):
    with pytest.raises(ConfigError) as e:
        build_config({**BASE, key: value})
    assert needle in str(e.value)


@pytest.mark.parametrize("key,value,allowed", [
    ("adam_beta1", 5, "must be in [0, 1)"),
    ("adam_beta2", 1.0, "must be in [0, 1)"),
    ("adam_epsilon", -1, "must be > 0"),
    ("learning_rate", float("inf"), "must be a finite number"),     # what --set learning_rate=1e999 gives
    ("max_grad_norm", float("nan"), "must be a finite number"),
    ("dist_timeout_minutes", 0, "must be > 0"),
])
def test_optimizer_ranges_are_refused_with_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as e:
        build_config({**BASE, key: value})
    assert f"config key {dotted_place(key)!r}" in str(e.value) and allowed in str(e.value)


def test_set_of_an_infinite_number_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'optim.learning_rate' = inf: must be a finite number"):
        load_config(write(tmp_path, BASE), ["learning_rate=1e999"])


def test_stage1_needs_parts_or_folder():
    with pytest.raises(ConfigError, match="whisper_path"):
        build_config({"train_manifest": "t", "llm_path": "l"})
    assert build_config({"train_manifest": "t", "init_from": "f"}).model.init_from == "f"


def test_global_batch_sets_accumulation_per_world_size():
    cfg = build_config({**BASE, "per_device_train_batch_size": 4, "global_batch_size": 32})
    assert cfg.batch_geometry(4) == (4, 2, 32)
    assert cfg.batch_geometry(8) == (4, 1, 32)
    assert cfg.batch_geometry(1) == (4, 8, 32)
    with pytest.raises(ConfigError, match="global_batch_size"):
        cfg.batch_geometry(3)
    assert cfg.optim.projector_lr() == cfg.optim.learning_rate
    assert build_config({**BASE, "speech_projector_lr": 1e-3}).optim.projector_lr() == 1e-3


def test_repository_configs_validate():
    cfg = load_config("launch/configs/stage1.json")
    assert (cfg.optim.learning_rate, cfg.batch.global_batch_size, cfg.optim.num_train_epochs, cfg.optim.warmup_ratio,
            cfg.optim.lr_scheduler_type) == (2e-5, 32, 3.0, 0.03, "cosine")
    assert cfg.batch_geometry(4)[2] == 32


# ---- DeepSpeed config ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["zero0", "zero2", "zero3", "zero3_offload", "zero2_offload"])
def test_ds_auto_filled_from_training_config(name):
    cfg = build_config({**BASE, "per_device_train_batch_size": 2, "global_batch_size": 16,
                        "max_grad_norm": 0.5, "precision": "bf16", "learning_rate": 3e-5})
    ds = fill_ds_config(read_ds_config(f"ds_configs/{name}.json"), cfg, world_size=4, hidden_size=64)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 2, 16)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(ds)
    if "optimizer" in ds:
        assert ds["optimizer"]["params"]["lr"] == 3e-5
    if ds["zero_optimization"].get("stage") == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_ds_conflicts_and_scheduler_are_refused():
    cfg = build_config({**BASE, "per_device_train_batch_size": 2})
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu = 4"):
        fill_ds_config({"train_micro_batch_size_per_gpu": 4}, cfg, 1)
    with pytest.raises(ConfigError, match="scheduler"):
        fill_ds_config({"scheduler": {"type": "WarmupLR"}}, cfg, 1)
    with pytest.raises(ConfigError, match="zero_optimization.sub_group_size"):
        fill_ds_config({"zero_optimization": {"stage": 3, "sub_group_size": "auto"}}, cfg, 1)


# ---- schedule ---------------------------------------------------------------------------------------
def test_warmup_from_real_step_count_then_cosine():
    from omni_ds.data.sampler import DistributedBatchSampler
    # 200 K samples, micro batch 4 on 8 ranks: global batch 32, counted on the run's own sampler
    sampler = DistributedBatchSampler([100] * 200_000, 4, world_size=8, rank=3, seed=0)
    optim = build_config({**BASE, "num_train_epochs": 3}).optim
    steps = plan_steps(sampler, 1, optim)
    total = steps.total
    assert (total, steps.steps_per_epoch) == (18750, 6250)
    n = warmup_steps(total, 0.03)
    assert n == 563 == steps.warmup
    assert lr_factor(0, total, n) == pytest.approx(1 / n)
    assert lr_factor(n - 1, total, n) == pytest.approx(1.0)
    assert lr_factor(n, total, n) == pytest.approx(1.0)
    mid = n + (total - n) // 2
    assert lr_factor(mid, total, n) == pytest.approx(0.5, abs=1e-3)
    assert lr_factor(total, total, n) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(total, total, n, min_ratio=0.1) == pytest.approx(0.1)
    optim.max_steps = 5
    assert plan_steps(DistributedBatchSampler([100] * 100, 4, world_size=8, rank=0), 1, optim).total == 5


# ---- parameter-name rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,nd", [
    ("llm.model.layers.0.input_layernorm.weight", True),
    ("llm.model.layers.3.post_attention_layernorm.weight", True),
    ("llm.model.norm.weight", True),
    ("llm.model.layers.0.self_attn.q_proj.weight", False),
    ("llm.model.layers.0.self_attn.q_proj.bias", True),
    ("llm.lm_head.weight", False),
    ("llm.model.embed_tokens.weight", False),
    ("speech_projector.linear1.weight", False),
    ("speech_projector.linear1.bias", True),
    ("speech_generator.layers.0.input_layernorm.weight", True),
    ("speech_encoder.encoder.layers.0.self_attn_layer_norm.weight", True),
    ("speech_encoder.encoder.layer_norm.bias", True),
    ("speech_encoder.encoder.layers.0.fc1.weight", False),
])
def test_no_weight_decay_by_name(name, nd):
    assert no_weight_decay(name) is nd


def test_module_prefixes():
    assert module_of("speech_projector.linear2.weight") == "projector"
    assert module_of("llm.model.norm.weight") == "llm"
    assert module_of("speech_generator.output_proj.bias") == "speech_generator"
    assert module_of("speech_encoder.encoder.conv1.weight") == "speech_encoder"


# ---- memory estimate ------------------------------------------------------------------------------------
def test_classic_trap_8b_zero2_on_four_l40():
    shape = mem.shape_for(mem.LLM_PRESETS["llama-3.1-8b"])
    assert shape.llm_params == 8_030_261_248            # Llama-3.1-8B, exact
    psi = shape.llm_params + shape.projector_params
    plan = mem.estimate(shape, mem.RunSettings(1, world_size=4, micro_batch=4, seq_len=415),
                        mem.MemorySetup(zero_stage=2, gradient_checkpointing=True))
    states = next(v for k, v in plan.lines.items() if k.startswith("model states"))
    assert states == pytest.approx(48.7, abs=0.05)
    # the same number as DeepSpeed's own estimator
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    _, gpu_bytes = estimate_zero2_model_states_mem_needs(psi, num_gpus_per_node=4, cpu_offload=False)
    assert states == pytest.approx(gpu_bytes / 2 ** 30, rel=1e-6)
    l40 = mem.GPU_MEMORY_GIB["L40"]
    assert "DOES NOT FIT" in mem.verdict(plan, l40, "L40")
    fits = mem.alternatives(shape, mem.RunSettings(1, 4, 4, 415, "bf16"), l40)
    kinds = {(p.zero_stage, p.offload_optimizer, p.offload_params) for p in fits}
    assert (3, False, False) in kinds and (2, True, False) in kinds and (2, False, False) not in kinds
    z3 = mem.estimate(shape, mem.RunSettings(1, 4, 4, 415), mem.MemorySetup(3, True))
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    _, z3_bytes, _ = estimate_zero3_model_states_mem_needs(psi, shape.llm_largest_layer, num_gpus_per_node=4,
                                                            cpu_offload=False)
    z3_states = next(v for k, v in z3.lines.items() if k.startswith("model states"))
    assert z3_states == pytest.approx(z3_bytes / 2 ** 30, rel=1e-6)


def test_component_counts_match_reference():
    assert mem.ctc_decoder_param_count(4096) == pytest.approx(425.6e6, rel=1e-3)
    assert mem.whisper_encoder_param_count(**mem.WHISPER_LARGE_V3) == pytest.approx(0.637e9, rel=1e-2)
    assert mem.projector_param_count(1280, 4096) == 6400 * 2048 + 2048 + 2048 * 4096 + 4096


def test_estimate_memory_tool_exit_code():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "tools/estimate_memory.py", "--gpus", "4", "--gpu", "L40", "--zero", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "DOES NOT FIT" in r.stdout and "48.7" in r.stdout
    r = subprocess.run([sys.executable, "tools/estimate_memory.py", "--gpus", "4", "--gpu", "L40", "--zero", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "FITS" in r.stdout


# ---- FLOPs model -----------------------------------------------------------------------------------------
def test_flops_rules():
    import torch
    batch = {"speech_mel": torch.zeros(2, 128, 3000), "speech_frames": torch.tensor([3000, 3000]),
             "attention_mask": torch.ones(2, 101, dtype=torch.long),
             "labels": torch.full((2, 101), -100)}
    fm = FlopsModel(encoder_params=637_000_000, projector_params=21_000_000, llm_params=8_000_000_000)
    pos = fm.positions(batch)
    assert pos["encoder_frames"] == 3000 and pos["speech_positions"] == 600 and pos["llm_positions"] == 2 * 400
    model_flops, hw = fm.step_flops(pos)
    expect = 2 * 637e6 * 3000 + 6 * 21e6 * 600 + 6 * 8e9 * 800
    assert model_flops == pytest.approx(expect) and hw == pytest.approx(expect)
    fm.recompute = True
    assert fm.step_flops(pos)[1] == pytest.approx(expect + 2 * 8e9 * 800)
    fm.llm_trainable = False          # freeze_backbone: the LLM still backpropagates to the projector
    assert fm.step_flops(pos)[0] == pytest.approx(expect - 2 * 8e9 * 800)
    s2 = FlopsModel(637e6, 21e6, 8e9, decoder_params=425.6e6, stage=2)
    batch["labels"][:, -10:] = 1
    p2 = s2.positions(batch)
    assert p2["decoder_positions"] == 25 * 20
    assert s2.step_flops(p2)[0] == pytest.approx(2 * 637e6 * 3000 + 2 * 21e6 * 600 + 2 * 8e9 * 800
                                                 + 6 * 425.6e6 * 500)
    assert guess_peak_tflops("NVIDIA L40S") == 362.0 and guess_peak_tflops("NVIDIA L40") == 181.0
    assert guess_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and guess_peak_tflops("cpu") is None
    assert mfu(181e12, 1.0, 1, 181.0) == pytest.approx(1.0) and mfu(1.0, 1.0, 1, None) is None


# ---- checkpoint resolution ------------------------------------------------------------------------------
def test_resume_resolution(tmp_path):
    from omni_ds.train.checkpointing import STATE_FILE, CheckpointManager
    ck = tmp_path / "out" / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        d = ck / f"step_{step:06d}"
        d.mkdir(parents=True)
        if complete:
            (d / STATE_FILE).write_text("{}")
    m = CheckpointManager(str(tmp_path / "out"), keep=2, rank=0, local_rank=0, barrier=lambda: None)
    assert m.resolve("auto") is None and m.resolve("never") is None        # no `latest` yet: fresh start
    (ck / "latest").write_text("step_000004")
    assert m.resolve("auto") == ck / "step_000004"
    assert m.resolve(str(tmp_path / "out")) == ck / "step_000004"          # an output_dir
    assert m.resolve(str(ck)) == ck / "step_000004"                        # a checkpoints/ dir
    assert m.resolve(str(ck / "step_000002")) == ck / "step_000002"        # one checkpoint
    with pytest.raises(RuntimeError, match="incomplete"):
        m.resolve(str(ck / "step_000006"))
    with pytest.raises(FileNotFoundError, match="'checkpoint.resume'"):
        m.resolve(str(tmp_path / "nope"))
    assert m.clean_partial() == ["step_000006"] and not (ck / "step_000006").exists()
    assert [p.name for p in m.complete_checkpoints()] == ["step_000002", "step_000004"]


def test_prompt_template_reaches_the_prompt_builder(tmp_path):
    from omni_ds.tiny.tokenizer import write_tiny_tokenizer
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path / "tok")))
    with pytest.raises(ConfigError, match="'data.prompt_template' = 'chatml'"):
        build_config({**BASE, "prompt_template": "chatml"})
    cfg = build_config({**BASE, "prompt_template": "tokenizer", "instruction": "Answer briefly."})
    b = cfg.prompt_builder(tok)
    assert b.template == "tokenizer" and b.instruction == "Answer briefly."
    assert build_config(BASE).prompt_builder(tok).template == "llama3"


# ---- nested sections, older spellings -----------------------------------------------------------
def test_nested_and_flat_spellings_build_the_same_config(tmp_path):
    flat = {**BASE, "learning_rate": 1e-4, "save_steps": 7, "eval_steps": 3, "logging_steps": 2,
            "omni": {"encoder_mode": "trimmed"}, "per_device_eval_batch_size": 4, "bad_records": "stop"}
    nested = {"model": {"whisper_path": "w", "llm_path": "l", "omni": {"encoder_mode": "trimmed"}},
              "data": {"train_manifest": "t.jsonl", "on_bad": "error"}, "optim": {"learning_rate": 1e-4},
              "checkpoint": {"every_steps": 7}, "eval": {"every_steps": 3, "batch_size": 4},
              "log": {"every_steps": 2}}
    assert build_config(flat).to_dict() == build_config(nested).to_dict()
    cfg = build_config(nested)
    # to_dict is the nested form, and reads back to itself (summary.json, checkpoints' saved config)
    assert build_config(cfg.to_dict()).to_dict() == cfg.to_dict()
    assert (cfg.optim.learning_rate, cfg.checkpoint.every_steps, cfg.data.on_bad) == (1e-4, 7, "error")


def test_set_addresses_section_keys_and_wins_over_the_file(tmp_path):
    path = write(tmp_path, {**BASE, "optim": {"learning_rate": 1e-4}})
    cfg = load_config(path, ["optim.learning_rate=3e-4", "model.omni.unit_vocab_size=500", "eval.every_steps=9"])
    assert cfg.optim.learning_rate == 3e-4 and cfg.model.omni == {"unit_vocab_size": 500}
    assert cfg.eval.every_steps == 9
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lr'.*optim keys"):
        load_config(path, ["optim.lr=1"])


def test_original_pipeline_keys_are_aliases():
    seed = {"data_path": "d.jsonl", "model_name_or_path": "llama", "whisper_path": "w", "num_train_epochs": 2,
            "per_device_train_batch_size": 4, "learning_rate": 1e-4, "speech_projector_lr": 1e-3,
            "freeze_backbone": True}
    cfg = build_config(seed)
    assert (cfg.data.train_manifest, cfg.model.llm_path, cfg.optim.num_train_epochs) == ("d.jsonl", "llama", 2.0)
    assert cfg.batch.per_device_train_batch_size == 4 and cfg.model.freeze_backbone
    assert cfg.optim.projector_lr() == 1e-3
    s2 = build_config({"stage": 2, "stage1_model_path": "s1/final", "data_path": "u.jsonl",
                       "ctc_loss_weight": 2, "unit_vocab_size": 1000, "ctc_upsample_factor": 25})
    assert s2.model.init_from == "s1/final"
    assert s2.model.omni == {"ctc_loss_weight": 2.0, "unit_vocab_size": 1000, "ctc_upsample_factor": 25}
    with pytest.raises(ConfigError, match="tools/extract_units.py"):
        build_config({**BASE, "kmeans_model_path": "km.bin"})


@pytest.mark.parametrize("raw, needle", [
    ({"learning_rate": 1e-4, "optim": {"learning_rate": 2e-4}}, "'optim.learning_rate' is given twice"),
    ({"optim": 3}, "'optim' is a section"),
    ({"omni": {"encoder_mode": "sideways"}}, "encoder_mode='sideways'"),
    ({"omni": {"ctc_loss_weigth": 1.0}}, "'model.omni.ctc_loss_weigth': not an OmniConfig setting"),
    ({"omni": {"unit_vocab_size": "many"}}, "'model.omni.unit_vocab_size' = 'many': must be an integer"),
    ({"data": {"on_bad": "stop"}}, "'data.on_bad' = 'stop': allowed: \"skip\", \"error\""),
    ({"learnin_rate": 1}, "did you mean 'learning_rate' or 'optim.learning_rate'"),
])
def test_section_mistakes_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as e:
        build_config({**BASE, **raw})
    assert needle in str(e.value)


def test_config_reference_doc_is_current():
    from pathlib import Path
    from omni_ds.train.config.reference import markdown
    doc = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"
    assert doc.read_text() == markdown(), "run: python -m omni_ds.train.config.reference > docs/CONFIG.md"
