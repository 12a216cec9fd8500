"""The markdown section of one device: what machine and command, the table, and replacing
that section of the results file while keeping the others."""

import datetime
import os
import platform
import shlex
from pathlib import Path

import torch

SECTION_START, SECTION_END = "<!-- bench:start {} -->", "<!-- bench:end -->"


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {cpu_name()} ({torch.get_num_threads()} threads)"


def format_section(name: str, args, argv: list[str], table: str, load: str) -> str:
    import accelerate

    sizes = (
        f"cnn: {args.images} images, batch {args.batch_size}; ResNet-50: {args.resnet_images} "
        f"images ({args.cache_images} with caching) at {args.image_size}x{args.image_size}, "
        f"batch {args.resnet_batch_size}"
    )
    if "imagefolder" in args.cases:
        sizes += (
            f"; imagefolder: {args.folder_images} JPEGs of 500x375 (and 64 test ones), SimpleCNN "
            f"at 32x32, batch {args.folder_batch_size}, {os.cpu_count()} CPUs"
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
