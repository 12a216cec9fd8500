"""cifar/data/loaders.py: the batches made from the epoch plan (plan.py) on the device and from
files, on any number of processes."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from cifar.config import Config
from cifar.data import build_datasets
from cifar.data.loaders import (
    BatchKeys,
    DeviceEvalLoader,
    DeviceTrainLoader,
    FileBatches,
    FileLoader,
    build_loaders,
)
from cifar.data.plan import EpochPlan
from cifar.errors import UserError
from tests.helpers import make_image_folders


def numbered(n: int, size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 images whose pixels are their index (mod 256), and labels 0..n-1."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size)
    return images.contiguous(), torch.arange(n)


def train_loader(n, rank, world, batch=8, **plan):
    images, labels = numbered(n)
    plan = EpochPlan(n, batch_size=batch, rank=rank, world_size=world, seed=5, **plan)
    return DeviceTrainLoader(images, labels, plan, "cpu")


def labels_of(loader) -> list[torch.Tensor]:
    return [labels for _, labels in loader]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_training_shards_are_disjoint_slices_of_the_same_global_batches(world):
    loaders = [train_loader(100, r, world) for r in range(world)]
    batches = [labels_of(each) for each in loaders]
    seen = torch.cat([torch.cat(b) for b in batches])
    assert len(seen) == len(set(seen.tolist())) == (100 // (8 * world)) * 8 * world
    single = labels_of(train_loader(100, 0, 1, batch=8 * world))
    for step, global_batch in enumerate(single[: len(batches[0])]):
        assert torch.equal(torch.cat([b[step] for b in batches]), global_batch)


def test_each_epoch_has_its_own_order_and_a_resume_continues_its_batches():
    each = train_loader(64, 0, 1)
    first = labels_of(each)
    each.set_epoch(1)
    second = labels_of(each)
    assert not torch.equal(torch.cat(first), torch.cat(second))
    each.set_epoch(1, skip_batches=3)
    resumed = labels_of(each)
    assert len(resumed) == len(second) - 3
    assert all(torch.equal(a, b) for a, b in zip(resumed, second[3:], strict=True))


def test_an_epoch_holds_every_whole_global_batch():
    loader = train_loader(100, 0, 1, batch=8)  # 12 batches; the 4 images left are no batch
    assert len(loader) == len(labels_of(loader)) == 12 and loader.num_samples == 96


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_loaders_count_every_image_exactly_once(world):
    images, labels = numbered(10_001)
    loaders = [
        DeviceEvalLoader(images, labels, batch_size=64, rank=r, world_size=world, device="cpu")
        for r in range(world)
    ]
    seen = torch.cat([batch for each in loaders for batch in labels_of(each)])
    assert seen.tolist() == list(range(10_001))  # in order, shard after shard
    assert sum(len(each) for each in loaders) == sum(len(labels_of(each)) for each in loaders)


class StoredFiles:
    """What FileBatches reads of ImageFiles: (image, label) by index, and the samples' labels."""

    def __init__(self, images, labels):
        self.images, self.samples = images, [(f"{i}.png", int(y)) for i, y in enumerate(labels)]

    def __getitem__(self, index):
        return self.images[index], self.samples[index][1]


@pytest.mark.parametrize("augment", ["crop-flip", "flip", "none"])
@pytest.mark.parametrize("world", [1, 2])
def test_file_batches_are_the_device_batches_of_the_same_plan(augment, world):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (40,), generator=generator)
    for rank in range(world):
        settings = {"batch_size": 4, "rank": rank, "world_size": world, "augment": augment}
        device = DeviceTrainLoader(images, labels, EpochPlan(40, padding=2, **settings), "cpu")
        plan = EpochPlan(40, padding=2, **settings)
        workers = DataLoader(FileBatches(StoredFiles(images, labels), plan), batch_size=None,
                             sampler=BatchKeys(plan))  # fmt: skip
        files = FileLoader(workers, plan, "cpu")
        for epoch, skip in ((0, 0), (2, 1)):
            device.set_epoch(epoch, skip)
            files.set_epoch(epoch, skip)
            pairs = list(zip(device, files, strict=True))
            assert len(pairs) == len(files) - skip == 10 // world - skip
            for (a, y), (b, z) in pairs:
                assert torch.equal(a, b) and torch.equal(y, z)


def simulated(world: int):
    return SimpleNamespace(
        process_index=0,
        num_processes=world,
        is_main_process=True,
        device=torch.device("cpu"),
        gradient_accumulation_steps=1,
    )


def test_too_small_a_training_set_has_one_message_for_tensors_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_image_folders(tmp_path / "images", per_class=3)
    configs = [
        Config(dataset="synthetic", synthetic_train_size=6, synthetic_test_size=4, batch_size=4),
        Config(dataset="imagefolder", data_dir=str(tmp_path / "images"), cache_images="never",
               num_workers=0, batch_size=4),
    ]  # fmt: skip
    messages = []
    for config in configs:
        with pytest.raises(UserError) as error:
            build_loaders(config, simulated(2), *build_datasets(config))
        messages.append(str(error.value))
    expected = (
        "the training set has 6 images, fewer than one optimizer step needs (4 per process x 2 "
        "processes x 1 accumulation steps). Lower --batch-size."
    )
    assert messages == [expected, expected]
