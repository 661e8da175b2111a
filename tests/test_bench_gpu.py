"""bench/gpu_check.sh and bench/bench_gpu.py, run on the CPU (--tiny) so that the one command
prepared for a GPU machine does not rot: the install from a wheels folder (no index), every part
through the real Trainer + DeepSpeed, the figures JSON; a failing and a timed-out part are
recorded while the rest go on. The GPU figures themselves come from running it on a GPU."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

STEP_PARTS = ("s1:tiny:padded:sdpa", "s1:tiny:trimmed:sdpa", "s2:tiny:padded:sdpa")


def _env(**extra) -> dict:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), **extra}


def _omni_ds_wheel(folder: Path) -> Path:
    """omni_ds's own wheel, built from a copy of the checkout (no index): what the check installs."""
    src = folder / "src"
    src.mkdir(parents=True)
    shutil.copy(REPO / "setup.py", src)
    shutil.copytree(REPO / "omni_ds", src / "omni_ds", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = folder / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    return wheels


def test_gpu_check_tiny_end_to_end(tmp_path):
    wheels = _omni_ds_wheel(tmp_path)
    out = tmp_path / "out"
    p = subprocess.run(["bash", "bench/gpu_check.sh", str(out), "--tiny"], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env=_env(OMNI_DS_WHEELS=str(wheels)))
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    fig = json.loads((out / "gpu_figures.json").read_text())
    assert {s["step"]: s["rc"] for s in fig["setup"]} == {"install_wheels": 0, "install_omni_ds": 0, "imports": 0}
    parts = fig["parts"]
    assert {n: r["status"] for n, r in parts.items()} == {n: "ok" for n in
                                                         ("data", "units", "prepare:tiny") + STEP_PARTS}, parts
    for name in STEP_PARTS:
        r = parts[name]
        assert 0 < r["mfu"] < 1 and r["tokens_per_s"] > 0 and r["samples_per_s"] > 0, r
        assert math.isfinite(r["final_loss"]) and r["max_memory_gib"] > 0 and r["estimate_gib"] > 0, r
        assert r["peak_tflops"] > 0 and r["steps"] == 2 and r["attn"] == "sdpa", r
        assert f"[bench_gpu] {name}: ok" in p.stdout and "MFU" in p.stdout
    assert parts["s2:tiny:padded:sdpa"]["decoder_tokens_per_s"] > 0
    assert parts["s1:tiny:padded:sdpa"].get("decoder_tokens_per_s") is None
    # padded: 300 speech positions per clip; trimmed: 10 per second of its 3-10 s
    pos = {n: parts[n]["llm_positions_per_sample"] for n in STEP_PARTS[:2]}
    assert pos["s1:tiny:padded:sdpa"] - pos["s1:tiny:trimmed:sdpa"] > 150, pos
    units = parts["units"]
    assert units["fp32"]["agreement_vs_fp32"] == 1.0 and units["fp32"]["audio_s_per_s"] > 0
    for name in ("bf16", "fp16"):          # on the CPU: refused by the extractor, or measured
        assert "refused" in units[name] or 0 <= units[name]["agreement_vs_fp32"] <= 1, units[name]
    log = (out / "gpu_check.log").read_text()
    assert "[omni_ds] world 1, micro 2" in log and "site/omni_ds/__init__.py" in log


def test_a_failing_and_a_timed_out_part_are_recorded(tmp_path):
    # 2 x (2 + 10) samples: more than the 8 clips of the tiny pool -> s1 fails; units still runs
    out = tmp_path / "fail"
    p = subprocess.run([sys.executable, "bench/bench_gpu.py", "--tiny", "--out", str(out), "--steps", "10",
                        "--only", "s1:tiny:padded:sdpa,units"], cwd=REPO, capture_output=True, text=True,
                       timeout=600, env=_env())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    parts = json.loads((out / "gpu_figures.json").read_text())["parts"]
    assert parts["units"]["status"] == "ok" and parts["prepare:tiny"]["status"] == "ok"
    assert parts["s1:tiny:padded:sdpa"]["status"] == "failed"
    assert "8 clips in the pool, the run needs 24" in parts["s1:tiny:padded:sdpa"]["error"]
    # 1 s per part, 2 s for the group (data, units): the worker is killed before units ends; the
    # part it was in is the timeout, those after it did not run, those before it kept their figures
    out = tmp_path / "timeout"
    p = subprocess.run([sys.executable, "bench/bench_gpu.py", "--tiny", "--out", str(out), "--only", "units",
                        "--part-timeout-s", "1"], cwd=REPO, capture_output=True, text=True, timeout=120, env=_env())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    parts = json.loads((out / "gpu_figures.json").read_text())["parts"]
    statuses = [parts[n]["status"] for n in ("data", "units")]
    assert statuses in (["timeout", "not run"], ["ok", "timeout"]), parts
    late = statuses.index("timeout")
    assert "time box of 2 s" in parts[("data", "units")[late]]["error"], parts


def test_the_gpu_plan():
    """What a GPU run measures: both shapes, both encoder modes, flash-attention when installed,
    recompute for the 8 B stage 1 only; the 8 B depth the memory estimate fits in an H200."""
    import bench_gpu
    import gpu_parts
    from omni_ds.train.memory import LLM_PRESETS
    names = [p["name"] for p in bench_gpu.plan(False, True, 5, 2, "bf16")]
    for shape in ("llama-3.2-1b", "llama-3.1-8b"):
        assert names.index(f"prepare:{shape}") < names.index(f"s1:{shape}:padded:sdpa")
        for enc in ("padded", "trimmed"):
            for attn in ("sdpa", "flash_attention_2"):
                assert f"s1:{shape}:{enc}:{attn}" in names
        assert f"s2:{shape}:padded:sdpa" in names
    assert "flash_attention_2" not in " ".join(p["name"] for p in bench_gpu.plan(False, False, 5, 2, "bf16"))
    rec = {p["name"]: p["recompute"] for p in bench_gpu.plan(False, False, 5, 2, "bf16") if p["kind"] == "steps"}
    assert rec["s1:llama-3.1-8b:padded:sdpa"] and not rec["s2:llama-3.1-8b:padded:sdpa"]
    assert not rec["s1:llama-3.2-1b:padded:sdpa"]
    # 139.8 GiB (H200), 75 %: 18 of 32 layers; the full 32 would need 158 GiB by the same estimate
    assert gpu_parts.fit_layers(LLM_PRESETS["llama-3.1-8b"], 139.8, 0.75, 8, 512, True) == 18
    assert gpu_parts.fit_layers(LLM_PRESETS["llama-3.1-8b"], 1000.0, 0.75, 8, 512, True) == 32
