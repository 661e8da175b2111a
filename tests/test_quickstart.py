"""The README's demo command, shortened: every phase of launch/quickstart.sh runs for real
(demo data, 2-rank stage 1, unit extraction, 2-rank stage 2 with the hidden-state cache,
inference, tools/evaluate.py on both stages) with few steps, and the report comes out."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_quickstart_short_variant(tmp_path):
    # the script installs into the active venv: this interpreter's (already set up by tests/run.sh)
    env = dict(os.environ, QUICKSTART_STAGE1_STEPS="6", QUICKSTART_STAGE2_STEPS="6", VIRTUAL_ENV=sys.prefix,
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("VENV", None)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    demo = tmp_path / "demo"
    run = subprocess.run(["bash", str(REPO / "launch" / "quickstart.sh"), str(demo)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "=== quickstart report ===" in run.stdout and "time per phase" in run.stdout
    assert "evaluation, stage 1" in run.stdout and "evaluation, stage 2" in run.stdout
    for stage in (1, 2):     # the report's evaluation comes from tools/evaluate.py's own files
        out = demo / "eval" / f"stage{stage}"
        report = json.loads((out / "report.json").read_text())
        assert report["summary"]["evaluated"] == 16 and (out / "report.md").is_file() and list(out.glob("*.png"))
    # with the demo vocoder every answer that has units is spoken (6 stage-2 steps may leave none)
    for row in json.loads((demo / "eval" / "stage2" / "report.json").read_text())["samples"]:
        assert bool(row.get("wav")) == bool(row.get("units")), row
    for stage in (1, 2):
        summary = json.loads((demo / "runs" / f"stage{stage}" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 6
    answer = json.loads((demo / "answer.json").read_text())
    assert set(answer) == {"text", "token_ids", "units"}
    assert (demo / "answer_units.txt").read_text().split() == [str(u) for u in answer["units"]]
    final = json.loads((demo / "runs" / "stage2" / "final" / "config.json").read_text())
    assert final["model_type"] == "omni_speech2s_llama" and final["speech_generator_type"] == "ctc"
