"""Distributed batch sampler: coverage per epoch on 1-3 ranks, determinism, exact resume, modes."""
from collections import Counter

import numpy as np
import pytest

from omni_ds.data.sampler import Batching, DistributedBatchSampler, padding_efficiency

LENGTHS = np.random.default_rng(0).integers(20, 500, size=103)


def _epoch(world, mode="random", batch=4, epoch=0, drop_last=False, **kw):
    per_rank = []
    for r in range(world):
        s = DistributedBatchSampler(LENGTHS, batch, world_size=world, rank=r, seed=7,
                                    batching=Batching(mode, drop_last=drop_last, **kw))
        s.set_epoch(epoch)
        per_rank.append(list(s))
    return per_rank, s.padding_batches


MODES = [("random", {}), ("length_grouped", {"megabatch_mult": 2}), ("token_budget", {"max_tokens": 1500})]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("mode, kw", MODES, ids=[m for m, _ in MODES])
def test_each_sample_once_per_epoch(world, mode, kw):
    per_rank, pad_batches = _epoch(world, mode, **kw)
    assert len({len(b) for b in per_rank}) == 1                # same step count on every rank
    flat = [i for rank in per_rank for b in rank for i in b]
    counts = Counter(flat)
    assert set(counts) == set(range(len(LENGTHS)))             # every sample seen
    # the only repeats are the padding batches (whole batches from the start of the plan)
    s = DistributedBatchSampler(LENGTHS, 4, world_size=world, seed=7, batching=Batching(mode, **kw))
    plan = s.epoch_batches(0)
    real = plan[:len(plan) - pad_batches]
    assert sorted(i for b in real for i in b) == list(range(len(LENGTHS)))
    assert len(flat) - len(LENGTHS) == sum(len(b) for b in plan[len(real):])
    assert pad_batches == (-len(real)) % world


@pytest.mark.parametrize("world", [2, 3])
def test_drop_last_has_no_duplicates(world):
    per_rank, pad = _epoch(world, batch=4, drop_last=True)
    flat = [i for rank in per_rank for b in rank for i in b]
    assert pad == 0 and len(flat) == len(set(flat)) and len({len(b) for b in per_rank}) == 1
    assert len(LENGTHS) - len(flat) < 4 * world


def test_deterministic_per_seed_and_epoch():
    a, _ = _epoch(2, epoch=1)
    b, _ = _epoch(2, epoch=1)
    c, _ = _epoch(2, epoch=2)
    assert a == b and a != c
    other_seed = DistributedBatchSampler(LENGTHS, 4, world_size=2, seed=8).epoch_batches(1)
    assert other_seed != DistributedBatchSampler(LENGTHS, 4, world_size=2, seed=7).epoch_batches(1)


@pytest.mark.parametrize("mode, kw", MODES, ids=[m for m, _ in MODES])
def test_resume_mid_epoch_sees_exactly_the_rest(mode, kw):
    for world in (1, 3):
        for rank in range(world):
            full = DistributedBatchSampler(LENGTHS, 4, world_size=world, rank=rank, seed=7,
                                           batching=Batching(mode, **kw))
            full.set_epoch(3)
            all_batches = list(full)
            consumed = 5
            state = full.state_dict(batches_consumed=consumed)
            resumed = DistributedBatchSampler(LENGTHS, 4, world_size=world, rank=rank, seed=7,
                                              batching=Batching(mode, **kw))
            resumed.load_state_dict(state)
            rest = list(resumed)
            assert rest == all_batches[consumed:] and len(resumed) == len(all_batches) - consumed
            assert sorted(i for b in all_batches[:consumed] + rest for i in b) == \
                sorted(i for b in all_batches for i in b)


def test_resume_refuses_changed_setup():
    s = DistributedBatchSampler(LENGTHS, 4, world_size=2, seed=7)
    state = s.state_dict(3)
    with pytest.raises(ValueError, match="world_size"):
        DistributedBatchSampler(LENGTHS, 4, world_size=3, seed=7).load_state_dict(state)


def test_length_grouped_pads_less_than_random():
    lengths = np.random.default_rng(1).lognormal(5, 0.5, size=4000).astype(int) + 1
    rand = padding_efficiency(DistributedBatchSampler(lengths, 8, batching=Batching("random")).epoch_batches(0), lengths)
    grouped_s = DistributedBatchSampler(lengths, 8, batching=Batching("length_grouped"))
    grouped = padding_efficiency(grouped_s.epoch_batches(0), lengths)
    assert grouped > 0.9 > rand
    # batches are contiguous runs of the sorted megabatch; steps (not samples) are shuffled
    first = [lengths[b].max() for b in grouped_s.epoch_batches(0)[:20]]
    assert first != sorted(first, reverse=True)


def test_token_budget_respected():
    s = DistributedBatchSampler(LENGTHS, 1, batching=Batching("token_budget", max_tokens=1200))
    for b in s.epoch_batches(0):
        assert len(b) * LENGTHS[b].max() <= 1200 or len(b) == 1
    sizes = {len(b) for b in s.epoch_batches(0)}
    assert max(sizes) > 2                         # short samples share a batch
    single = DistributedBatchSampler(np.array([5000, 10, 10]), 1, batching=Batching("token_budget", max_tokens=100))
    assert sorted(map(len, single.epoch_batches(0))) == [1, 2]    # over-budget sample alone


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_tokens"):
        DistributedBatchSampler(LENGTHS, 4, batching=Batching("token_budget"))
    with pytest.raises(ValueError, match="allowed"):
        DistributedBatchSampler(LENGTHS, 4, batching=Batching("bucketed"))
    with pytest.raises(ValueError, match="rank"):
        DistributedBatchSampler(LENGTHS, 4, world_size=2, rank=2)


def test_opening_the_step_stream_leaves_the_global_rng_alone():
    """A resumed run opens its data iterator mid-epoch, where the uninterrupted run did not: if
    that drew from the global torch RNG (DataLoader's worker base seed), every later dropout mask
    (LoRA's) would differ and the resume would not be exact."""
    import torch
    from omni_ds.train.data import StepStream
    data = [{"x": torch.tensor([float(i)])} for i in range(8)]
    sampler = DistributedBatchSampler([1] * 8, 2, 1, 0, seed=3)
    stream = StepStream(data, sampler, 1, lambda items: items)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    stream.next_step()
    assert torch.equal(torch.get_rng_state(), before)
    resumed = StepStream(data, sampler, 1, lambda items: items, step_in_epoch=1)
    assert [b["x"] for b in resumed.next_step()[2][0]] == [b["x"] for b in stream.next_step()[2][0]]
