"""cifar/data/plan.py: the epoch plan's draws, from (seed, epoch) alone, and the test set's
shards."""

import pytest
import torch

from cifar.data.plan import EpochPlan, shard_bounds


def test_the_plan_draws_order_then_crops_then_flips_from_seed_and_epoch_alone():
    plan = EpochPlan(50, batch_size=8, seed=7, augment="crop-flip", padding=4)
    plan.set_epoch(3)
    generator = torch.Generator().manual_seed(7 * 1_000_003 + 3)
    expected = (
        torch.randperm(50, generator=generator),
        torch.randint(0, 9, (50, 2), generator=generator),
        torch.randint(0, 2, (50,), generator=generator).bool(),
    )
    for drawn, wanted in zip(plan.draws(), expected, strict=True):
        assert torch.equal(drawn, wanted)
    flip_only = EpochPlan(50, batch_size=8, seed=7, augment="flip", padding=4)
    flip_only.set_epoch(3)
    order, shifts, flips = flip_only.draws()
    assert torch.equal(order, expected[0]) and torch.equal(flips, expected[2])
    assert (shifts == 4).all()  # centred: no shift


@pytest.mark.parametrize("n", [0, 1, 7, 10_001])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_evaluation_shards_are_contiguous_even_to_one_image_and_cover_the_set(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(hi == lo for (_, hi), (lo, _) in zip(bounds, bounds[1:], strict=False))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
