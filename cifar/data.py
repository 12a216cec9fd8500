"""Datasets as uint8 tensors (N x 3 x H x W) plus labels; your own images in cifar/imagefolder.py.

build_datasets(config) is called on the main process first (it may download), then on the
others, which find the files in place.
"""

import gzip
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import to_dtype

from cifar.errors import UserError
from cifar.models import offline

JPEG_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
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


def load_image_folders(config):
    """(train, test) from DATA_DIR/train and DATA_DIR/test (or val): see cifar/imagefolder.py."""
    from cifar.imagefolder import load_image_folders as load  # it builds on this module

    return load(config)


def build_datasets(config):
    """(train, test) for config.dataset, cut to --train-subset / --test-subset."""
    builders = {
        "cifar10": load_cifar,
        "cifar100": load_cifar,
        "fashion-mnist": load_fashion_mnist,
        "synthetic": make_synthetic,
        "imagefolder": load_image_folders,
    }
    train, test = builders[config.dataset](config)
    if config.dataset == "imagefolder":  # subsets are picked before anything is decoded
        return train, test
    return train.head(config.train_subset), test.head(config.test_subset)


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


def load_cifar(config):
    if config.dataset == "cifar10":
        cls, archive = torchvision.datasets.CIFAR10, "cifar-10-batches-py/ (cifar-10-python.tar.gz)"
    else:
        cls, archive = torchvision.datasets.CIFAR100, "cifar-100-python/ (cifar-100-python.tar.gz)"
    root = config.data_dir

    def open_split(train: bool):
        try:
            return cls(root, train=train, download=False)
        except RuntimeError:
            name = config.dataset.upper()
            return download_guarded(
                lambda: cls(root, train=train, download=True), name, root, archive
            )

    splits = [open_split(True), open_split(False)]
    return tuple(
        TensorImages(
            torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(split.targets, dtype=torch.long),
            list(split.classes),
        )
        for split in splits
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
    cache_home = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    key = os.path.abspath(data_dir).strip("/").replace("/", "_")
    root = os.path.join(cache_home, "cifar-accelerate", "fashion-mnist", key)
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name, source in found.items():
        target = os.path.join(raw, name)
        if os.path.exists(target):
            continue
        opener = gzip.open if source.endswith(".gz") else open
        with opener(source, "rb") as src, tempfile.NamedTemporaryFile(dir=raw, delete=False) as tmp:
            shutil.copyfileobj(src, tmp)
        os.replace(tmp.name, target)
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


class UnreadableImage(Exception):
    """An image that passed the listing failed to decode (truncated, corrupt)."""

    PREFIX = "cannot decode image "

    @property
    def reason(self) -> str:
        # Raised again in the main process by a DataLoader worker, the text carries the
        # worker's traceback; the message is its last line.
        text = str(self.args[0]) if self.args else ""
        line = text.strip().splitlines()[-1] if text.strip() else ""
        return line[line.find(self.PREFIX) :] if self.PREFIX in line else line


def unreadable_message(path: str, reason: str) -> str:
    return (
        f"{UnreadableImage.PREFIX}{path} ({reason}). Remove or replace the file (or pass "
        f"--skip-bad-images to leave it out), then continue with --resume auto."
    )


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def decode_rgb(path: str, min_side: int = 0) -> torch.Tensor:
    """The image file at path as uint8 3 x H x W RGB; raises what the decoder raises.

    min_side: the side the image will be resized to. A JPEG at least twice that on both sides
    is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling through PIL's draft), still no
    smaller than min_side: the inverse DCT of the dropped detail is skipped, and the scaling
    is itself a low-pass filter. Else torchvision.io decodes JPEG, PNG and WebP (faster than
    PIL at full size); PIL takes the rest (BMP, TIFF, PPM) and, for a broken file, says what
    is wrong in plainer words than libjpeg.
    """
    if min_side and path.lower().endswith(JPEG_SUFFIXES):
        reduced = decode_jpeg_reduced(path, min_side)
        if reduced is not None:
            return reduced
    try:
        image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)
    except RuntimeError:
        pass
    from PIL import Image

    with Image.open(path) as image:
        return pil_to_tensor(image)


def decode_jpeg_reduced(path: str, min_side: int) -> torch.Tensor | None:
    """The JPEG at path decoded at the smallest DCT scale that keeps both sides >= min_side;
    None when that scale is 1, the file is not a JPEG inside (MPO is: a camera JPEG with extra
    pictures), PIL does not know it, or it is over PIL's size limit (then torchvision.io
    decodes it at full size)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.UnidentifiedImageError):
            return None
    with image:
        full_size = image.size
        if image.format not in ("JPEG", "MPO"):
            return None
        image.draft("RGB", (min_side, min_side))
        if image.size == full_size:
            return None
        return pil_to_tensor(image)


def pil_to_tensor(image) -> torch.Tensor:
    array = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_rgb(path: str, min_side: int = 0) -> torch.Tensor:
    """decode_rgb, naming the file in an UnreadableImage when it cannot be decoded."""
    try:
        return decode_rgb(path, min_side)
    except Exception as error:  # PIL raises many types for bad files
        raise UnreadableImage(unreadable_message(path, describe(error))) from None
