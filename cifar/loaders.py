"""Batches for the loop: device-resident tensor loaders, and the transforms of ImageFolder's.

Tensor datasets live on the device as uint8; each epoch a seeded permutation and per-image
augmentation parameters are drawn for the whole set (identically on every process), and each
process takes its slice of every global batch. So a run on N processes with batch b sees the
same global batches, augmented the same way, as one process with batch N x b.
"""

import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T

CROP_PADDING = 4


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def crop_padding(size: int) -> int:
    """Zero padding of the random crop: 4 at CIFAR's 32 pixels, the same share at other sizes."""
    return max(1, size // 8)


def crop_flip(
    images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, padding: int = CROP_PADDING
) -> torch.Tensor:
    """Random crops (zero padding) and horizontal flips of a uint8 batch in one gather.

    shifts: N x 2 offsets in [0, 2 x padding] into the padded image; flips: N bools.
    """
    n, channels, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = shifts[:, :1] + torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device).expand(n, width)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + shifts[:, 1:]
    return padded[
        torch.arange(n, device=images.device)[:, None, None, None],
        torch.arange(channels, device=images.device)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


class DeviceLoader:
    """Yields (uint8 images, labels) batches of this process's shard, already on the device.

    Training (drop_last): each global batch of batch_size x world_size images is cut into
    equal per-process slices; the epoch ends on a whole number of accumulation groups.
    Evaluation: process r takes a contiguous, possibly uneven, shard; every image is seen once.
    """

    def __init__(
        self,
        images,
        labels,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        device,
        train: bool,
        shuffle: bool = True,
        augment: str = "none",
        seed: int = 0,
        accumulation_steps: int = 1,
    ):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.train, self.shuffle, self.augment, self.seed = train, shuffle, augment, seed
        self.accumulation_steps = accumulation_steps
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Choose the epoch's order; skip the first batches (resuming inside an epoch)."""
        self.epoch, self.skip_batches = epoch, skip_batches

    @property
    def num_samples(self) -> int:
        """Images this process sees per epoch."""
        if self.train:
            return len(self) * self.batch_size
        lo, hi = self.shard_bounds()
        return hi - lo

    def shard_bounds(self) -> tuple[int, int]:
        n = len(self.labels)
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def __len__(self) -> int:
        if self.train:
            steps = len(self.labels) // (self.batch_size * self.world_size)
            return steps - steps % self.accumulation_steps
        lo, hi = self.shard_bounds()
        return math.ceil((hi - lo) / self.batch_size)

    def __iter__(self):
        if not self.train:
            lo, hi = self.shard_bounds()
            for start in range(lo, hi, self.batch_size):
                end = min(start + self.batch_size, hi)
                yield self.images[start:end], self.labels[start:end]
            return
        n = len(self.labels)
        padding = crop_padding(self.images.shape[-1])
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        shifts = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
        flips = torch.randint(0, 2, (n,), generator=generator).bool()
        if self.augment == "flip":
            shifts.fill_(padding)
        device = self.images.device
        order, shifts, flips = order.to(device), shifts.to(device), flips.to(device)
        global_batch = self.batch_size * self.world_size
        for step in range(self.skip_batches, len(self)):
            start = step * global_batch + self.rank * self.batch_size
            index = order[start : start + self.batch_size]
            images = self.images[index]
            if self.augment != "none":
                images = crop_flip(images, shifts[index], flips[index], padding)
            yield images, self.labels[index]


class InputTransform:
    """uint8 batch -> normalised float model input, resized for ResNet-50: one fused step."""

    def __init__(self, mean, std, size: int | None, channels_last: bool = False):
        self.scale = torch.tensor([1 / (255 * s) for s in std]).view(1, -1, 1, 1)
        shift = [-m / s for m, s in zip(mean, std, strict=True)]
        self.shift = torch.tensor(shift).view(1, -1, 1, 1)
        self.size, self.channels_last = size, channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale.device != images.device:
            self.scale, self.shift = self.scale.to(images.device), self.shift.to(images.device)
        x = torch.addcmul(self.shift, images.float(), self.scale)
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(
                x,
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
                antialias=False,
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def dataset_statistics(images: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and std (in [0, 1] units) of a uint8 image tensor."""
    sample = images[:10_000].double() / 255
    # A channel that never changes (solid colours, a blank channel) must not divide by zero.
    std = sample.std(dim=(0, 2, 3)).clamp_min(1 / 255)
    return tuple(sample.mean(dim=(0, 2, 3)).tolist()), tuple(std.tolist())


def image_folder_transforms(size: int, augment: str):
    """One decoded uint8 image -> size x size, cropped and flipped as DeviceLoader does (each
    image its own draw: v2 transforms on a batch would draw once for the whole batch)."""
    steps = [T.Resize((size, size), antialias=True)]
    if augment == "crop-flip":
        steps.append(T.RandomCrop(size, padding=crop_padding(size)))
    if augment in ("crop-flip", "flip"):
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)
