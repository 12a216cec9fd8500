"""The image folder's on-disk cache: every image decoded and resized once to the model's input
size into one uint8 tensor under $XDG_CACHE_HOME/cifar-accelerate/imagefolder/, named by the
digest of the folder's manifest (paths, classes, sizes, mtimes) and that size, and used only
when it is what the files are (format, digest, dtype, shape, count, labels, failures); anything
else is decoded again. The decoding pass (one_pass, Resized) is the CPU's on every machine."""

import contextlib
import glob
import hashlib
import os

import torch
from torch.utils.data import DataLoader, Dataset

from cifar.data.cache import cache_dir
from cifar.data.decode import decode_rgb, describe, resize, shown
from cifar.data.tensors import TensorImages
from cifar.errors import UserError
from cifar.processes import kill_workers_at_exit, leave_signals_to_main
from cifar.record import atomic_write

# How images reach the model: bumped whenever that changes what a run trains on. Part of a
# run's settings, so a run begun under another version is not resumed under this one.
PIPELINE_VERSION = 2
# The cache file's layout (format and manifest digest stored beside the tensors since .1; since
# .2 decoded by the CPU on every machine, never by nvJPEG: older caches are decoded again).
CACHE_FORMAT = f"imagefolder-cache-{PIPELINE_VERSION}.2"


def one_pass(workers: int) -> dict:
    """DataLoader settings for a pass over the files. Its own generator: a loader draws its
    workers' seed from the global one, and a run must not depend on whether the cache existed."""
    generator = torch.Generator().manual_seed(0)
    kill_workers_at_exit()
    return {
        "batch_size": 64,
        "num_workers": workers,
        "collate_fn": list,
        "generator": generator,
        "worker_init_fn": leave_signals_to_main,
    }


class Resized(Dataset):
    """(index, uint8 3 x size x size image, failure or "") per sample, decoded and resized as
    ImageFiles does: the cache pass and the uncached epochs use one decoder, the CPU's, on every
    machine, so a cache built on a GPU node holds the images a CPU node would train on (nvJPEG
    and CUDA's resize round differently: 1-level differences on 5-20% of pixels)."""

    def __init__(self, samples: list, size: int):
        self.samples, self.size = samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path = self.samples[index][0]
        try:
            return index, resize(decode_rgb(path, self.size), self.size), ""  # as ImageFiles
        except Exception as error:  # PIL raises many types for bad files
            return index, None, describe(error)


def decode_all(samples: list, size: int, workers: int) -> tuple[TensorImages, list]:
    """Every sample decoded and resized; (images of those that decode, their failures)."""
    resized = Resized(samples, size)
    loader = DataLoader(resized, **one_pass(workers))
    images = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    kept, failures = [], []
    for batch in loader:
        for index, image, failure in batch:
            if failure:
                failures.append((samples[index][0], failure))
            else:
                images[index] = image
                kept.append(index)
    labels = torch.tensor([samples[i][1] for i in kept], dtype=torch.long)
    return TensorImages(images[kept], labels, []), failures


def cache_path(folder: str, samples: list, size: int, digest: str) -> str:
    """Where the cache of these files at this size lives: named by the digest of their manifest
    (paths, classes, sizes, mtimes)."""
    for path, _ in samples:
        try:
            os.stat(path)
        except OSError as error:  # a dangling symlink, a loop, a file removed meanwhile
            raise UserError(
                f"cannot read image {shown(path)} ({error.strerror}). Remove or replace the file."
            ) from None
    key = hashlib.sha256(f"{CACHE_FORMAT} {size} {digest}\n".encode()).hexdigest()
    folder_id = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:12]
    name = f"{folder_id}-{len(samples)}x{size}px-{key[:24]}.pt"
    return os.path.join(cache_dir("imagefolder", os.path.dirname(folder)), name)


def cache_mismatch(saved, split, size: int, digest: str) -> str:
    """Why a loaded cache does not hold split decoded at size, or "" when it does: the manifest
    digest it was built from, then what its tensors are against what the files are."""
    if not isinstance(saved, dict) or saved.get("format") != CACHE_FORMAT:
        return "not a cache of this version"
    if saved.get("manifest") != digest:
        return "built from other files"
    images, labels, failures = saved.get("images"), saved.get("labels"), saved.get("failures")
    pairs = isinstance(failures, list) and all(
        isinstance(f, (list, tuple)) and len(f) == 2 and all(isinstance(x, str) for x in f)
        for f in failures
    )
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor) and pairs):
        return "its images, labels or failures are missing"
    failed = {path for path, _ in failures}
    kept = [label for path, label in split.samples if path not in failed]
    wanted = (len(kept), 3, size, size)
    if failed - {path for path, _ in split.samples}:
        return "it names failures of files that are not in the folder"
    if images.dtype != torch.uint8 or tuple(images.shape) != wanted:
        shape = "x".join(map(str, images.shape[1:]))
        return (
            f"it holds {images.shape[0] if images.ndim else 0} {images.dtype} images of "
            f"{shape}, the files are {len(kept)} uint8 images of 3x{size}x{size}"
        )
    if labels.dtype != torch.long or labels.tolist() != kept:
        return "its labels are not the files' classes"
    return ""


def cached_images(split, folder: str, size: int, workers: int, digest: str):
    """(TensorImages, failures) of split at size: from a cache that matches the split's manifest
    digest, shape, count and dtype, or decoded (again) and cached."""
    path = cache_path(folder, split.samples, size, digest)
    try:
        saved = torch.load(path, weights_only=True, mmap=True)
        problem = cache_mismatch(saved, split, size, digest)
    except FileNotFoundError:
        problem = ""
    except Exception as error:  # torch.load raises many types for a damaged file
        problem = f"unreadable: {type(error).__name__}"
    else:
        if not problem:
            images = TensorImages(saved["images"], saved["labels"], split.classes)
            return images, [tuple(failure) for failure in saved["failures"]]
    if os.environ.get("RANK", "0") == "0":
        if problem:
            print(
                f"note: the image cache {path} does not match the files it was built from "
                f"({problem}); decoding them again",
                flush=True,
            )
        print(f"decoding {len(split)} images of {folder} once, into {path}", flush=True)
    images, failures = decode_all(split.samples, size, workers)
    cache = {
        "format": CACHE_FORMAT,
        "manifest": digest,
        "images": images.images,
        "labels": images.labels,
        "failures": [list(failure) for failure in failures],
    }
    save_cache(cache, path)
    return TensorImages(images.images, images.labels, split.classes), failures


def save_cache(cache: dict, path: str) -> None:
    """Write cache to path atomically; drop this folder's older caches. A cache that cannot be
    written (read-only or full disk) only costs the next run the decoding."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write(path, lambda f: torch.save(cache, f))
    except OSError as error:
        print(f"note: the image cache {path} could not be written ({error})", flush=True)
        return
    prefix = os.path.basename(path).rsplit("-", 1)[0]
    for older in glob.glob(os.path.join(folder, f"{prefix}-*.pt")):
        if older != path:
            with contextlib.suppress(OSError):  # another run may have removed it
                os.unlink(older)
