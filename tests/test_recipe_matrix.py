"""The recipe matrix: every shipped DeepSpeed config x precision x stage, on 2 CPU ranks.

Users run the recipes we ship (bf16 under ZeRO-3 is the paper's), not the demo's fp32, so each
cell trains for real: 2 optimizer steps ending in a checkpoint and a final folder, then a rerun
that resumes from that checkpoint for one more step and writes the final folder again, which
tools/infer.py must load and answer from. Checked per cell: both runs complete with finite
losses, the rerun resumed from step 2, every parameter is in the run's precision (the trainable
ones reach the optimizer in it), only the parts the stage trains hold optimizer state.

    stage 1: ds_configs/*.json x {fp32, bf16, fp16}, plus gradient checkpointing,
             freeze_backbone and LoRA (lora.rank 8: adapters + projector train; bf16; ZeRO-2 and ZeRO-3)
    stage 2: ds_configs/*.json x {fp32, bf16, fp16} with the hidden-state cache (the shipped
             recipe), plus ZeRO-3 bf16 without it (the frozen LLM runs inside each step)
fp16 runs where DeepSpeed's accelerator supports it on the machine, else the cells say skipped
and why. All cells of a stage share one launch (tests/recipe_matrix_driver.py).
"""
import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omni_ds.train.demo import demo_stage1_config, demo_stage2_config, write_tiny_stage2_setup
from launcher import DEEPSPEED, free_port, launcher_env

REPO = Path(__file__).resolve().parents[1]
DS_CONFIGS = sorted(p.stem for p in (REPO / "ds_configs").glob("*.json"))
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TIMEOUT = 900
FIRST = 2                       # steps of the first run; the rerun resumes and does one more
# fp16's dynamic loss scale starts at 2^16 and halves on each overflow: stage 2's CTC gradients
# overflow on the first 6 steps (measured), so those cells run long enough to apply some.
FP16_STAGE2_FIRST = 8
# the run's memory check, told the device is tiny: it must say the recipe does not fit
TOO_SMALL_GIB = {"stage1-zero2-bf16-plain": 0.001}


def _cells() -> list[tuple[int, str, str, str]]:
    cells = [(1, ds, p, "plain") for ds in DS_CONFIGS for p in PRECISIONS]
    cells += [(1, ds, "bf16", v) for ds in ("zero2", "zero3")
              for v in ("gradient_checkpointing", "freeze_backbone", "lora")]
    cells += [(2, ds, p, "cached") for ds in DS_CONFIGS for p in PRECISIONS]
    cells += [(2, "zero3", "bf16", "uncached")]
    return cells


CELLS = {f"stage{s}-{ds}-{p}-{v}": (s, ds, p, v) for s, ds, p, v in _cells()}


def fp16_unsupported_reason():
    from deepspeed.accelerator import get_accelerator
    acc = get_accelerator()
    if acc.is_fp16_supported():
        return None
    return f"DeepSpeed's {acc.device_name()} accelerator does not support fp16 on this machine"


def _first_steps(stage: int, precision: str) -> int:
    return FP16_STAGE2_FIRST if (stage, precision) == (2, "fp16") else FIRST


def _config(stage: int, precision: str, variant: str, data: Path, out: Path) -> dict:
    common = dict(output_dir=str(out), precision=precision, per_device_train_batch_size=1, global_batch_size=2,
                  logging_steps=1, report_to=[], progress_bar=False, save_steps=0, eval_max_samples=2)
    if stage == 1:
        lora = {"lora.rank": 8} if variant == "lora" else {}
        return demo_stage1_config(data, **common, gradient_checkpointing=variant == "gradient_checkpointing",
                                  freeze_backbone=variant == "freeze_backbone", **lora)
    return demo_stage2_config(data, **common, cache_hidden_states=variant == "cached", cache_dir=None,
                              cache_dtype="fp32" if precision == "fp32" else "bf16")


def _launch(cases: list[dict], root: Path, name: str) -> dict:
    if not cases:
        return {}
    (root / f"{name}_cases.json").write_text(json.dumps(cases))
    results = root / f"{name}_results.json"
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "tests/recipe_matrix_driver.py",
           "--cases", str(root / f"{name}_cases.json"), "--results", str(results)]
    p = subprocess.run(cmd, cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0 and results.is_file(), \
        f"{name} matrix launch failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return {r["name"]: r for r in json.loads(results.read_text())}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    data = write_tiny_stage2_setup(root / "data")
    skip_fp16 = fp16_unsupported_reason()
    by_stage: dict[int, list] = {1: [], 2: []}
    for name, (stage, ds, precision, variant) in CELLS.items():
        if precision == "fp16" and skip_fp16:
            continue
        first = _first_steps(stage, precision)
        by_stage[stage].append({"name": name, "ds": f"ds_configs/{ds}.json", "first_steps": first,
                                "resume_steps": first + 1, "gpu_memory_gib": TOO_SMALL_GIB.get(name),
                                "config": _config(stage, precision, variant, data, root / name)})
    results = {**_launch(by_stage[1], root, "stage1"), **_launch(by_stage[2], root, "stage2")}
    return {"root": root, "results": results, "skip_fp16": skip_fp16}


def _infer(folder: str, wav: Path) -> dict:
    """tools/infer.py --json on the folder, in this process."""
    sys.path.insert(0, str(REPO / "tools"))
    import infer
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = infer.main(["--model", folder, "--wav", str(wav), "--max-new-tokens", "4", "--json"])
    assert rc in (0, None)
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def _trained_parts(stage: int, variant: str) -> set:
    """Parts that hold optimizer state (omni_ds.train.param_groups.module_of names)."""
    if stage == 2:
        return {"speech_generator"}
    return {"freeze_backbone": {"projector"}, "lora": {"projector", "lora"}}.get(variant, {"projector", "llm"})


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_recipe_trains_checkpoints_resumes_and_exports(matrix, cell, real_clips):
    stage, ds, precision, variant = CELLS[cell]
    if precision == "fp16" and matrix["skip_fp16"]:
        pytest.skip(matrix["skip_fp16"])
    result = matrix["results"][cell]
    assert "traceback" not in result, f"{cell}:\n{result['traceback']}"
    first, resumed = result["runs"]
    n_first = _first_steps(stage, precision)
    for r, steps in ((first, n_first), (resumed, n_first + 1)):
        assert r["status"] == "completed" and r["steps"] == steps, (cell, r)
        assert math.isfinite(r["final_loss"]), (cell, r["final_loss"])
        assert r["skipped_steps"] < steps, f"{cell}: no optimizer step applied ({r['skipped_steps']} skipped)"
        assert all(set(d) == {DTYPE_NAMES[precision]} for d in r["param_dtypes"].values()), (cell, r["param_dtypes"])
        assert set(r["optimizer_state_params"]) == _trained_parts(stage, variant), (cell, r["optimizer_state_params"])
    assert first["resumed_from"] is None
    assert first["memory_check_fits"] is (False if cell in TOO_SMALL_GIB else None)
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith(f"step_{n_first:06d}"), resumed["resumed_from"]
    if variant == "lora":               # the merged model: no adapter tensors in the final folder
        from omni_ds.model.checkpoint import read_tensors
        assert not [k for k in read_tensors(Path(resumed["final_dir"]), lambda n: True) if "lora" in k]
        assert (Path(resumed["final_dir"]).parent / "lora_adapter" / "adapter_model.safetensors").is_file()
    answer = _infer(resumed["final_dir"], real_clips[0])
    assert len(answer["token_ids"]) >= 1
    if stage == 2:
        assert answer["units"] is not None and all(0 <= u < 1000 for u in answer["units"])


def test_zero_to_fp32_equals_export_on_a_zero3_checkpoint(matrix, tmp_path):
    """DeepSpeed's own recovery script, which it places in every checkpoints/ folder, gives the
    projector and LLM tensors tools/export.py writes (internal names vs LLaMA-Omni names)."""
    from omni_ds.model.checkpoint import from_release_name, read_tensors
    cell = "stage1-zero3-bf16-plain"
    ckpt_dir = matrix["root"] / cell / "checkpoints"
    assert (ckpt_dir / "zero_to_fp32.py").is_file()
    subprocess.run([sys.executable, str(ckpt_dir / "zero_to_fp32.py"), str(ckpt_dir), str(tmp_path / "z2f"),
                    "--safe_serialization"], check=True, capture_output=True, cwd=REPO, env=launcher_env())
    subprocess.run([sys.executable, "tools/export.py", "--checkpoint", str(matrix["root"] / cell), "--out",
                    str(tmp_path / "exported"), "--dtype", "fp32"], check=True, capture_output=True, cwd=REPO,
                   env=launcher_env())
    z2f = read_tensors(tmp_path / "z2f", lambda n: True)
    exported = read_tensors(tmp_path / "exported", lambda n: True)
    compared = 0
    for name, tensor in exported.items():
        internal = from_release_name(name)
        if internal.startswith(("speech_projector.", "llm.")):
            assert internal in z2f, f"{name} -> {internal} not in zero_to_fp32's output"
            assert torch.equal(z2f[internal], tensor), name
            compared += 1
    trainable = [n for n in z2f if n.startswith(("speech_projector.", "llm."))]
    assert compared == len(trainable) > 0
