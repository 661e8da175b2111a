"""Resume at another world size (ZeRO-2, stage 1, the deepspeed launcher):

    ref     2 ranks, 6 steps, checkpoints at 2, 4, 6
    down    its step-2 checkpoint at 1 rank: refused in one line naming the conversion; converted
            with tools/convert_checkpoint.py, resumed at 1 rank to step 6 (checkpoints at 4, 6)
    up      down's step-4 checkpoint (saved by 1 rank), converted, resumed at 2 ranks to step 6

Steps 3-6 of `down` and 5-6 of `up` equal the uninterrupted 2-rank run's (global batch 2, the
data order is the sampler's, whatever the world size). Also: a checkpoint with a missing shard
or a truncated file is refused by the dry run and by the run, naming the file, before loading."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omni_ds.train.demo import demo_stage1_config, write_tiny_setup
from launcher import DEEPSPEED, free_port, launcher_env

REPO = Path(__file__).resolve().parents[1]


def launch(cfg_path: Path, n: int, *sets: str) -> subprocess.CompletedProcess:
    cmd = [DEEPSPEED, "--num_gpus", str(n), "--master_port", str(free_port()), "launch/stage1.py",
           "--config", str(cfg_path), "--ds", "ds_configs/zero2.json"] + [a for s in sets for a in ("--set", s)]
    return subprocess.run(cmd, cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=420)


def convert(ckpt: Path) -> Path:
    p = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "--checkpoint", str(ckpt)], cwd=REPO,
                       env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return ckpt.with_name(ckpt.name + "_universal")


def losses(out: Path) -> list[float]:
    return [r["train/loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "train/loss" in r]


def _ok(p: subprocess.CompletedProcess, what: str) -> None:
    assert p.returncode == 0, f"{what} ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("world_size")
    data = write_tiny_setup(root / "data", n_clips=8, val_clips=2)
    cfg = demo_stage1_config(data, output_dir=str(root / "ref"), per_device_train_batch_size=1, global_batch_size=2,
                             max_steps=6, save_steps=2, save_total_limit=3, logging_steps=1, report_to=[],
                             progress_bar=False, val_manifest=None)
    cfg_path = root / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    _ok(launch(cfg_path, 2), "2-rank reference")
    step2 = root / "ref" / "checkpoints" / "step_000002"
    r = {"root": root, "cfg": cfg_path, "ref": losses(root / "ref"), "step2": step2}
    r["refused"] = launch(cfg_path, 1, f"output_dir={root / 'down'}", f"checkpoint.resume={step2}")
    _ok(launch(cfg_path, 1, f"output_dir={root / 'down'}", f"checkpoint.resume={convert(step2)}"),
        "1-rank resume of the converted 2-rank checkpoint")
    r["down"] = losses(root / "down")
    step4 = root / "down" / "checkpoints" / "step_000004"
    _ok(launch(cfg_path, 2, f"output_dir={root / 'up'}", f"checkpoint.resume={convert(step4)}"),
        "2-rank resume of the converted 1-rank checkpoint")
    r["up"] = losses(root / "up")
    return r


def test_a_world_size_change_is_refused_naming_the_conversion(runs):
    p = runs["refused"]
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stdout + p.stderr
    assert "was saved by 2 rank(s), this run has 1" in p.stdout + p.stderr
    assert f"tools/convert_checkpoint.py --checkpoint {runs['step2']}" in p.stdout + p.stderr


def test_two_to_one_and_one_to_two_ranks_continue_the_uninterrupted_run(runs):
    assert len(runs["ref"]) == 6 and len(runs["down"]) == 4 and len(runs["up"]) == 2
    assert runs["down"] == pytest.approx(runs["ref"][2:], rel=1e-6), (runs["down"], runs["ref"])
    assert runs["up"] == pytest.approx(runs["ref"][4:6], rel=1e-6), (runs["up"], runs["ref"])


@pytest.mark.parametrize("damage", ["missing shard", "truncated file"])
def test_a_damaged_checkpoint_is_refused_before_loading(runs, tmp_path, damage):
    ckpt = tmp_path / "out" / "checkpoints" / "step_000006"
    shutil.copytree(runs["root"] / "ref" / "checkpoints" / "step_000006", ckpt)
    if damage == "missing shard":
        (ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
        expected = "missing optimizer shard of rank 1"
    else:
        f = ckpt / "mp_rank_00_model_states.pt"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        expected = "mp_rank_00_model_states.pt: not a readable checkpoint file"
    sets = [f"output_dir={tmp_path / 'out'}", f"checkpoint.resume={ckpt}"]
    dry = subprocess.run([sys.executable, "launch/stage1.py", "--config", str(runs["cfg"]), "--ds",
                          "ds_configs/zero2.json", "--dry-run", "--world-size", "2"] + [a for s in sets for a in ("--set", s)],
                         cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert dry.returncode == 1 and expected in dry.stdout and "dry run: NOT READY" in dry.stdout, dry.stdout[-3000:]
    run = launch(runs["cfg"], 2, *sets)
    assert run.returncode == 2 and expected in run.stdout + run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
