"""The imagefolder case: SimpleCNN on a folder of 500x375 JPEGs that the benchmark makes.

Plain is the torchvision tutorial way: `torchvision.datasets.ImageFolder` (PIL decoding) with
Resize((32, 32)), RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize per
sample in a DataLoader. Ours is the product's path at the same worker count: uncached
(workers decode at a reduced DCT scale, resize, and crop and flip each batch in one gather as
drawn by the main process) and cached (one decoding pass into the on-disk cache, then epochs
from DeviceTrainLoader). Both train the same model, placed the same way, so the rows differ in how
images reach it.
"""

import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torchvision
import torchvision.transforms as T
from PIL import Image

from bench.ours import prepare_model, settings, train_on
from bench.plain import time_plain_training
from bench.timing import Row, best, sync
from cifar.config import Config
from cifar.data import build_datasets
from cifar.data.loaders import build_loaders
from cifar.data.transforms import input_transform
from cifar.models import IMAGENET_MEAN, IMAGENET_STD

FOLDER_CASE = "imagefolder"
PHOTO_SIZE = (500, 375)  # width x height, a typical photo of an image-classification set
TEST_IMAGES = 64


def make_jpegs(root: Path, n: int) -> None:
    """n training JPEGs (and TEST_IMAGES test ones) in two classes: smooth random colour fields
    with fine noise, saved at quality 90, about the size and detail of photographs."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", TEST_IMAGES)):
        for i in range(count):
            folder = root / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            smooth = np.asarray(coarse.resize(PHOTO_SIZE, Image.BICUBIC), dtype=np.int16)
            noisy = smooth + rng.normal(0, 8, smooth.shape).astype(np.int16)
            image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
            image.save(folder / f"{i:05}.jpg", quality=90)


@contextlib.contextmanager
def cache_home(folder: str):
    """Our image cache in folder, so the user's own cache is neither used nor touched."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = folder
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = before


def folder_config(args, root: Path, workers: int, cache: bool) -> Config:
    return Config(
        dataset="imagefolder",
        data_dir=str(root),
        batch_size=args.folder_batch_size,
        num_workers=workers,
        cache_images="always" if cache else "never",
        augment="crop-flip",
        scheduler="none",
        mixed_precision=args.mixed_precision,
        tracker="none",
    )


def workers_label(workers: int) -> str:
    return f"{workers} worker{'' if workers == 1 else 's'}"


def measure_ours(args, accelerator, root: Path, workers: int, cache: bool) -> list[Row]:
    """Uncached: one row. Cached: the decoding pass (into an empty cache) and the epochs."""
    config = folder_config(args, root, workers, cache)
    label = f"ours ({settings(accelerator, False)}, {workers_label(workers)})"
    with tempfile.TemporaryDirectory() as home, cache_home(home):
        started = time.perf_counter()
        train, test = build_datasets(config)  # cached: decodes every image into the empty cache
        sync(accelerator.device)
        decode_seconds = time.perf_counter() - started
        loaders = build_loaders(config, accelerator, train, test)
        to_input = input_transform(config, getattr(train, "images", None), accelerator.device)
        model = prepare_model(config, accelerator)
        speed, seconds = train_on(config, accelerator, model, loaders[0], to_input, args)
    if not cache:
        return [Row(FOLDER_CASE, f"{label}, uncached", speed, seconds, args.epochs * seconds, None)]
    n = len(train) + len(test)
    return [
        Row(FOLDER_CASE, f"{label}, cache: decoding pass", n / decode_seconds, decode_seconds,
            decode_seconds, None),
        Row(FOLDER_CASE, f"{label}, cache: epochs", speed, seconds,
            decode_seconds + args.epochs * seconds, None),
    ]  # fmt: skip


def measure_plain(args, accelerator, root: Path, workers: int) -> Row:
    device = accelerator.device
    steps = [T.Resize((32, 32)), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    config = folder_config(args, root, workers, False)
    model = prepare_model(config, accelerator).to(device)  # the same model and memory format
    seconds, batches = time_plain_training(model, dataset, config, workers, device, args)
    n = batches * config.batch_size
    label = f"plain (fp32, {workers_label(workers)})"
    return Row(FOLDER_CASE, label, n / seconds, seconds, args.epochs * seconds, None)


def measure_folders(args, accelerator) -> list[Row]:
    """Ours (uncached, cached) and plain at each worker count, taking turns for args.rounds."""
    counts = list(dict.fromkeys(args.num_workers))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_jpegs(root, args.folder_images)
        uncached, plain, cached = {}, {}, None
        for _ in range(args.rounds):
            for workers in counts:
                rows = measure_ours(args, accelerator, root, workers, cache=False)
                uncached[workers] = best(uncached.get(workers), rows)
                row = measure_plain(args, accelerator, root, workers)
                plain[workers] = best(plain.get(workers), [row])
            cached = best(cached, measure_ours(args, accelerator, root, counts[0], cache=True))
    rows = [row for workers in counts for row in uncached[workers]] + cached
    for workers in counts:
        row = plain[workers][0]
        ratio = uncached[workers][0].images_per_second / row.images_per_second
        rows.append(Row(**{**row.__dict__, "ratio": f"{ratio:.2f}x"}))
    return rows
