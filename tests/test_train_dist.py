"""Multi-process training for real on CPU (gloo), through the `deepspeed` launcher and
launch/stage1.py. The runs are shared by the tests of this module (each is a launch):

    one       1 rank,  ZeRO-2, micro 1 x GAS 2          6 steps
    two_node  2 "nodes" x 1 rank (two launcher processes, hostfile, --no_ssh, node ranks 0/1),
              ZeRO-2, micro 1 x GAS 1                  6 steps, checkpoints every 2, sample trace
    z3        2 ranks, ZeRO-3, gradient checkpointing   6 steps, saved at the end only
    crash     2 ranks, ZeRO-2, dies (SIGKILL) in the middle of saving step 4
    resume    the same output_dir again: auto-resumes from step 2, runs to 6

Global batch 2 everywhere, fp32, the same seed and data (10 real clips, 5 steps per epoch),
validation on 2 clips at the end of each run.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from omni_ds.train.demo import demo_stage1_config, with_overrides, write_tiny_setup
from launcher import DEEPSPEED, free_port, launcher_env, load_tool

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 420




def launch(cfg_path, out, ds="zero2", n=2, *sets):
    cmd = [DEEPSPEED, "--num_gpus", str(n), "--master_port", str(free_port()), "launch/stage1.py",
           "--config", str(cfg_path), "--ds", f"ds_configs/{ds}.json", "--set", f"output_dir={out}", *sets]
    return subprocess.run(cmd, cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=TIMEOUT)


def losses(out, key="train/loss") -> list[float]:
    rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    return [r[key] for r in rows if key in r]


def trace(out) -> list[dict]:
    rows = []
    for f in sorted((Path(out) / "trace").glob("rank*.jsonl")):
        rows += [dict(json.loads(line), rank=f.stem) for line in open(f)]
    return rows


def _check(proc, what):
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = write_tiny_setup(root / "data", n_clips=10, val_clips=2)
    cfg = demo_stage1_config(data, per_device_train_batch_size=1, global_batch_size=2, max_steps=6,
                             save_steps=2, save_total_limit=3, logging_steps=1, trace_samples=True,
                             report_to=["tensorboard"])
    cfg_path = root / "stage1.json"
    cfg_path.write_text(json.dumps(cfg))
    out = {k: root / k for k in ("one", "two_node", "z3", "crash")}
    r = {"root": root, "cfg": cfg_path, "out": out}

    _check(launch(cfg_path, out["one"], "zero2", 1), "1-rank run")

    # two nodes on one machine: one launcher per node, no ssh
    hostfile = root / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(free_port())
    procs = [subprocess.Popen([DEEPSPEED, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(i),
                               "--master_addr", "127.0.0.1", "--master_port", port, "launch/stage1.py",
                               "--config", str(cfg_path), "--ds", "ds_configs/zero2.json",
                               "--set", f"output_dir={out['two_node']}"],
                              cwd=REPO, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (0, 1)]
    r["two_node_logs"] = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    r["two_node_rc"] = [p.returncode for p in procs]

    _check(launch(cfg_path, out["z3"], "zero3", 2, "--set", "save_steps=0", "--set", "gradient_checkpointing=true"),
           "2-rank ZeRO-3 run")

    crash = launch(cfg_path, out["crash"], "zero2", 2, "--set", "crash_at_step=4")
    ck = out["crash"] / "checkpoints"
    r["crash_rc"] = crash.returncode
    r["after_crash"] = {"latest": (ck / "latest").read_text() if (ck / "latest").exists() else None,
                        "dirs": sorted(p.name for p in ck.iterdir() if p.is_dir()),
                        "complete": sorted(p.name for p in ck.iterdir() if (p / "omni_ds_state.json").exists()),
                        "trace": trace(out["crash"])}
    shutil.rmtree(out["crash"] / "trace")
    resume = launch(cfg_path, out["crash"], "zero2", 2)
    _check(resume, "resumed run")
    r["resume_log"] = resume.stdout
    return r


def test_two_ranks_reproduce_one_rank_zero2_and_zero3(runs):
    one = losses(runs["out"]["one"])
    two = losses(runs["out"]["two_node"])
    z3 = losses(runs["out"]["z3"])
    assert len(one) == 6 and len(two) == 6 and len(z3) == 6       # same schedule: same max_steps
    assert one[-1] < one[0]                      # it trains
    for a, b, c in zip(one, two, z3):
        assert b == pytest.approx(a, rel=1e-4) and c == pytest.approx(a, rel=1e-4), (one, two, z3)
    # Adam + clipping hide a constant factor on the gradient; the pre-clip norm does not: the
    # loss normalisation (÷ targets of the whole step, × world against DeepSpeed's averaging) is exact
    norms = [losses(runs["out"][k], "train/grad_norm") for k in ("one", "two_node", "z3")]
    for a, b, c in zip(*norms):
        assert b == pytest.approx(a, rel=1e-4) and c == pytest.approx(a, rel=1e-4), norms
    s1 = json.loads((runs["out"]["one"] / "summary.json").read_text())
    s3 = json.loads((runs["out"]["z3"] / "summary.json").read_text())
    assert (s1["world_size"], s1["gradient_accumulation_steps"]) == (1, 2)
    assert (s3["world_size"], s3["gradient_accumulation_steps"], s3["zero_stage"]) == (2, 1, 3)
    # validation at the end, sharded over ranks, reduced to the same number
    s2 = json.loads((runs["out"]["two_node"] / "summary.json").read_text())
    ev = [s["evals"][-1] for s in (s1, s2, s3)]
    assert all(e["step"] == 6 and e["targets"] > 0 for e in ev)
    assert ev[1]["loss"] == pytest.approx(ev[0]["loss"], rel=1e-4) and ev[2]["loss"] == pytest.approx(ev[0]["loss"], rel=1e-4)
    assert ev[0]["loss"] < one[0]


def test_two_node_hostfile_launch_trains_and_checkpoints(runs):
    assert runs["two_node_rc"] == [0, 0], runs["two_node_logs"]
    out = runs["out"]["two_node"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["steps"] == 6
    ck = out / "checkpoints"
    assert (ck / "latest").read_text() == "step_000006"
    assert sorted(p.name for p in ck.iterdir() if (p / "omni_ds_state.json").exists()) == \
        ["step_000002", "step_000004", "step_000006"]
    assert {p.name for p in (ck / "step_000006").glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    assert (out / "final" / "config.json").exists() and (out / "final" / "model.safetensors").exists()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_crash_mid_save_keeps_latest_on_the_previous_checkpoint(runs):
    assert runs["crash_rc"] != 0
    after = runs["after_crash"]
    assert after["latest"] == "step_000002"
    assert "step_000004" in after["dirs"] and after["complete"] == ["step_000002"]
    assert "removed incomplete checkpoint(s) left by an interrupted save: ['step_000004']" in runs["resume_log"]
    assert "resumed from" in runs["resume_log"] and "at step 2 (epoch 0, step 2 of 5)" in runs["resume_log"]


def test_resume_continues_the_uninterrupted_run(runs):
    ref = {r["step"]: r["loss"] for r in trace(runs["out"]["two_node"])}
    resumed = trace(runs["out"]["crash"])
    assert sorted({r["step"] for r in resumed}) == [3, 4, 5, 6]
    for r in resumed:
        assert r["loss"] == pytest.approx(ref[r["step"]], rel=1e-6, abs=1e-6), (r, ref)
    # epoch 0 = steps 1..5: steps 1-2 from the crashed run (committed by checkpoint step 2),
    # 3-5 from the resumed one: every sample exactly once, none twice, none skipped
    before = [r for r in runs["after_crash"]["trace"] if r["step"] <= 2]
    epoch0 = [i for r in before + resumed if r["epoch"] == 0 for i in r["samples"]]
    assert sorted(epoch0) == list(range(10))
    ref_order = [(r["step"], r["rank"], r["samples"]) for r in trace(runs["out"]["two_node"])]
    got_order = [(r["step"], r["rank"], r["samples"]) for r in before + resumed]
    assert sorted(got_order) == sorted(ref_order)




def test_export_consolidates_zero3_checkpoint(runs, tmp_path):
    from safetensors.torch import load_file
    out = tmp_path / "exported"
    assert load_tool("export").main(["--checkpoint", str(runs["out"]["z3"]), "--out", str(out),
                                          "--dtype", "fp32"]) == 0
    exported = load_file(str(out / "model.safetensors"))
    final = load_file(str(runs["out"]["z3"] / "final" / "model.safetensors"))    # 16-bit gather at the end
    assert set(exported) == set(final)
    assert "model.speech_projector.linear1.weight" in exported and "lm_head.weight" in exported
    for k in final:
        assert exported[k].shape == final[k].shape and (exported[k] - final[k]).abs().max() == 0, k
    meta = json.loads((out / "omni_ds_training.json").read_text())
    assert meta["step"] == 6 and meta["stage"] == 1


def test_dry_run_catches_8b_zero2_on_four_l40(tmp_path, runs, capsys, monkeypatch):
    from transformers import LlamaConfig, WhisperConfig
    from omni_ds.train import memory as mem
    llm = tmp_path / "llama8b"
    LlamaConfig(**mem.LLM_PRESETS["llama-3.1-8b"]).save_pretrained(llm)       # config only, no weights
    whisper = tmp_path / "whisper-large-v3"
    WhisperConfig(d_model=1280, encoder_layers=32, encoder_ffn_dim=5120, num_mel_bins=128,
                  max_source_positions=1500, encoder_attention_heads=20).save_pretrained(whisper)
    rows = [json.loads(line) for line in open(runs["root"] / "data" / "train.jsonl")]
    manifest = tmp_path / "train.jsonl"          # 40 records: more than one global batch of 32
    manifest.write_text("".join(json.dumps(dict(r, id=f"{r['id']}_{k}")) + "\n" for k in range(4) for r in rows))
    cfg = with_overrides(json.loads(Path("launch/configs/stage1.json").read_text()), {
        "model.whisper_path": str(whisper), "model.llm_path": str(llm), "output_dir": str(tmp_path / "o"),
        "model.tokenizer_path": str(runs["root"] / "data" / "models" / "tokenizer"),
        "data.train_manifest": str(manifest), "data.val_manifest": None})
    path = tmp_path / "stage1.json"
    path.write_text(json.dumps(cfg))
    from omni_ds.train.recipe import main
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RANK", raising=False)
    args = ["--config", str(path), "--dry-run", "--world-size", "4", "--gpu", "L40", "--ds"]
    assert main(args + ["ds_configs/zero2.json"], stage=1) == 1
    z2 = capsys.readouterr().out
    assert "DOES NOT FIT: model states alone need 48.7 GiB per GPU" in z2, z2
    assert "ds_configs/zero3.json" in z2 and "ds_configs/zero2_offload.json" in z2
    assert "global batch 32" in z2 and "8.05 B params" in z2
    assert main(args + ["ds_configs/zero3.json"], stage=1) == 0
    z3 = capsys.readouterr().out
    assert "FITS" in z3 and "dry run: OK" in z3, z3


def test_export_refuses_a_checkpoint_whose_frozen_source_changed(runs, tmp_path, capsys):
    """The checkpoint lacks the frozen encoder: export takes it from the run's folders, so a digest
    that no longer matches them is refused (here the checkpoint's record is altered instead)."""
    ckpt = tmp_path / "checkpoints" / "step_000006"
    shutil.copytree(runs["out"]["z3"] / "checkpoints" / "step_000006", ckpt)
    state = json.loads((ckpt / "omni_ds_state.json").read_text())
    state["resume_identity"]["model"] = "0" * 16
    (ckpt / "omni_ds_state.json").write_text(json.dumps(state))
    export = load_tool("export")
    with pytest.raises(SystemExit) as e:
        export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "a")])
    assert "holds the trained parameters only" in str(e.value) and "--accept-model-change" in str(e.value)
    assert export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), "--accept-model-change"]) == 0
