"""Stage 2: train the CTC speech decoder on the frozen LLM's response states (everything else
frozen, in eval mode, without optimizer state). Starts from stage 1's final folder
(`init_from`), or from the released LLaMA-Omni folder.

    deepspeed --num_gpus 4 launch/stage2.py --config launch/configs/stage2.json --ds ds_configs/zero2.json
    deepspeed --num_gpus 2 launch/stage2.py --config DIR/stage2.json --ds ds_configs/zero2.json   # CPU demo
    python launch/stage2.py --config ... --ds ... --dry-run [--world-size 4 --gpu L40]

Same CLI, config keys and DeepSpeed machinery as launch/stage1.py (see its docstring). Stage-2
keys: init_from (required), cache_hidden_states, cache_dir, cache_dtype (omni_ds/train/config.py).
Validation logs the CTC loss and the unit edit distance of the decoder's greedy units.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omni_ds.train.recipe import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(stage=2))
