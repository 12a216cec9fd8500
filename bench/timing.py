"""Timing: device syncs, the fastest of timed epochs, peak memory, and the best of rounds."""

import contextlib
import gc
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Row:
    case: str
    pipeline: str
    images_per_second: float
    epoch_seconds: float
    run_seconds: float  # --epochs epochs, or one feature pass plus --epochs head epochs
    peak_mib: float | None
    ratio: str = ""  # on plain rows: ours' speed over this row's


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer reads finished work only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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
