"""A clip deleted after validation (data.on_bad = "skip"): the record is left out of its step,
named on stderr and counted in the logs and summary.json; no other record trains in its place
(each sample at most once per epoch). With a DataLoader worker too, where the dataset's own
state would be lost. Real tiny stage-1 Trainer, 1 CPU rank."""
import json
import shutil

import pytest

from omni_ds.train.config import build_config
from omni_ds.train.demo import demo_stage1_config, write_tiny_setup
from launcher import single_rank_process_group

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_vanished_clip_is_skipped_and_counted_not_replaced(tmp_path, capfd, workers):
    from omni_ds.train.trainer import Trainer
    demo = write_tiny_setup(tmp_path / "demo", n_clips=6, val_clips=2)
    raw = demo_stage1_config(demo, output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                             global_batch_size=2, num_train_epochs=2, save_steps=0, report_to=[],
                             progress_bar=False, val_manifest=None, cache_in_memory=False, num_workers=workers,
                             trace_samples=True, logging_steps=1)
    raw.pop("_comment")
    records = [json.loads(line) for line in open(demo / "train.jsonl")]
    doomed = tmp_path / "doomed.wav"                      # record 3's clip, a copy this test may delete
    shutil.copy(records[3]["speech_instruction_path"], doomed)
    records[3]["speech_instruction_path"] = str(doomed)
    (demo / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with single_rank_process_group():
        t = Trainer(build_config(raw), "ds_configs/zero2.json")
        doomed.unlink()                                    # gone after validation
        summary = t.run()
    assert summary["status"] == "completed" and summary["load_failures"] == 2      # once per epoch
    err = capfd.readouterr().err
    assert err.count("skipped a record that failed to load") == 2 and f"record {records[3]['id']}" in err
    rows = [json.loads(line) for line in open(tmp_path / "out" / "trace" / "rank0.jsonl")]
    for epoch in (0, 1):
        seen = sorted(i for r in rows if r["epoch"] == epoch for i in r["samples"])
        assert seen == [0, 1, 2, 4, 5], (epoch, seen)                      # 3 left out, none twice
    metrics = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert metrics[-1]["train/load_failures"] == 2
