"""Stage 2: train the CTC speech decoder on the frozen LLM's response states (everything else
frozen, in eval mode, without optimizer state). Starts from stage 1's final folder
(`init_from`), or from the released LLaMA-Omni folder.

    deepspeed --num_gpus 4 launch/stage2.py --config launch/configs/stage2.json --ds ds_configs/zero2.json

Same CLI, config keys and DeepSpeed machinery as launch/stage1.py (see its docstring).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omni_ds.train.recipe import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(stage=2))
