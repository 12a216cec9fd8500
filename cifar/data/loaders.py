"""Every way a batch is made: device-resident tensor loaders (DeviceLoader), DataLoader workers
for image folders read from files (FileLoader), and the cache of a frozen backbone's features.

Each epoch a seeded permutation and per-image augmentation parameters are drawn for the whole
set (identically on every process), and each process takes its slice of every global batch. So
a run on N processes with batch b sees the same global batches, augmented the same way, as one
process with batch N x b. Tensor datasets live on the device as uint8; for files, workers
decode the images of each drawn batch and apply its draws.
"""

import math

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import pad_across_processes
from torch.utils.data import DataLoader, Dataset, Subset

from cifar.data.imagefolder import find_unreadable, refuse_or_skip
from cifar.data.tensors import TensorImages
from cifar.data.transforms import CROP_PADDING, crop_padding
from cifar.distributed import decide_on_main
from cifar.errors import UserError
from cifar.processes import kill_workers_at_exit, leave_signals_to_main


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_draws(n: int, plan, padding: int):
    """(order, N x 2 crop offsets, N flips) of an epoch of n images, indexed by image: drawn
    from plan's seed and epoch alone, so every process, and every loader, draws the same."""
    generator = epoch_generator(plan.seed, plan.epoch)
    order = torch.randperm(n, generator=generator) if plan.shuffle else torch.arange(n)
    shifts = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    if plan.augment == "flip":
        shifts.fill_(padding)
    return order, shifts, flips


def training_steps(n: int, batch_size: int, world_size: int, accumulation_steps: int) -> int:
    """Steps of an epoch: whole global batches, ending on a whole accumulation group."""
    steps = n // (batch_size * world_size)
    return steps - steps % accumulation_steps


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
            n = len(self.labels)
            return training_steps(n, self.batch_size, self.world_size, self.accumulation_steps)
        lo, hi = self.shard_bounds()
        return math.ceil((hi - lo) / self.batch_size)

    def __iter__(self):
        if not self.train:
            lo, hi = self.shard_bounds()
            for start in range(lo, hi, self.batch_size):
                end = min(start + self.batch_size, hi)
                yield self.images[start:end], self.labels[start:end]
            return
        padding = crop_padding(self.images.shape[-1])
        order, shifts, flips = epoch_draws(len(self.labels), self, padding)
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


def build_loaders(config, accelerator: Accelerator, train, test):
    """(train_loader, test_loader) of device batches for this process."""
    if not isinstance(train, TensorImages):
        return image_folder_loaders(config, accelerator, train, test)
    shard = {"rank": accelerator.process_index, "world_size": accelerator.num_processes}
    steps = accelerator.gradient_accumulation_steps
    if len(train) < config.batch_size * accelerator.num_processes * steps:
        raise UserError(
            f"the training set has {len(train)} images, fewer than one optimizer step "
            f"needs ({config.batch_size} per process x {accelerator.num_processes} processes "
            f"x {steps} accumulation steps). Lower --batch-size"
            + (" or raise --train-subset." if config.train_subset else ".")
        )
    common = {"batch_size": config.batch_size, "device": accelerator.device, **shard}
    train_loader = DeviceLoader(
        train.images,
        train.labels,
        train=True,
        shuffle=config.shuffle,
        augment=config.augment,
        seed=config.seed,
        accumulation_steps=steps,
        **common,
    )
    return train_loader, DeviceLoader(test.images, test.labels, train=False, **common)


def image_folder_loaders(config, accelerator: Accelerator, train, test):
    """Loaders that decode ImageFiles in DataLoader workers, after the main process checked the
    files (a header read; a full decode with --skip-bad-images, whose failures every process
    drops). Training batches are drawn, cropped and flipped as DeviceLoader's."""

    def check():
        samples = train.samples + test.samples
        decode_at = train.size if config.skip_bad_images else None
        failures = find_unreadable(samples, decode_at, config.num_workers)
        refuse_or_skip(failures, config.skip_bad_images)
        return [path for path, _ in failures]

    skipped = set(decide_on_main(accelerator, check))
    train, test = train.without(skipped), test.without(skipped)
    steps = accelerator.gradient_accumulation_steps
    if len(train) < config.batch_size * accelerator.num_processes * steps:
        raise UserError(
            f"the training folder has {len(train)} images, fewer than one optimizer step needs "
            f"({config.batch_size} per process x {accelerator.num_processes} processes x "
            f"{steps} accumulation steps). Lower --batch-size."
        )
    workers = {
        "num_workers": config.num_workers,
        "pin_memory": accelerator.device.type == "cuda",
        "persistent_workers": config.num_workers > 0,
        "worker_init_fn": leave_signals_to_main,
    }
    kill_workers_at_exit()
    rank, world = accelerator.process_index, accelerator.num_processes
    plan = EpochBatches(
        len(train),
        batch_size=config.batch_size,
        rank=rank,
        world_size=world,
        shuffle=config.shuffle,
        augment=config.augment,
        seed=config.seed,
        padding=crop_padding(train.size),
        accumulation_steps=steps,
    )
    batches = DataLoader(FileBatches(train, plan), batch_size=None, sampler=plan, **workers)
    train_loader = FileLoader(batches, plan, accelerator.device)
    # Contiguous, uneven shards, as DeviceLoader's: each test image is evaluated exactly once.
    n = len(test)
    lo, hi = rank * n // world, (rank + 1) * n // world
    test_loader = OnDevice(
        DataLoader(Subset(test, range(lo, hi)), batch_size=config.batch_size, **workers),
        accelerator.device,
    )
    return train_loader, test_loader


class EpochBatches:
    """The keys of this process's training batches of an epoch: (image indices, crop offsets,
    flips) as lists, drawn as DeviceLoader draws them. A DataLoader's sampler: persistent
    workers read it anew each epoch, and it starts after the batches already trained."""

    def __init__(self, n: int, *, batch_size, rank, world_size, shuffle, augment, seed, padding,
                 accumulation_steps):  # fmt: skip
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.shuffle, self.augment, self.seed, self.padding = shuffle, augment, seed, padding
        self.steps = training_steps(n, batch_size, world_size, accumulation_steps)
        self.epoch, self.skip_batches = 0, 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        order, shifts, flips = epoch_draws(self.n, self, self.padding)
        global_batch = self.batch_size * self.world_size
        for step in range(self.skip_batches, self.steps):
            start = step * global_batch + self.rank * self.batch_size
            index = order[start : start + self.batch_size]
            yield index.tolist(), shifts[index].tolist(), flips[index].tolist()


class FileBatches(Dataset):
    """A training batch by its key: the files decoded and resized (ImageFiles), then cropped and
    flipped in one gather. Runs in a DataLoader worker, a whole batch per key."""

    def __init__(self, files, plan: EpochBatches):
        self.files, self.augment, self.padding = files, plan.augment, plan.padding

    def __getitem__(self, key):
        indices, shifts, flips = key
        images = torch.stack([self.files[i][0] for i in indices])
        labels = torch.tensor([self.files.samples[i][1] for i in indices])
        if self.augment != "none":
            images = crop_flip(images, torch.tensor(shifts), torch.tensor(flips), self.padding)
        return images, labels


class FileLoader:
    """FileBatches from DataLoader workers behind DeviceLoader's interface (epochs, resuming)."""

    def __init__(self, loader: DataLoader, plan: EpochBatches, device):
        self.loader, self.plan, self.device = loader, plan, device
        self.batch_size = plan.batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.plan.epoch, self.plan.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def num_samples(self) -> int:
        """Images this process sees per epoch."""
        return len(self) * self.batch_size

    def __iter__(self):
        return iter(OnDevice(self.loader, self.device))


class OnDevice:
    """Wraps a DataLoader so its batches arrive on the device (non-blocking from pinned memory)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )


@torch.no_grad()
def backbone_features(accelerator, model, loader: DeviceLoader, to_input) -> torch.Tensor:
    """Backbone features of the whole set in order: each process computes its shard."""
    model.to(accelerator.device).eval()
    chunks = []
    with accelerator.autocast():
        for images, _ in loader:
            chunks.append(model.features(to_input(images)).float())
    empty = torch.zeros(0, model.num_features, device=accelerator.device)
    local = torch.cat(chunks) if chunks else empty
    if accelerator.num_processes == 1:
        return local
    counts = accelerator.gather(torch.tensor([len(local)], device=accelerator.device)).tolist()
    gathered = accelerator.gather(pad_across_processes(local, dim=0))
    width = max(counts)
    return torch.cat([gathered[i * width : i * width + n] for i, n in enumerate(counts)])


def feature_loaders(config, accelerator, model, to_input, train_loader, test_loader):
    """Loaders over cached backbone features instead of images (frozen backbone, no aug)."""
    shard = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "device": accelerator.device,
    }
    in_order = DeviceLoader(
        train_loader.images, train_loader.labels, batch_size=config.batch_size, train=False, **shard
    )
    train_features = backbone_features(accelerator, model, in_order, to_input)
    test_features = backbone_features(accelerator, model, test_loader, to_input)
    train_loader = DeviceLoader(
        train_features,
        train_loader.labels,
        batch_size=config.batch_size,
        train=True,
        shuffle=config.shuffle,
        seed=config.seed,
        accumulation_steps=train_loader.accumulation_steps,
        **shard,
    )
    test_loader = DeviceLoader(
        test_features, test_loader.labels, batch_size=config.batch_size, train=False, **shard
    )
    return train_loader, test_loader
