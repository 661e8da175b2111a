"""A resume checks what decides the data order and the optimizer (omni_ds.train.resume_check):
changed seed / training manifest / global batch are refused in one message naming each, with the
ways out; checkpoint.accept_changes resumes anyway; an unchanged resume, and one from a checkpoint
saved before the check existed (with a notice), resume. Real tiny stage-1 Trainers, 1 CPU rank."""
import json

import pytest

from omni_ds.train.checkpointing import STATE_FILE
from omni_ds.train.config import ConfigError, build_config
from omni_ds.train.demo import demo_stage1_config, write_tiny_setup
from launcher import single_rank_process_group

pytestmark = pytest.mark.filterwarnings("ignore")



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_checks")
    demo = write_tiny_setup(root / "data", n_clips=4, val_clips=2)
    rows = (demo / "train.jsonl").read_text().splitlines()
    edited = [json.dumps(dict(json.loads(rows[0]), text_response="An edited answer."))] + rows[1:]
    (demo / "train_edited.jsonl").write_text("\n".join(edited) + "\n")
    with single_rank_process_group():
        first = _trainer(demo, root / "out")
        first.train(until=1)
        first.checkpointer.save(first.engine, 1, first.checkpoint_state())
        first.close()
        yield demo, root / "out"


def _config(demo, out, **overrides):
    settings = dict(output_dir=str(out), per_device_train_batch_size=2, global_batch_size=2, max_steps=4,
                    save_steps=0, report_to=[], progress_bar=False, val_manifest=None)
    raw = demo_stage1_config(demo, **dict(settings, **overrides))
    raw.pop("_comment")
    return build_config(raw)


def _trainer(demo, out, **overrides):
    from omni_ds.train.trainer import Trainer
    return Trainer(_config(demo, out, **overrides), "ds_configs/zero2.json")


CHANGES = dict(seed=1, global_batch_size=4)


def _changed(demo):
    return dict(CHANGES, train_manifest=str(demo / "train_edited.jsonl"))


def test_changed_seed_manifest_and_global_batch_are_refused_naming_each(setup):
    demo, out = setup
    with pytest.raises(ConfigError) as e:
        _trainer(demo, out, **_changed(demo))
    msg = str(e.value)
    assert "\n" not in msg and "step_000001" in msg
    assert "seed 0 -> 1" in msg and "global_batch 2 -> 4" in msg
    assert "train_manifest " in msg and "train.jsonl) -> " in msg and "train_edited.jsonl)" in msg
    assert "--resume never" in msg and "new output_dir" in msg
    assert """checkpoint.accept_changes=["seed", "train_manifest", "global_batch"]""" in msg
    with pytest.raises(ConfigError, match=r"^[^;]*seed 0 -> 1\. Start fresh"):     # one change: named alone
        _trainer(demo, out, seed=1)


def test_the_dry_run_says_what_the_resume_would_refuse(setup, capsys):
    from omni_ds.train.dry_run import DryRun
    demo, out = setup
    ds = json.loads(open("ds_configs/zero2.json").read())
    assert DryRun(_config(demo, out, seed=1), 1).run("ds_configs/zero2.json", ds, None, None) == 1
    printed = capsys.readouterr().out
    assert "ERROR " in printed and "seed 0 -> 1" in printed and "dry run: NOT READY" in printed


def test_accepting_the_changes_resumes(setup, capsys):
    demo, out = setup
    t = _trainer(demo, out, accept_changes=["seed", "train_manifest", "global_batch"], **_changed(demo))
    assert t.resumed_from is not None and t.resumed_from.name == "step_000001" and t.state.step == 1
    log = capsys.readouterr().out
    assert "resuming with accepted change(s)" in log and "seed 0 -> 1" in log
    t.close()


def test_unchanged_resume_and_an_older_checkpoint_resume(setup, capsys):
    demo, out = setup
    t = _trainer(demo, out)
    assert t.resumed_from.name == "step_000001" and t.state.step == 1
    assert "predates" not in capsys.readouterr().out
    t.close()
    state_file = out / "checkpoints" / "step_000001" / STATE_FILE
    state = json.loads(state_file.read_text())
    state.pop("resume_identity")                                  # as omni_ds wrote it before the check
    state_file.write_text(json.dumps(state))
    t = _trainer(demo, out)
    assert t.resumed_from.name == "step_000001" and t.state.step == 1
    assert "predates the resume checks of train_manifest, model: those are not checked" in capsys.readouterr().out
    t.close()
    with pytest.raises(ConfigError, match="seed 0 -> 1"):           # what its config tells is still checked
        _trainer(demo, out, seed=1)


def test_accept_changes_names_are_checked():
    raw = demo_stage1_config("/nonexistent", accept_changes=["seed", "lr"])
    raw.pop("_comment")
    with pytest.raises(ConfigError, match="'checkpoint.accept_changes'.*entries allowed: \"seed\""):
        build_config(raw)
