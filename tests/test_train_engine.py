"""One real DeepSpeed engine (1 CPU rank, gloo, ZeRO-2) built by the Trainer:
parameter groups read back from the optimizer, the frozen encoder gets no gradient and no
optimizer state, and a non-finite loss stops training with the last good checkpoint intact."""
import json
import math

import pytest
import torch

from omni_ds.train.config import build_config
from omni_ds.train.demo import demo_stage1_config, write_tiny_setup
from launcher import single_rank_process_group

pytestmark = pytest.mark.filterwarnings("ignore")



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import deepspeed  # noqa: F401
    from omni_ds.train.trainer import Trainer
    root = tmp_path_factory.mktemp("engine")
    demo = write_tiny_setup(root / "data", n_clips=4, val_clips=2)
    raw = demo_stage1_config(demo, output_dir=str(root / "out"), learning_rate=2e-4, speech_projector_lr=1e-3,
                             weight_decay=0.1, warmup_ratio=0.0, per_device_train_batch_size=2,
                             global_batch_size=2, max_steps=20, save_steps=1, save_total_limit=2,
                             report_to=[], progress_bar=False, val_manifest=None)
    raw.pop("_comment")
    cfg = build_config(raw)
    with single_rank_process_group():
        r = Trainer(cfg, "ds_configs/zero2.json")
        yield r
        r.close()


def _fit(r, steps):
    return r.train(until=r.state.step + steps)


def test_param_groups_read_back_from_optimizer(run):
    groups = {g["name"]: g for g in run.engine.optimizer.param_groups}
    assert set(groups) == {"projector", "projector_no_decay", "llm", "llm_no_decay"}
    assert groups["projector"]["lr"] == pytest.approx(1e-3) and groups["projector_no_decay"]["lr"] == pytest.approx(1e-3)
    assert groups["llm"]["lr"] == pytest.approx(2e-4) and groups["llm_no_decay"]["lr"] == pytest.approx(2e-4)
    assert groups["llm"]["weight_decay"] == 0.1 and groups["projector"]["weight_decay"] == 0.1
    assert groups["llm_no_decay"]["weight_decay"] == 0.0 and groups["projector_no_decay"]["weight_decay"] == 0.0
    # which tensors each optimizer group holds (ZeRO keeps the 16-bit groups in optimizer order)
    names = {id(p): n for n, p in run.engine.module.named_parameters()}
    for group, params in zip(run.engine.optimizer.param_groups, run.engine.optimizer.bit16_groups):
        held = [names[id(p)] for p in params]
        prefix = "speech_projector." if group["name"].startswith("projector") else "llm."
        assert held and all(n.startswith(prefix) for n in held), (group["name"], held)
        if group["name"].endswith("no_decay"):
            assert all(n.endswith("bias") or "norm" in n for n in held)
        else:
            assert not any(n.endswith("bias") or "norm" in n for n in held)


def test_encoder_gets_no_grad_and_no_optimizer_state(run):
    enc = {n: p.detach().clone() for n, p in run.engine.module.named_parameters() if n.startswith("speech_encoder.")}
    proj = {n: p.detach().clone() for n, p in run.engine.module.named_parameters() if n.startswith("speech_projector.")}
    assert enc and proj
    _fit(run, 1)
    params = dict(run.engine.module.named_parameters())
    for n, before in enc.items():
        assert params[n].grad is None and not params[n].requires_grad, n
        assert torch.equal(params[n].detach(), before), f"{n} changed"
    assert any(not torch.equal(params[n].detach(), p) for n, p in proj.items()), "projector did not train"
    trainable = sum(p.numel() for n, p in params.items() if p.requires_grad)
    encoder = sum(p.numel() for n, p in params.items() if n.startswith("speech_encoder."))
    state_numel = sum(s["exp_avg"].numel() for s in run.engine.optimizer.optimizer.state.values())
    # Adam moments cover the trainable parameters (plus ZeRO's alignment padding), not the encoder
    assert trainable <= state_numel < trainable + 64 and encoder > 64


def test_nonfinite_loss_stops_with_last_checkpoint_intact(run):
    from omni_ds.train.checkpointing import STATE_FILE
    from omni_ds.train.loop import NonFiniteLoss
    _fit(run, 1)                                      # save_steps=1: a complete checkpoint now
    good = run.checkpointer.latest()
    assert good is not None and (good / STATE_FILE).is_file()
    files_before = sorted(p.name for p in good.iterdir())
    step_before = json.loads((good / STATE_FILE).read_text())["step"]
    with torch.no_grad():                             # a fault: one LLM weight goes NaN
        run.engine.module.llm.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss) as e:
        _fit(run, 1)
    msg = str(e.value)
    assert "non-finite loss" in msg and f"step {step_before + 1}" in msg and str(good) in msg
    trained = [json.loads(line)["id"] for line in open(run.cfg.data.train_manifest)]
    named = msg.split("this rank's records: ")[1].rstrip(").").split(", ")
    assert len(named) == 2 and set(named) <= set(trained)        # the step's micro batch of 2, by id
    assert run.checkpointer.latest() == good and sorted(p.name for p in good.iterdir()) == files_before
    assert json.loads((good / STATE_FILE).read_text())["step"] == step_before
    assert not math.isfinite(run.state.last_loss) or run.state.step == step_before + 1
