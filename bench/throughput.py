r"""Training throughput: this project's pipeline against the plain DataLoader way.

    python bench/throughput.py --out docs/benchmarks.md       # a GPU: every case, ~5 minutes
    python bench/throughput.py --device cpu --cases imagefolder --folder-images 1024 \
        --num-workers 2 --rounds 2 --repeats 1 --warmup 1 --out docs/benchmarks.md
    python bench/throughput.py --device cpu --images 1024 --batch-size 256 --resnet-images 16 \
        --cache-images 16 --resnet-batch-size 8 --warmup 1 --repeats 1 --seconds 15 --rounds 2 \
        --num-workers 2 0 --out docs/benchmarks.md           # a small CPU: ResNet-50 is slow

Both sides train the same model on the same synthetic CIFAR-shaped uint8 images, on the same
device, in one process. Ours is the product's code: Config -> make_accelerator, build_model,
build_loaders (DeviceTrainLoader: the whole set on the device, batched crop + flip), input_transform
(fused normalise + resize + channels_last), feature_loaders for caching, and train_epoch.
Plain is the torchvision tutorial way: a Dataset of PIL images with per-sample RandomCrop,
RandomHorizontalFlip, (Resize,) ToTensor and Normalize, a DataLoader with --num-workers
workers, fp32, each batch copied to the device. The imagefolder case (bench/folders.py) reads a
folder of JPEGs it makes itself. Times are synchronised and taken after
--warmup steps; --out gets this device's section replaced (or added), the others kept.
"""

# ruff: noqa: E402  (the path to this checkout goes first, so the script runs without installing)
import argparse
import os
import sys
from pathlib import Path

# Run as a script, Python puts bench/ itself first on the path, where its modules would stand in
# for packages of the same name: put the checkout there instead, and import bench.* by name.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import torch
from torch import nn

from bench.cases import CASES, case_config
from bench.folders import FOLDER_CASE, measure_folders
from bench.ours import prepare_model, settings, train_on
from bench.plain import measure_plain, plain_without_cache
from bench.section import device_name, format_section, load_average, write_section
from bench.timing import PeakMemory, Row, best, timed_epochs
from cifar.build import make_accelerator
from cifar.data.loaders import (
    DeviceEvalLoader,
    backbone_features,
    build_loaders,
    feature_loaders,
)
from cifar.data.tensors import make_synthetic
from cifar.data.transforms import input_transform
from cifar.errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA if any"
    )
    every = [*CASES, FOLDER_CASE]
    p.add_argument("--cases", nargs="+", default=every, choices=every)
    p.add_argument("--images", type=int, default=50_000, help="training images of the cnn case")
    p.add_argument(
        "--resnet-images", type=int, default=10_240, help="of resnet-frozen and resnet-finetune"
    )
    p.add_argument(
        "--cache-images", type=int, default=50_000, help="of resnet-cached (CIFAR-10: 50,000)"
    )
    p.add_argument(
        "--folder-images", type=int, default=2048, help=f"{FOLDER_CASE}: 500x375 JPEGs made here"
    )
    p.add_argument("--folder-batch-size", type=int, default=128, help=f"{FOLDER_CASE} batch size")
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
    warm = DeviceEvalLoader(
        warm.images,
        warm.labels,
        batch_size=config.batch_size,
        rank=0,
        world_size=1,
        device=accelerator.device,
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
    speed, seconds = train_on(config, accelerator, model, features, nn.Identity(), args)
    total = feature_seconds + args.epochs * seconds
    head_row = Row(case, f"{label}, head epochs", speed, seconds, total, memory.read())
    return [feature_row, head_row]


def run_cases(args, accelerator) -> list[Row]:
    device, memory = accelerator.device, PeakMemory(accelerator.device)
    plain_frozen = {}  # workers -> [Row]: resnet-frozen and resnet-cached compare with these
    rows = []
    for case in args.cases:
        print(f"measuring {case} ...", file=sys.stderr, flush=True)
        if case == FOLDER_CASE:
            rows += measure_folders(args, accelerator)
            continue
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
        accelerator = make_accelerator(case_config(args, "cnn"))  # every case: the same settings
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
