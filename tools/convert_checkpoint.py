"""Convert a ZeRO-1/2 training checkpoint into DeepSpeed's universal form, which resumes at any
world size (2 -> 1, 1 -> 2 ranks, ... with the same later losses, tested):

    python tools/convert_checkpoint.py --checkpoint runs/stage1/checkpoints/step_000400
    deepspeed --num_gpus 1 launch/stage1.py --config ... --set checkpoint.resume=runs/stage1/checkpoints/step_000400_universal

Writes `<checkpoint>_universal` beside it (or --out) with DeepSpeed's ds_to_universal and
copies omni_ds's state (step, data position, resume identity) into it; the run then loads it
through DeepSpeed's universal path by itself. RNG states are per rank and are not carried over
(the data order does not depend on them). ZeRO-3 checkpoints are refused: see
omni_ds/train/checkpoint_files.py.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _refusal(ckpt: Path, out: Path):
    from omni_ds.train.checkpoint_files import file_problems, is_universal, saved_zero3
    from omni_ds.train.checkpointing import STATE_FILE
    if is_universal(ckpt):
        return f"{ckpt} is already universal"
    if saved_zero3(ckpt):
        return (f"{ckpt} is a ZeRO-3 checkpoint: DeepSpeed's universal conversion does not restore its optimizer "
                "exactly; resume it at the world size that saved it")
    state = json.loads((ckpt / STATE_FILE).read_text())
    problems = file_problems(ckpt, int(state.get("world_size") or 1), state.get("zero_stage"))
    if problems:
        return "; ".join(problems)
    if out.exists() and any(out.iterdir()):
        return f"--out {out} exists and is not empty"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a step_N folder, a checkpoints/ folder or an output_dir")
    ap.add_argument("--out", default=None, help="default: <checkpoint>_universal beside it")
    args = ap.parse_args(argv)
    from omni_ds.train.checkpointing import STATE_FILE, find_checkpoint
    try:
        ckpt = find_checkpoint(args.checkpoint, f"--checkpoint {args.checkpoint}")
    except (OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else ckpt.with_name(ckpt.name + "_universal")
    refusal = _refusal(ckpt, out)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt),
           "--output_folder", str(out), "--num_extract_workers", "1", "--num_merge_workers", "1",
           "--inject_missing_state"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"error: DeepSpeed's ds_to_universal failed on {ckpt}:\n{done.stderr[-3000:]}", file=sys.stderr)
        return 1
    state = json.loads((ckpt / STATE_FILE).read_text())
    state["universal_from"] = str(ckpt)
    (out / STATE_FILE).write_text(json.dumps(state, indent=1))
    print(f"convert: wrote {out} (step {state['step']}, saved by {state.get('world_size')} rank(s)); resume at "
          f"any world size with --set checkpoint.resume={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
