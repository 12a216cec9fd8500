r"""Training throughput: this project's pipeline against the plain DataLoader way.

    python bench/throughput.py --out docs/benchmarks.md       # a GPU: every case, ~5 minutes
    python bench/throughput.py --device cpu --images 1024 --batch-size 256 --resnet-images 16 \
        --cache-images 16 --resnet-batch-size 8 --warmup 1 --repeats 1 --seconds 15 --rounds 2 \
        --num-workers 2 0 --out docs/benchmarks.md           # a small CPU: ResNet-50 is slow

Both sides train the same model on the same synthetic CIFAR-shaped uint8 images, on the same
device, in one process. Ours is the product's code: Config -> make_accelerator, build_model,
build_loaders (DeviceLoader: the whole set on the device, batched crop + flip), input_transform
(fused normalise + resize + channels_last), feature_loaders for caching, and train_epoch.
Plain is the torchvision tutorial way: a Dataset of PIL images with per-sample RandomCrop,
RandomHorizontalFlip, (Resize,) ToTensor and Normalize, a DataLoader with --num-workers
workers, fp32, each batch copied to the device. Times are synchronised and taken after
--warmup steps; --out gets this device's section replaced (or added), the others kept.
"""

# ruff: noqa: E402  (the path to this checkout goes first, so the script runs without installing)
import argparse
import contextlib
import datetime
import gc
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cifar.build import (
    build_loaders,
    build_optimizer,
    build_scheduler,
    input_transform,
    make_accelerator,
    place_model,
)
from cifar.config import Config
from cifar.data import make_synthetic
from cifar.engine import Totals, train_epoch
from cifar.errors import UserError
from cifar.experiment import backbone_features, feature_loaders
from cifar.loaders import IMAGENET_MEAN, IMAGENET_STD, DeviceLoader, dataset_statistics
from cifar.models import build_model

# case -> (model, ResNet-50 freeze mode, cache features)
CASES = {
    "cnn": ("cnn", "backbone", False),
    "resnet-frozen": ("resnet50", "backbone", False),
    "resnet-cached": ("resnet50", "backbone", True),
    "resnet-finetune": ("resnet50", "none", False),
}
SECTION_START, SECTION_END = "<!-- bench:start {} -->", "<!-- bench:end -->"


@dataclass
class Row:
    case: str
    pipeline: str
    images_per_second: float
    epoch_seconds: float
    run_seconds: float  # --epochs epochs, or one feature pass plus --epochs head epochs
    peak_mib: float | None
    ratio: str = ""  # on plain rows: ours' speed over this row's


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA if any"
    )
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--images", type=int, default=50_000, help="training images of the cnn case")
    p.add_argument(
        "--resnet-images", type=int, default=10_240, help="of resnet-frozen and resnet-finetune"
    )
    p.add_argument(
        "--cache-images", type=int, default=50_000, help="of resnet-cached (CIFAR-10: 50,000)"
    )
    p.add_argument("--batch-size", type=int, default=512, help="cnn batch size")
    p.add_argument("--resnet-batch-size", type=int, default=256, help="ResNet-50 batch size")
    p.add_argument("--image-size", type=int, default=224, help="ResNet-50 input size")
    p.add_argument(
        "--num-workers", type=int, nargs="+", default=[2], help="plain DataLoader's; a row each"
    )
    p.add_argument(
        "--mixed-precision",
        default="auto",
        choices=("auto", "no", "bf16", "fp16"),
        help="ours (plain is fp32); auto: bf16 on CUDA, else no",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps (at least 1) first")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs; the fastest is kept")
    p.add_argument("--seconds", type=float, default=0, help="and time epochs this long at least")
    p.add_argument(
        "--rounds", type=int, default=1, help="measure ours and plain in turn this many times"
    )
    p.add_argument("--epochs", type=int, default=5, help="epochs of the N-epochs column")
    p.add_argument("--out", default="", help="markdown file to write this device's section to")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer reads finished work only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def load_average() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def settings(accelerator, compiled: bool) -> str:
    """Our precision (and compilation), as the labels and the section heading show it."""
    precision = {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)
    return precision + (", compiled" if compiled else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {cpu_name()} ({torch.get_num_threads()} threads)"


class PeakMemory:
    """Peak GPU memory allocated, or this process's peak resident set on the CPU, in MiB."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM to the current RSS
            Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None


def timed_epochs(run_epoch, device, args) -> float:
    """Fastest call of run_epoch(i), in seconds between device syncs, over at least
    args.repeats calls and args.seconds seconds.

    The fastest, not the mean: on a shared machine other work only ever adds time.
    """
    times = []
    while len(times) < args.repeats or sum(times) < args.seconds:
        sync(device)
        started = time.perf_counter()
        run_epoch(len(times) + 1)
        sync(device)
        times.append(time.perf_counter() - started)
    return min(times)


def case_config(args, case: str) -> Config:
    model, freeze, cache = CASES[case]
    resnet = model == "resnet50"
    images = args.cache_images if cache else args.resnet_images if resnet else args.images
    return Config(
        model=model,
        dataset="synthetic",
        synthetic_train_size=images,
        synthetic_test_size=0,
        freeze=freeze,
        pretrained=False,  # random init: same speed, and no download
        image_size=args.image_size,
        batch_size=args.resnet_batch_size if resnet else args.batch_size,
        augment="none" if cache else "crop-flip",
        cache_features=cache,
        scheduler="none",
        mixed_precision=args.mixed_precision,
        compile=args.compile,
        tracker="none",
    )


def prepare_model(config, accelerator):
    """The model as setup_run places it (memory format for the device)."""
    torch.manual_seed(config.seed)
    return place_model(config, build_model(config, 10), accelerator.device)


def train_on(config, accelerator, model, loader, to_input, args) -> tuple[float, float]:
    """Warm up, then time train_epoch over loader; returns (images/s, epoch seconds)."""
    if config.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, 1)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    device = accelerator.device

    def run_epoch(epoch: int, limit: int | None = None) -> None:
        loader.set_epoch(epoch)
        stop = None if limit is None else (lambda done, loss: done >= limit)
        totals = Totals.zeros(device)
        train_epoch(
            accelerator,
            model,
            loader,
            optimizer,
            scheduler,
            loss_fn,
            to_input,
            totals,
            after_step=stop,
        )

    run_epoch(0, limit=max(1, args.warmup))
    seconds = timed_epochs(run_epoch, device, args)
    accelerator.free_memory()
    return loader.num_samples / seconds, seconds


def measure_ours(args, accelerator, case: str, memory: PeakMemory) -> list[Row]:
    config = case_config(args, case)
    train, test = make_synthetic(config)
    memory.reset()
    model = prepare_model(config, accelerator)
    train_loader, test_loader = build_loaders(config, accelerator, train, test)
    to_input = input_transform(config, train.images, accelerator.device)
    label = f"ours ({settings(accelerator, config.compile)})"
    if not config.cache_features:
        speed, seconds = train_on(config, accelerator, model, train_loader, to_input, args)
        return [Row(case, label, speed, seconds, args.epochs * seconds, memory.read())]
    # Warm up the backbone on a few batches, then time the product's caching step as a whole.
    warm = train.head(max(1, args.warmup) * config.batch_size)
    warm = DeviceLoader(
        warm.images,
        warm.labels,
        batch_size=config.batch_size,
        rank=0,
        world_size=1,
        device=accelerator.device,
        train=False,
    )
    backbone_features(accelerator, model, warm, to_input)
    cached = {}

    def feature_pass(_):
        cached["loaders"] = feature_loaders(
            config, accelerator, model, to_input, train_loader, test_loader
        )

    feature_seconds = timed_epochs(feature_pass, accelerator.device, args)
    features = cached["loaders"][0]
    n = len(train)
    feature_row = Row(
        case,
        f"{label}, feature pass",
        n / feature_seconds,
        feature_seconds,
        feature_seconds,
        memory.read(),
    )
    model = model.head  # as setup_run does: the backbone is done with
    speed, seconds = train_on(config, accelerator, model, features, to_input, args)
    total = feature_seconds + args.epochs * seconds
    head_row = Row(case, f"{label}, head epochs", speed, seconds, total, memory.read())
    return [feature_row, head_row]


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


def measure_plain(args, device, case: str, workers: int, memory: PeakMemory) -> Row:
    config = case_config(args, case)
    train, _ = make_synthetic(config)
    memory.reset()
    torch.manual_seed(config.seed)
    model = build_model(config, 10).to(device)
    optimizer = build_optimizer(config, model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    loader = DataLoader(
        PlainImages(train.images, train.labels, plain_transform(config, train.images)),
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
    seconds = timed_epochs(run_epoch, device, args)
    peak = memory.read()
    n = (len(train) // config.batch_size) * config.batch_size
    label = f"plain (fp32, {workers} worker{'' if workers == 1 else 's'})"
    return Row(case, label, n / seconds, seconds, args.epochs * seconds, peak)


def run_cases(args, accelerator) -> list[Row]:
    device, memory = accelerator.device, PeakMemory(accelerator.device)
    plain_frozen = {}  # workers -> [Row]: resnet-frozen and resnet-cached compare with these
    rows = []
    for case in args.cases:
        print(f"measuring {case} ...", file=sys.stderr, flush=True)
        shares_frozen = case in ("resnet-frozen", "resnet-cached")
        plain_case = "resnet-frozen" if shares_frozen else case
        todo = [
            w for w in dict.fromkeys(args.num_workers) if not shares_frozen or w not in plain_frozen
        ]
        # Rounds take turns, so a busy spell on a shared machine hits both sides alike.
        ours, plains = None, {}
        for _ in range(args.rounds):
            ours = best(ours, measure_ours(args, accelerator, case, memory))
            for workers in todo:
                row = measure_plain(args, device, plain_case, workers, memory)
                plains[workers] = best(plains.get(workers), [row])
        if shares_frozen:
            plain_frozen.update(plains)
            plains = plain_frozen
        rows += ours
        for workers in args.num_workers:
            plain = plains[workers][0]
            if case == "resnet-cached":
                plain = plain_without_cache(plain, args)
                ratio = plain.run_seconds / ours[-1].run_seconds  # a whole run: caching pays once
            else:
                ratio = ours[-1].images_per_second / plain.images_per_second
            rows.append(Row(**{**plain.__dict__, "case": case, "ratio": f"{ratio:.2f}x"}))
    return rows


def best(kept: list[Row] | None, new: list[Row]) -> list[Row]:
    """Row by row, the faster of two measurements (and the larger memory peak)."""
    if kept is None:
        return new
    return [
        Row(
            k.case,
            k.pipeline,
            max(k.images_per_second, n.images_per_second),
            min(k.epoch_seconds, n.epoch_seconds),
            min(k.run_seconds, n.run_seconds),
            None if k.peak_mib is None else max(k.peak_mib, n.peak_mib or 0),
        )
        for k, n in zip(kept, new, strict=True)
    ]


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


def format_table(rows: list[Row], epochs: int, device: torch.device) -> str:
    memory = "peak GPU MiB" if device.type == "cuda" else "peak RSS MiB"
    lines = [
        f"| case | pipeline | images/s | epoch s | {epochs} epochs s | {memory} | ours/plain |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = "n/a" if r.peak_mib is None else f"{r.peak_mib:,.0f}"
        lines.append(
            f"| {r.case} | {r.pipeline} | {r.images_per_second:,.0f} | {r.epoch_seconds:.3f} "
            f"| {r.run_seconds:.2f} | {peak} | {r.ratio} |"
        )
    return "\n".join(lines)


def format_section(name: str, args, argv: list[str], table: str, load: str) -> str:
    import accelerate

    sizes = (
        f"cnn: {args.images} images, batch {args.batch_size}; ResNet-50: {args.resnet_images} "
        f"images ({args.cache_images} with caching) at {args.image_size}x{args.image_size}, "
        f"batch {args.resnet_batch_size}"
    )
    return "\n".join(
        [
            SECTION_START.format(name),
            f"## {name}",
            "",
            f"- date: {datetime.date.today().isoformat()}; torch {torch.__version__}, "
            f"accelerate {accelerate.__version__}, python {platform.python_version()}",
            f"- command: `python bench/throughput.py {shlex.join(argv)}`",
            f"- {sizes}; warm-up {args.warmup} step(s); the fastest epoch of at least "
            f"{args.repeats} (and {args.seconds:g} s), in each of {args.rounds} round(s)",
            *([f"- load average (1 min) at start and end: {load}"] if load else []),
            "",
            table,
            SECTION_END,
        ]
    )


def write_section(path: Path, name: str, section: str) -> None:
    """Replace this device's section of the markdown file, or append it; keep everything else."""
    start = SECTION_START.format(name)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text:
        before, rest = text.split(start, 1)
        after = rest.split(SECTION_END, 1)[1] if SECTION_END in rest else ""
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    elif args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch here. Use --device cpu.")
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if args.mixed_precision == "auto":
        args.mixed_precision = "bf16" if cuda else "no"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as setup_run does, for both pipelines
    try:
        accelerator = make_accelerator(case_config(args, args.cases[0]))
    except UserError as error:
        sys.exit(f"error: {error}")
    load_at_start = load_average()
    rows = run_cases(args, accelerator)
    # A shared CPU's other work slows every row: say how busy the machine was.
    load = f"{load_at_start} / {load_average()}" if accelerator.device.type == "cpu" else ""
    # One section per device and setting: a rerun replaces it, other devices' stay.
    name = f"{device_name(accelerator.device)}, ours in {settings(accelerator, args.compile)}"
    table = format_table(rows, args.epochs, accelerator.device)
    print(f"\n{name}\n\n{table}")
    if args.out:
        write_section(Path(args.out), name, format_section(name, args, argv, table, load))
        print(f"\nwrote the section {name!r} of {args.out}")


if __name__ == "__main__":
    main()
