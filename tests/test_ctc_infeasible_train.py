"""Stage 2 meeting answers that no CTC alignment exists for (units changed after validation), on
a real tiny model and DeepSpeed engine (1 CPU rank, ZeRO-2, uncached: the frozen LLM runs in the
step): each answer is logged with its record id and lengths and counted; "skip" trains the step on
the other answers, "error" (or a step with nothing left) stops the run before the step."""
import json

import pytest
import torch

from omni_ds.train.config import build_config
from omni_ds.train.data import infeasible_answers
from omni_ds.train.demo import demo_stage2_config, write_tiny_stage2_setup
from omni_ds.train.hidden_cache import collate_cached
from omni_ds.train.loop import InfeasibleCTC
from launcher import single_rank_process_group

pytestmark = pytest.mark.filterwarnings("ignore")
REPEATS = 400                                  # one unit 400 times: 399 blanks needed between them


class RepeatedUnits(torch.utils.data.Dataset):
    """The training set with the units of some records replaced after validation."""

    def __init__(self, base, indices):
        self.base, self.indices = base, set(indices)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = dict(self.base[i])
        if item["sample_index"] in self.indices:
            item["units"] = torch.full((REPEATS,), 7, dtype=torch.long)
        return item



@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from omni_ds.train.trainer import Trainer
    root = tmp_path_factory.mktemp("ctc_infeasible")
    demo = write_tiny_stage2_setup(root / "demo", n_clips=4, val_clips=2)
    raw = demo_stage2_config(demo, output_dir=str(root / "out"), cache_hidden_states=False, val_manifest=None,
                             max_steps=10, save_steps=0, report_to=[], progress_bar=False)
    raw.pop("_comment")
    with single_rank_process_group():
        t = Trainer(build_config(raw), "ds_configs/zero2.json")
        t.units = {json.loads(line)["id"]: len(json.loads(line)["units"]) for line in open(demo / "train_units.jsonl")}
        yield t


def _inject(t, indices):
    t.stream.dataset = RepeatedUnits(t.train_set, indices)
    t.stream._it = None                        # reopen the loader on the new dataset


def test_skip_logs_counts_and_trains_on_the_other_answers(trainer, capsys):
    ids = list(trainer.units)
    _inject(trainer, [1])
    scalars = trainer.train_step()
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "ctc infeasible" in x)
    assert f"record {ids[1]} (manifest index 1), answer 1: " in line
    assert f"frames, stretched to {REPEATS} < {REPEATS} units + {REPEATS - 1} repeats" in line
    assert scalars["ctc_infeasible"] == 1 and trainer.state.ctc_infeasible == 1
    # the other three records' units are the step's targets: the left-out answer dilutes nothing
    assert scalars["targets"] == sum(n for rid, n in trainer.units.items() if rid != ids[1])
    assert 0 < scalars["loss"] < float("inf")


def test_a_step_with_nothing_left_stops_under_skip(trainer):
    _inject(trainer, range(4))
    step = trainer.state.step
    with pytest.raises(InfeasibleCTC, match="4 answer.s. that no CTC alignment exists for .* no other answer is left"):
        trainer.train_step()
    assert trainer.state.step == step and trainer.state.ctc_infeasible == 5


def test_error_policy_stops_the_run_naming_the_record(trainer, capsys):
    trainer.cfg.data.on_bad = "error"
    _inject(trainer, [2])
    summary = trainer.run()
    assert summary["status"] == "stopped_ctc_infeasible" and 'data.on_bad = "error"' in summary["error"]
    assert summary["ctc_infeasible_answers"] == 6
    assert f"record {list(trainer.units)[2]} (manifest index 2), answer 1" in capsys.readouterr().err


def test_cached_batches_name_each_answer_of_a_dialogue():
    d = 4
    dialogue = {"response_states": [torch.zeros(3, d), torch.zeros(2, d)], "sample_index": 9,
                "units": [torch.tensor([1, 2, 3]), torch.tensor([5, 5, 5, 5, 5, 5, 5, 5])]}
    single = {"response_states": torch.zeros(1, d), "units": torch.tensor([4, 4]), "sample_index": 3}
    batch = collate_cached([single, dialogue])
    assert batch["response_rows"].tolist() == [0, 1, 1]
    # factor 3: the dialogue's second answer has 2 x 3 = 6 frames < 8 units + 7 repeats; 4, 4 fits in 3
    found = infeasible_answers(batch, 3, "predicting")
    assert [(a.row, a.answer, a.n_states, a.n_units, a.repeats) for a in found] == [(1, 2, 2, 8, 7)]
