r"""Per-image cost of reading a JPEG into a training image, in one process, without a model.

    python bench/decode.py                       # 48 JPEGs of 500x375, SimpleCNN's 32x32
    python bench/decode.py --size 224            # ResNet-50's input size

Rows: torchvision.io's full decode, and with the antialiased resize; ours (decode_rgb with the
input size, so a large JPEG is decoded at a reduced DCT scale, then the resize: what a worker
does per image; the crop and flip are one gather per batch); PIL's full decode; and plain's
per-sample transforms (PIL decode, Resize, RandomCrop, RandomHorizontalFlip, ToTensor,
Normalize). Each row is the best of --passes passes over the same files.
"""

# ruff: noqa: E402  (the path to this checkout goes first, so the script runs without installing)
import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

from bench.folders import make_jpegs
from cifar.data.decode import decode_rgb, resize
from cifar.models import IMAGENET_MEAN, IMAGENET_STD


def best_per_image(read, paths: list, passes: int) -> float:
    """Fastest pass over paths, in milliseconds per image."""
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for path in paths:
            read(path)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(paths)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--size", type=int, default=32, help="the model's input size")
    p.add_argument("--passes", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    size = args.size
    plain = T.Compose(
        [
            T.Resize((size, size)),
            T.RandomCrop(size, padding=max(1, size // 8)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )

    def pil_decode(path):
        with Image.open(path) as image:
            return image.convert("RGB")

    def full_decode(path):
        return decode_image(read_file(path), mode=ImageReadMode.RGB)

    rows = {
        "torchvision.io decode (full size)": full_decode,
        "torchvision.io decode + resize": lambda path: resize(full_decode(path), size),
        f"ours: decode_rgb(path, {size}) + resize": lambda path: resize(
            decode_rgb(path, size), size
        ),
        "PIL decode (full size)": pil_decode,
        "plain: PIL decode + per-sample transforms": lambda path: plain(pil_decode(path)),
    }
    with tempfile.TemporaryDirectory() as folder:
        make_jpegs(Path(folder), args.images)
        paths = sorted(str(path) for path in Path(folder, "train").rglob("*.jpg"))
        print(f"| {len(paths)} JPEGs of 500x375 to {size}x{size} | ms per image |")
        print("|---|---:|")
        for name, read in rows.items():
            print(f"| {name} | {best_per_image(read, paths, args.passes):.2f} |")


if __name__ == "__main__":
    main()
