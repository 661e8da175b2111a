"""Stage 1: train the speech projector + LLM on text answers (Whisper encoder frozen).

    deepspeed --num_gpus 4 launch/stage1.py --config launch/configs/stage1.json --ds ds_configs/zero3.json
    deepspeed --hostfile hostfile launch/stage1.py --config ... --ds ...        # multi-node
    deepspeed --num_gpus 2 launch/stage1.py --config DIR/stage1.json --ds ds_configs/zero2.json   # CPU demo
    python launch/stage1.py --config ... --ds ... --dry-run [--world-size 4 --gpu L40]

Override any config key with --set key=value (repeatable); resume with --resume PATH (default:
automatically from output_dir/checkpoints/latest).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omni_ds.train.recipe import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(stage=1))
