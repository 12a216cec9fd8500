"""Every way a batch is made, all from the epoch plan (plan.py): tensor sets held on the device
as uint8 (DeviceTrainLoader, DeviceEvalLoader), image folders read from files by DataLoader
workers (FileLoader), and the cache of a frozen backbone's features.

For files, the main process draws the plan and the workers decode, resize, crop and flip the
images of each batch they are handed: the batches of the device loaders, bit for bit.
"""

import math

import torch
from accelerate import Accelerator
from accelerate.utils import pad_across_processes
from torch.utils.data import DataLoader, Dataset, Subset

from cifar.data.imagefolder import find_unreadable, refuse_or_skip
from cifar.data.plan import EpochPlan, shard_bounds, training_plan
from cifar.data.tensors import TensorImages
from cifar.data.transforms import crop_padding
from cifar.distributed import decide_on_main
from cifar.processes import kill_workers_at_exit, leave_signals_to_main


class TrainLoader:
    """What both training loaders answer, from their epoch plan: length, epochs, resuming."""

    def __init__(self, plan: EpochPlan):
        self.plan = plan

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Choose the epoch's order; skip the first batches (resuming inside an epoch)."""
        self.plan.set_epoch(epoch, skip_batches)

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def num_samples(self) -> int:
        """Images this process sees per epoch."""
        return self.plan.num_samples


class DeviceTrainLoader(TrainLoader):
    """(uint8 images, labels) of this process's planned training batches, gathered, cropped and
    flipped on the device where the whole set lives."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, plan: EpochPlan, device):
        super().__init__(plan)
        self.images, self.labels = images.to(device), labels.to(device)

    def __iter__(self):
        for index, shifts, flips in self.plan.batches(self.images.device):
            yield self.plan.augmented(self.images[index], shifts, flips), self.labels[index]


class DeviceEvalLoader:
    """(uint8 images, labels) batches, in order, of this process's shard (shard_bounds) of a set
    held on the device."""

    def __init__(self, images, labels, *, batch_size: int, rank: int, world_size: int, device):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size = batch_size
        self.lo, self.hi = shard_bounds(len(labels), rank, world_size)

    def __len__(self) -> int:
        return math.ceil((self.hi - self.lo) / self.batch_size)

    def __iter__(self):
        for start in range(self.lo, self.hi, self.batch_size):
            end = min(start + self.batch_size, self.hi)
            yield self.images[start:end], self.labels[start:end]


def eval_shard(config, accelerator: Accelerator) -> dict:
    """DeviceEvalLoader's settings for this process."""
    return {
        "batch_size": config.batch_size,
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "device": accelerator.device,
    }


def build_loaders(config, accelerator: Accelerator, train, test):
    """(train_loader, test_loader) of device batches for this process."""
    if not isinstance(train, TensorImages):
        return file_loaders(config, accelerator, train, test)
    plan = training_plan(config, accelerator, len(train), crop_padding(train.images.shape[-1]))
    return (
        DeviceTrainLoader(train.images, train.labels, plan, accelerator.device),
        DeviceEvalLoader(test.images, test.labels, **eval_shard(config, accelerator)),
    )


def file_loaders(config, accelerator: Accelerator, train, test):
    """Loaders that decode ImageFiles in DataLoader workers, after the main process checked the
    files (a header read; a full decode with --skip-bad-images, whose failures every process
    drops)."""

    def check():
        samples = train.samples + test.samples
        decode_at = train.size if config.skip_bad_images else None
        failures = find_unreadable(samples, decode_at, config.num_workers)
        refuse_or_skip(failures, config.skip_bad_images)
        return [path for path, _ in failures]

    skipped = set(decide_on_main(accelerator, check))
    train, test = train.without(skipped), test.without(skipped)
    plan = training_plan(config, accelerator, len(train), crop_padding(train.size))
    workers = {
        "num_workers": config.num_workers,
        "pin_memory": accelerator.device.type == "cuda",
        "persistent_workers": config.num_workers > 0,
        "worker_init_fn": leave_signals_to_main,
    }
    kill_workers_at_exit()
    batches = DataLoader(
        FileBatches(train, plan), batch_size=None, sampler=BatchKeys(plan), **workers
    )
    shard = range(*shard_bounds(len(test), accelerator.process_index, accelerator.num_processes))
    test_batches = DataLoader(Subset(test, shard), batch_size=config.batch_size, **workers)
    return FileLoader(batches, plan, accelerator.device), OnDevice(test_batches, accelerator.device)


class BatchKeys:
    """The plan's batches as lists, the keys DataLoader workers are sent. A sampler: persistent
    workers are sent each epoch's keys anew, from the batches not yet trained."""

    def __init__(self, plan: EpochPlan):
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        for index, shifts, flips in self.plan.batches():
            yield index.tolist(), shifts.tolist(), flips.tolist()


class FileBatches(Dataset):
    """A training batch by its key: the files decoded and resized (ImageFiles), then cropped and
    flipped in one gather. Runs in a DataLoader worker, a whole batch per key."""

    def __init__(self, files, plan: EpochPlan):
        self.files, self.plan = files, plan

    def __getitem__(self, key):
        indices, shifts, flips = key
        images = torch.stack([self.files[i][0] for i in indices])
        labels = torch.tensor([self.files.samples[i][1] for i in indices])
        return self.plan.augmented(images, torch.tensor(shifts), torch.tensor(flips)), labels


class FileLoader(TrainLoader):
    """FileBatches from DataLoader workers, on the device."""

    def __init__(self, loader: DataLoader, plan: EpochPlan, device):
        super().__init__(plan)
        self.loader, self.device = loader, device

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
def backbone_features(accelerator, model, loader: DeviceEvalLoader, to_input) -> torch.Tensor:
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
    """Loaders over cached backbone features instead of images. The training order is the
    images' plan: --cache-features needs --augment none, so it crops and flips nothing."""
    shard = eval_shard(config, accelerator)
    in_order = DeviceEvalLoader(train_loader.images, train_loader.labels, **shard)
    train_features = backbone_features(accelerator, model, in_order, to_input)
    test_features = backbone_features(accelerator, model, test_loader, to_input)
    return (
        DeviceTrainLoader(
            train_features, train_loader.labels, train_loader.plan, accelerator.device
        ),
        DeviceEvalLoader(test_features, test_loader.labels, **shard),
    )
