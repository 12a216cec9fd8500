"""The datasets that fit in memory: uint8 tensors (N x 3 x H x W) plus labels, read through
torchvision's dataset classes (which check the md5 of their files) or made from the seed.

Loaders run on the main process first (they may download), then on the others, which find the
files in place.
"""

import functools
import gzip
import hashlib
import os
import shutil
import socket
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision

from cifar.data.cache import cache_dir
from cifar.errors import UserError
from cifar.models import offline
from cifar.record import atomic_write

FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
OFFLINE_HINT = (
    "For a run without downloads use --dataset synthetic (a learnable CIFAR-shaped set), "
    f"--dataset fashion-mnist --data-dir {DEBIAN_FASHION_DIR} (Debian package "
    "dataset-fashion-mnist), or --dataset imagefolder with your own images."
)


@dataclass
class TensorImages:
    """A whole image set: images uint8 N x 3 x H x W, labels int64 N."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "TensorImages":
        """The first n images (all when n is 0)."""
        if not n:
            return self
        return TensorImages(self.images[:n], self.labels[:n], self.classes)


def download_guarded(fetch, what: str, folder: str, expected: str):
    """Run a torchvision download; turn a network failure into a clear UserError."""
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        if offline():
            raise OSError("downloads are off (CIFAR_OFFLINE/HF_HUB_OFFLINE)")
        return fetch()
    except (OSError, RuntimeError) as error:
        raise UserError(
            f"{what} is not in {os.path.abspath(folder)} (expected {expected}) and could not be "
            f"downloaded ({type(error).__name__}: {error}). Run the same command once on a "
            f"machine with network (or `python train.py --dataset ... --prepare-only` on a login "
            f"node) and copy the folder, or point --data-dir at it. {OFFLINE_HINT}"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


@dataclass(frozen=True)
class TorchvisionSet:
    """A loader of one of torchvision's dataset classes that holds a split in memory as uint8
    `.data` with integer labels: (train, test) TensorImages from config.data_dir, downloaded
    when absent (the main process first)."""

    cls: type
    title: str  # how messages name it
    expected: str  # what --data-dir must hold, as messages name it
    split_names: bool = False  # split="train"/"test" (SVHN, STL10), not train=True/False (CIFAR)
    channels_first: bool = False  # .data is N x 3 x H x W (SVHN, STL10), not N x H x W x 3

    def __call__(self, config) -> tuple[TensorImages, TensorImages]:
        return self.read(config.data_dir, True), self.read(config.data_dir, False)

    def read(self, root: str, train: bool) -> TensorImages:
        split = {"split": "train" if train else "test"} if self.split_names else {"train": train}
        try:
            found = self.cls(root, download=False, **split)
        except RuntimeError:  # torchvision's "Dataset not found or corrupted"
            fetch = functools.partial(self.cls, root, download=True, **split)
            found = download_guarded(fetch, self.title, root, self.expected)
        images = torch.from_numpy(found.data)
        if not self.channels_first:
            images = images.permute(0, 3, 1, 2)
        # torchvision calls the labels targets, or labels (SVHN, STL10)
        labels = found.targets if hasattr(found, "targets") else found.labels
        return TensorImages(
            images.contiguous(),
            torch.as_tensor(labels, dtype=torch.long),
            list(getattr(found, "classes", [])),
        )


def fashion_raw_folder(data_dir: str) -> str:
    """A folder where torchvision's FashionMNIST finds <root>/FashionMNIST/raw/<idx files>.

    Accepts torchvision's own layout or a folder of the four IDX files, gzipped or not (as
    Debian's dataset-fashion-mnist installs them); gzipped ones are unpacked once into a cache.
    """
    if all(os.path.exists(os.path.join(data_dir, "FashionMNIST", "raw", f)) for f in FASHION_FILES):
        return data_dir

    def find(name):
        for candidate in (name, name + ".gz"):
            if os.path.exists(os.path.join(data_dir, candidate)):
                return os.path.join(data_dir, candidate)
        return None

    found = {name: find(name) for name in FASHION_FILES}
    if not all(found.values()):
        return ""
    # Keyed by the sources themselves (path, size, mtime), so other or replaced files never
    # reuse what an earlier set left in the cache.
    digest = hashlib.sha256()
    for source in sorted(found.values()):
        stat = os.stat(source)
        digest.update(f"{os.path.abspath(source)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    root = os.path.join(cache_dir("fashion-mnist", data_dir), digest.hexdigest()[:24])
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name, source in found.items():
        target = os.path.join(raw, name)
        if os.path.exists(target):
            continue
        opener = gzip.open if source.endswith(".gz") else open
        try:
            with opener(source, "rb") as src:
                atomic_write(target, lambda f, src=src: shutil.copyfileobj(src, f))
        except (EOFError, OSError, zlib.error) as error:  # a torn or foreign .gz
            raise UserError(
                f"cannot unpack {source} ({type(error).__name__}: {error}). Replace it with a "
                f"whole copy (Debian: apt-get install --reinstall dataset-fashion-mnist)."
            ) from None
    return root


def load_fashion_mnist(config):
    """Fashion-MNIST, 28x28 grey, zero-padded to 32x32 and repeated to 3 channels."""
    root = fashion_raw_folder(config.data_dir)
    cls = torchvision.datasets.FashionMNIST
    if not root:
        root = config.data_dir
        expected = "the four IDX files (train-images-idx3-ubyte[.gz], ...) or FashionMNIST/raw/"
        download_guarded(
            lambda: cls(root, train=True, download=True), "Fashion-MNIST", root, expected
        )
    splits = [cls(root, train=train, download=False) for train in (True, False)]
    return tuple(
        TensorImages(
            F.pad(split.data, (2, 2, 2, 2)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous(),
            split.targets.clone().long(),
            list(split.classes),
        )
        for split in splits
    )


def make_synthetic(config):
    """A learnable CIFAR-shaped set: 10 smooth class patterns plus noise, from --seed.

    Same seed, same images. Train and test share the patterns and differ in the noise.
    """
    generator = torch.Generator().manual_seed(config.seed)
    patterns = F.interpolate(
        torch.randn(10, 3, 8, 8, generator=generator), size=32, mode="bilinear", align_corners=False
    )
    patterns = patterns / patterns.std(dim=(1, 2, 3), keepdim=True)

    def sample(n):
        labels = torch.randint(0, 10, (n,), generator=generator)
        noise = torch.randn(n, 3, 32, 32, generator=generator)
        brightness = torch.rand(n, 1, 1, 1, generator=generator) * 40 - 20
        images = 128 + 35 * patterns[labels] + 45 * noise + brightness
        return TensorImages(
            images.round().clamp(0, 255).to(torch.uint8), labels, [f"pattern{i}" for i in range(10)]
        )

    return sample(config.synthetic_train_size), sample(config.synthetic_test_size)
