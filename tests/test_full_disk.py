"""A checkpoint save on a full disk (a real 12 MB tmpfs, mounted when this machine allows it):
one message that says "no space left on device" with the path, `latest` still naming the last
complete checkpoint, the partial folder gone."""
import json
import shutil
import subprocess

import pytest
import torch

from omni_ds.train.config import build_config
from omni_ds.train.demo import demo_stage1_config, write_tiny_setup
from launcher import single_rank_process_group


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
    yield mount
    # lazy: detached now even while a file on it is still open (freed once closed), so no mount
    # outlives the test and pytest can remove its folder later
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_during_a_save_is_named_and_latest_is_kept(tmp_path, small_disk):
    from omni_ds.train.checkpointing import LATEST, CheckpointSaveError
    from omni_ds.train.trainer import Trainer
    demo = write_tiny_setup(tmp_path / "demo", n_clips=4, val_clips=2)
    raw = demo_stage1_config(demo, output_dir=str(small_disk / "out"), per_device_train_batch_size=2,
                             global_batch_size=2, max_steps=20, save_steps=0, save_total_limit=0,
                             report_to=[], progress_bar=False, val_manifest=None)
    raw.pop("_comment")
    with single_rank_process_group():
        t = Trainer(build_config(raw), "ds_configs/zero2.json")
        t.train(until=1)
        first = t.checkpointer.save(t.engine, 1, t.checkpoint_state())        # fits: ~1/3 of the disk
        filler = small_disk / "filler.bin"
        free = shutil.disk_usage(small_disk).free
        with open(filler, "wb") as f:                                           # leave less than a checkpoint
            f.write(bytes(max(free - (1 << 20), 0)))
        t.train(until=2)
        with pytest.raises(CheckpointSaveError) as e:
            t.checkpointer.save(t.engine, 2, t.checkpoint_state())
        msg = str(e.value)
        assert "no space left on device" in msg and "step_000002" in msg and str(first) in msg
        assert (t.checkpointer.dir / LATEST).read_text().strip() == first.name
        assert not (t.checkpointer.dir / "step_000002").exists() and t.checkpointer.latest() == first
        assert json.loads((first / "omni_ds_state.json").read_text())["step"] == 1
        t.close()
    assert torch.load(first / "rng_rank0.pt", weights_only=False) is not None
