"""Your own images: DATA_DIR/train/<class>/<image> and DATA_DIR/test (or val)/<class>/<image>.

Two ways to feed them, both decoding with decode.decode_rgb (a large JPEG at a reduced DCT scale,
else torchvision.io):
- cached (--cache-images always, or auto when train + test decoded fit CACHE_BUDGET_BYTES): each
  image is decoded and resized once to the model's input size (32 for SimpleCNN, --image-size
  for ResNet-50) into a uint8 tensor kept on disk under $XDG_CACHE_HOME/cifar-accelerate/
  imagefolder/ (image_cache.py), named by the digest of the files' manifest and that size.
  Training then runs from the device like CIFAR (DeviceTrainLoader), N processes equal to one;
- uncached: DataLoader workers decode and resize the same images every epoch (ImageFiles), and
  crop and flip each batch as the device loader would (loaders.FileLoader): the same batches as the
  cache gives, N processes equal to one, exact on resume.
--train-subset / --test-subset pick N images at random with a fixed seed (the same images for
every --seed), kept in the folder's sorted order.
"""

import os
import stat

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

from cifar.data.decode import (
    IMAGE_SUFFIXES,
    decode_rgb,
    describe,
    load_rgb,
    resize,
    shown,
)
from cifar.data.decode import unreadable_message as unreadable
from cifar.data.image_cache import PIPELINE_VERSION, cached_images, one_pass
from cifar.data.manifest import MANIFEST_SETTING, Manifest
from cifar.errors import UserError
from cifar.models import model_spec

# Train + test decoded at the stored size. Every process holds its copy on its device, and the
# main process briefly one more on the host while it builds the cache.
CACHE_BUDGET_BYTES = 2 * 2**30
SUBSET_SEED = 0


class ImageFiles(Dataset):
    """(uint8 3 x size x size image, label) per file, decoded and resized each time it is read,
    exactly as the cache stores it. A large JPEG is decoded at a reduced scale (decode_rgb)."""

    def __init__(self, samples: list, classes: list, size: int = 0):
        self.samples, self.classes, self.size = samples, classes, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return resize(load_rgb(path, self.size), self.size), label

    def without(self, paths: set) -> "ImageFiles":
        kept = [sample for sample in self.samples if sample[0] not in paths]
        return ImageFiles(kept, self.classes, self.size)


def resume_settings(config) -> dict:
    """What a resumed run must share beyond its flags: the folder (its files are the data; no
    checksum names them) and the version of the code that reads it."""
    return {
        "image_folder": os.path.realpath(config.data_dir),
        "image_folder_pipeline": PIPELINE_VERSION,
    }


def stored_size(config) -> int:
    """The side of a cached image: the model's input size."""
    return model_spec(config.model).image_size(config)


def load_image_folders(config):
    """(train, test): TensorImages when cached, else ImageFiles (checked in build_loaders); each
    carries the folder's manifest (`manifest`), taken before any file is decoded."""
    root = config.data_dir
    train, test, test_name = list_image_folders(config)
    manifest = Manifest.of(root, train, test)
    size = stored_size(config)
    decoded_bytes = (len(train) + len(test)) * 3 * size * size
    if config.cache_images == "never" or (
        config.cache_images == "auto" and decoded_bytes > CACHE_BUDGET_BYTES
    ):
        train.size = test.size = size
        train.manifest = test.manifest = manifest
        return train, test
    splits = [
        cached_images(split, os.path.join(root, name), size, config.num_workers, digest)
        for split, name, digest in (
            (train, "train", manifest.digests["train"]),
            (test, test_name, manifest.digests["test"]),
        )
    ]
    failures = splits[0][1] + splits[1][1]
    refuse_or_skip(failures, config.skip_bad_images)
    splits[0][0].manifest = splits[1][0].manifest = manifest
    return splits[0][0], splits[1][0]


def list_image_folders(config, quiet: bool = False) -> tuple:
    """(train, test, the test folder's name): the ImageFiles a run uses, subsets picked."""
    root = config.data_dir
    test_name = "test" if os.path.isdir(os.path.join(root, "test")) else "val"
    train, test = (list_folder(os.path.join(root, split), quiet) for split in ("train", test_name))
    if train.classes != test.classes:
        raise UserError(
            f"the train and {test_name} folders of {os.path.abspath(root)} have different "
            f"classes ({train.classes} vs {test.classes}). Give both the same class sub-folders."
        )
    train.samples = pick_subset(train.samples, config.train_subset)
    test.samples = pick_subset(test.samples, config.test_subset)
    return train, test, test_name


def manifest_settings(config, train=None) -> dict:
    """The folder's manifest digest: of the loaded train set, or with None of the files as they
    are now ({} when they cannot be listed: loading them says why)."""
    manifest = getattr(train, "manifest", None)
    if train is None:
        try:
            manifest = Manifest.of(config.data_dir, *list_image_folders(config, quiet=True)[:2])
        except UserError:
            return {}
    return {} if manifest is None else {MANIFEST_SETTING: manifest.digest}


def list_folder(folder: str, quiet: bool = False) -> ImageFiles:
    """The images of folder/<class>/ in torchvision ImageFolder's sorted order (none opened)."""
    if not os.path.isdir(folder):
        raise UserError(
            f"image folder {os.path.abspath(folder)} does not exist. --dataset imagefolder "
            f"expects DATA_DIR/train/<class>/<images> and DATA_DIR/test/<class>/<images> "
            f"(or val/); set --data-dir to that DATA_DIR."
        )
    try:
        classes, _ = torchvision.datasets.folder.find_classes(folder)
    except (FileNotFoundError, OSError) as error:
        raise UserError(
            f"image folder {os.path.abspath(folder)} holds no images in class sub-folders "
            f"({error}). Put images ({', '.join(IMAGE_SUFFIXES[:3])}, ...) in "
            f"{folder}/<class name>/."
        ) from None
    refuse_shared_class_folders(folder, classes)
    samples, skipped = [], []
    visited = {os.path.realpath(os.path.join(folder, name)) for name in classes}
    for label, name in enumerate(classes):
        files, links = class_files(folder, name, visited)
        samples += [(path, label) for path in files]
        skipped += links
    if skipped and not quiet and os.environ.get("RANK", "0") == "0":
        listed = "\n".join(f"  {shown(path)} ({why})" for path, why in skipped)
        print(f"note: {len(skipped)} entries of {shown(folder)} left out:\n{listed}", flush=True)
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if empty:
        raise UserError(
            f"image folder {os.path.abspath(folder)} holds no images in the class folder(s) "
            f"{', '.join(map(shown, empty))}. Put images ({', '.join(IMAGE_SUFFIXES[:3])}, ...) in "
            f"{folder}/<class name>/, or remove the empty folders."
        )
    if len(classes) < 2:
        raise UserError(
            f"image folder {os.path.abspath(folder)} has {len(classes)} class folder(s) "
            f"({', '.join(map(shown, classes)) or 'none'}): a classifier needs at least two. Put "
            f"each class's images in a folder of its own under {folder}/."
        )
    return ImageFiles(samples, classes)


def refuse_shared_class_folders(folder: str, classes: list) -> None:
    """Two class folders that are one folder, or one inside the other (a class folder that is a
    link), would give the same images two labels."""
    reals = {name: os.path.realpath(os.path.join(folder, name)) for name in classes}
    for name, real in reals.items():
        for other, other_real in reals.items():
            if other != name and (real == other_real or real.startswith(other_real + os.sep)):
                raise UserError(
                    f"the class folders {shown(name)} and {shown(other)} of "
                    f"{shown(os.path.abspath(folder))} are one folder, or one is inside the "
                    f"other ({shown(name)} is {shown(real)}): their images would have two "
                    f"labels. Give each class a folder of its own."
                )


def class_files(folder: str, name: str, visited: set) -> tuple[list, list]:
    """(image paths, skipped (path, why)) of folder/name in torchvision ImageFolder's order.
    Linked folders are followed once and only inside the class: a link back up (a loop), to
    another class or to a folder already listed (visited: real paths, shared by the classes
    of a split) is skipped. Files that are not regular files (FIFOs, sockets, devices) are
    skipped: reading one could block forever."""
    top = os.path.realpath(folder)
    start = os.path.realpath(os.path.join(folder, name))
    listed, skipped = [], []
    for root, dirs, files in os.walk(os.path.join(folder, name), followlinks=True):
        for d in sorted(dirs):
            path = os.path.join(root, d)
            real = os.path.realpath(path)
            inside = real.startswith(start + os.sep)
            above = top == real or top.startswith(real + os.sep) or start.startswith(real + os.sep)
            if real in visited or above or (real.startswith(top + os.sep) and not inside):
                dirs.remove(d)
                skipped.append((path, "a link to a folder listed elsewhere or above it"))
            else:
                visited.add(real)
        listed.append((root, files))
    found = []
    for root, files in sorted(listed):  # torchvision's order: folders, then files, sorted
        for file in sorted(files):
            path = os.path.join(root, file)
            if not path.lower().endswith(IMAGE_SUFFIXES):
                continue
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:  # a dangling link: named when the image is read
                regular = True
            if regular:
                found.append(path)
            else:
                skipped.append((path, "not a regular file"))
    return found, skipped


def pick_subset(samples: list, n: int) -> list:
    """n samples drawn with a fixed seed, in their original order (all when n is 0)."""
    if not n or n >= len(samples):
        return samples
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    chosen = torch.randperm(len(samples), generator=generator)[:n].sort().values
    return [samples[i] for i in chosen.tolist()]


def refuse_or_skip(failures: list, skip: bool) -> None:
    """failures: (path, reason) of images that failed. Without skip the first ends the run."""
    if not failures:
        return
    if not skip:
        raise UserError(unreadable(*failures[0]))
    if os.environ.get("RANK", "0") == "0":  # once per run, not per process
        listed = "\n".join(f"  {shown(path)} ({reason})" for path, reason in failures)
        print(
            f"warning: --skip-bad-images left out {len(failures)} image(s):\n{listed}", flush=True
        )


class Check(Dataset):
    """(path, failure or "") per sample: the decode training does for images resized to
    min_side, or when min_side is None PIL's header read only."""

    def __init__(self, samples: list, min_side: int | None):
        self.samples, self.min_side = samples, min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path = self.samples[index][0]
        try:
            if self.min_side is None:
                from PIL import Image

                with Image.open(path) as image:
                    image.size  # noqa: B018 - reading the header is the check
            else:
                decode_rgb(path, self.min_side)
        except Exception as error:  # PIL raises many types for bad files
            return path, describe(error)
        return path, ""


def find_unreadable(samples: list, min_side: int | None, workers: int) -> list:
    """(path, reason) of each image that fails Check, in the samples' order."""
    loader = DataLoader(Check(samples, min_side), **one_pass(workers))
    return [(path, reason) for batch in loader for path, reason in batch if reason]
