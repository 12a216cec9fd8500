"""The epoch plan: which images each training step takes on each process, cropped and flipped
how, and which test images each process evaluates.

An epoch's order, crop offsets and flips are drawn for the whole set from (seed, epoch) alone,
identically on every process and in every loader (device or files); each process takes its
slice of every global batch. So N processes with batch b see the same global batches, augmented
the same way, as one process with batch N x b, and a resume inside an epoch continues the very
batches it left.
"""

import torch

from cifar.data.transforms import CROP_PADDING, crop_flip
from cifar.errors import UserError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of process rank's contiguous share of n evaluation images: shares differ by one
    image at most, and together hold every image exactly once."""
    return rank * n // world_size, (rank + 1) * n // world_size


class EpochPlan:
    """This process's training batches of each epoch: (image indices, N x 2 crop offsets into the
    zero-padded image, N flips) per step, sliced from draws shared by every process."""

    def __init__(self, n: int, *, batch_size, rank=0, world_size=1, shuffle=True, augment="none",
                 seed=0, padding=CROP_PADDING):  # fmt: skip
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.shuffle, self.augment, self.seed, self.padding = shuffle, augment, seed, padding
        # Every whole global batch of the epoch's order; the accumulation groups need not
        # divide it (the engine steps on an epoch's last batch, a smaller last group).
        self.steps = n // (batch_size * world_size)
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Choose the epoch's draws; skip its first batches (resuming inside an epoch)."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        return self.steps

    @property
    def num_samples(self) -> int:
        """Images this process sees per epoch."""
        return self.steps * self.batch_size

    def draws(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order, N x 2 crop offsets, N flips) of the whole set this epoch, indexed by image."""
        generator = epoch_generator(self.seed, self.epoch)
        n, padding = self.n, self.padding
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        shifts = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
        flips = torch.randint(0, 2, (n,), generator=generator).bool()
        if self.augment == "flip":
            shifts.fill_(padding)
        return order, shifts, flips

    def batches(self, device=None):
        """(indices, crop offsets, flips) of each of this process's remaining batches, on
        device: its slice of each global batch of batch_size x world_size images."""
        order, shifts, flips = (draw.to(device) for draw in self.draws())
        global_batch = self.batch_size * self.world_size
        for step in range(self.skip_batches, self.steps):
            start = step * global_batch + self.rank * self.batch_size
            index = order[start : start + self.batch_size]
            yield index, shifts[index], flips[index]

    def augmented(self, images: torch.Tensor, shifts, flips) -> torch.Tensor:
        """A uint8 batch cropped and flipped as drawn (as it is under --augment none)."""
        if self.augment == "none":
            return images
        return crop_flip(images, shifts, flips, self.padding)


def training_plan(config, accelerator, n: int, padding: int) -> EpochPlan:
    """The plan of a run's n training images; refuses a set smaller than one optimizer step."""
    world, steps = accelerator.num_processes, accelerator.gradient_accumulation_steps
    if n < config.batch_size * world * steps:
        raise UserError(
            f"the training set has {n} images, fewer than one optimizer step needs "
            f"({config.batch_size} per process x {world} processes x {steps} accumulation "
            f"steps). Lower --batch-size"
            + (" or raise --train-subset." if config.train_subset else ".")
        )
    return EpochPlan(
        n,
        batch_size=config.batch_size,
        rank=accelerator.process_index,
        world_size=world,
        shuffle=config.shuffle,
        augment=config.augment,
        seed=config.seed,
        padding=padding,
    )
