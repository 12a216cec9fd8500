"""The plain way: the torchvision tutorial's Dataset of PIL images and a DataLoader, timed."""

import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.cases import case_config
from bench.timing import PeakMemory, Row, timed_epochs
from cifar.build import build_optimizer
from cifar.data.tensors import make_synthetic
from cifar.data.transforms import dataset_statistics
from cifar.models import IMAGENET_MEAN, IMAGENET_STD, build_model


class PlainImages(Dataset):
    """torchvision's CIFAR10 layout: an N x 32 x 32 x 3 uint8 array, a PIL image per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def plain_transform(config, images: torch.Tensor):
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if config.model == "resnet50":
        steps.append(T.Resize(config.image_size))
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = dataset_statistics(images)
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def time_plain_training(model, dataset, config, workers: int, device, args) -> tuple[float, int]:
    """(seconds per epoch, batches per epoch) of the plain loop: a shuffled DataLoader with
    per-sample transforms, a copy to the device per batch, fp32."""
    optimizer = build_optimizer(config, model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )

    def run_epoch(epoch: int, limit: int | None = None) -> None:
        model.train()
        for step, (images, labels) in enumerate(loader):
            if limit is not None and step >= limit:
                break
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    run_epoch(0, limit=max(1, args.warmup))
    return timed_epochs(run_epoch, device, args), len(loader)


def measure_plain(args, device, case: str, workers: int, memory: PeakMemory) -> Row:
    config = case_config(args, case)
    train, _ = make_synthetic(config)
    memory.reset()
    torch.manual_seed(config.seed)
    model = build_model(config, 10).to(device)
    dataset = PlainImages(train.images, train.labels, plain_transform(config, train.images))
    seconds, _ = time_plain_training(model, dataset, config, workers, device, args)
    peak = memory.read()
    n = (len(train) // config.batch_size) * config.batch_size
    label = f"plain (fp32, {workers} worker{'' if workers == 1 else 's'})"
    return Row(case, label, n / seconds, seconds, args.epochs * seconds, peak)


def plain_without_cache(frozen: Row, args) -> Row:
    """The plain way has no cache: every epoch runs the backbone, at its resnet-frozen speed,
    over the same number of images as the caching case."""
    seconds = args.cache_images / frozen.images_per_second
    return Row(
        "resnet-cached",
        f"{frozen.pipeline}, no cache",
        frozen.images_per_second,
        seconds,
        args.epochs * seconds,
        frozen.peak_mib,
    )
