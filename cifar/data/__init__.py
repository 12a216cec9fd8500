"""The datasets and their registry. Each registered dataset carries what the rest of the code
asks of it (DatasetSpec): how to load it, whether it is read from the user's files, its classes,
its normalisation and its default augmentation. Adding a dataset is one entry of REGISTRY.

Modules: tensors.py (the sets held in memory), imagefolder.py and decode.py (your own images),
image_cache.py (their decoded cache), manifest.py (what their files were), plan.py (each
epoch's order, crops and flips), loaders.py (batches on the device), transforms.py
(augmentation and the model's input).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torchvision

from cifar.data import imagefolder
from cifar.data.tensors import TorchvisionSet, load_fashion_mnist, make_synthetic
from cifar.models import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_AUGMENT = "crop-flip"


def no_settings(config) -> dict:
    return {}


def no_data_settings(config, train=None) -> dict:
    return {}


@dataclass(frozen=True)
class DatasetSpec:
    """How to load a dataset and what it is."""

    load: Callable  # config -> (train, test): TensorImages, or image files when file_backed
    file_backed: bool = False  # the user's files: subsets picked before decoding, no feature cache
    classes: tuple | None = None  # class names; None: read with the data (meta file, folders)
    augment: str = DEFAULT_AUGMENT  # what --augment auto means on it
    tta: bool = False  # whether --tta is on by default (where a study showed it gains)
    mean: tuple | None = None  # a fixed normalisation; None: the training set's statistics
    std: tuple | None = None
    # config -> what a resumed run must share beyond its flags (a *_pipeline setting names the
    # version of the code that reads the files: a change refuses the resume with its own words)
    settings: Callable = no_settings
    # (config, the loaded train set or None) -> what the files themselves are, strict on resume
    # too (an image folder's manifest digest); with None, of the files as they are now, or {}
    # when they cannot be read (loading them says why)
    data_settings: Callable = no_data_settings


REGISTRY = {
    "cifar10": DatasetSpec(
        TorchvisionSet(
            torchvision.datasets.CIFAR10,
            "CIFAR-10",
            "cifar-10-batches-py/ (cifar-10-python.tar.gz)",
        )
    ),
    "cifar100": DatasetSpec(
        TorchvisionSet(
            torchvision.datasets.CIFAR100,
            "CIFAR-100",
            "cifar-100-python/ (cifar-100-python.tar.gz)",
        )
    ),
    # Its items are centred and fill the frame: shifting them costs more than it teaches in a
    # short schedule (5 epochs: 91.4% with crop-flip, 92%+ with flip only).
    # Test-time flips: +0.20 points of test accuracy at 5 epochs over 3 seeds (docs/study.md).
    "fashion-mnist": DatasetSpec(load_fashion_mnist, augment="flip", tta=True),
    # Its statistics are unknown until every file is read, and a run must not depend on whether
    # the folder fitted the cache: ImageNet's, cached or not.
    "imagefolder": DatasetSpec(
        imagefolder.load_image_folders,
        file_backed=True,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        settings=imagefolder.resume_settings,
        data_settings=imagefolder.manifest_settings,
    ),
    # Street-view house numbers, 32x32 RGB. A mirrored digit is no digit, so no flips: the usual
    # SVHN recipe trains without augmentation.
    "svhn": DatasetSpec(
        TorchvisionSet(
            torchvision.datasets.SVHN,
            "SVHN",
            "train_32x32.mat and test_32x32.mat",
            split_names=True,
            channels_first=True,
        ),
        classes=tuple(str(digit) for digit in range(10)),  # torchvision reads its 10 as 0
        augment="none",
    ),
    "synthetic": DatasetSpec(make_synthetic),
}
DATASETS = tuple(REGISTRY)


def dataset_spec(name: str) -> DatasetSpec:
    return REGISTRY[name]


def build_datasets(config):
    """(train, test) for config.dataset, cut to --train-subset / --test-subset."""
    spec = dataset_spec(config.dataset)
    train, test = spec.load(config)
    if spec.classes is not None:
        train.classes = test.classes = list(spec.classes)
    if spec.file_backed:  # subsets are picked before anything is decoded
        return train, test
    return train.head(config.train_subset), test.head(config.test_subset)


def auto_augment() -> str:
    """What --augment auto means, in words: 'flip for fashion-mnist, else crop-flip'."""
    special = [
        f"{s.augment} for {name}" for name, s in REGISTRY.items() if s.augment != DEFAULT_AUGMENT
    ]
    return ", ".join([*special, f"else {DEFAULT_AUGMENT}"])


def default_tta() -> str:
    """Where --tta is on by default, in words: 'fashion-mnist'."""
    return ", ".join(name for name, s in REGISTRY.items() if s.tta) or "none"
