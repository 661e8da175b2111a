"""Runs many training recipes in one launched job (the recipe-matrix test starts it):

    deepspeed --num_gpus 2 tests/recipe_matrix_driver.py --cases cases.json --results results.json

A case is either a documented command line (`argv` for launch/stage{N}.py, run through its own
CLI) or a training config + a DeepSpeed config. For the latter: a run to `first_steps` (it ends
with a checkpoint and a final folder), then the same output_dir again to `resume_steps` (it must
resume from that checkpoint and write the final folder anew). Engines are built and dropped one
after another in these two processes, which saves ~15 s of start-up per case. A case that
raises is recorded with its traceback and the next case runs; rank 0 writes the results.
"""
import argparse
import gc
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEEP = ("status", "error", "steps", "final_loss", "resumed_from", "param_dtypes", "final_dir", "checkpoint",
        "zero_stage", "optimizer_state_params", "evals", "memory_check_fits", "skipped_steps")


def release_engine_state() -> None:
    """What a finished run may leave for the next one: transformers' global ZeRO-3 config
    (from_pretrained would partition a ZeRO-2 run's LLM) and the dropped engine's memory."""
    try:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config
        unset_hf_deepspeed_config()
    except ImportError:
        pass
    gc.collect()


def run_command(case: dict) -> dict:
    """A documented command line: launch/stage{N}.py's own CLI on `argv`; its summary.json."""
    from omni_ds.train.recipe import run_cli
    out = {"name": case["name"]}
    try:
        out["rc"] = run_cli(case["argv"], case["stage"])
        summary = Path(case["output_dir"]) / "summary.json"
        out["summary"] = {k: v for k, v in json.loads(summary.read_text()).items() if k in KEEP} \
            if summary.is_file() else None
    except BaseException:                              # SystemExit from argparse included
        out["traceback"] = traceback.format_exc()
    release_engine_state()
    return out


def run_case(case: dict) -> dict:
    from omni_ds.train.config import build_config
    from omni_ds.train.recipe import run
    if "argv" in case:
        return run_command(case)
    out = {"name": case["name"], "runs": []}
    try:
        for steps in (case["first_steps"], case["resume_steps"]):
            cfg = build_config(dict(case["config"], max_steps=steps), source=case["name"])
            summary = run(cfg, case["ds"], gpu_memory_gib=case.get("gpu_memory_gib"))
            out["runs"].append({k: summary.get(k) for k in KEEP})
            release_engine_state()
    except Exception:                                    # recorded; the test reports it by case
        out["traceback"] = traceback.format_exc()
        release_engine_state()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--local_rank", type=int, default=None)
    args = ap.parse_args()
    results = [run_case(c) for c in json.loads(Path(args.cases).read_text())]
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.results).write_text(json.dumps(results, indent=1, default=str))
    from omni_ds.train.recipe import shutdown_distributed
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
