"""cifar/allocator.py: a run's host memory is reused from the heap, not mapped afresh."""

import subprocess
import sys

import pytest

from cifar import allocator

# In a fresh process: how many MiB a 24 MiB tensor adds to glibc's mmapped blocks, after a CPU
# run's process settings (on) or without them (off).
MAPPED_MIB = """
import ctypes, sys
import torch
from cifar.allocator import glibc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = glibc()
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "on":
    from cifar.config import Config
    from cifar.processes import apply_process_settings
    applied = apply_process_settings(Config(dataset="synthetic", tracker="none"))
    assert applied["malloc_reuses_freed_memory"], applied
before = libc.mallinfo2().hblkhd
block = torch.empty(6 * 2**20)
print((libc.mallinfo2().hblkhd - before) / 2**20)
"""


@pytest.mark.skipif(allocator.glibc() is None, reason="the C library is not glibc")
def test_a_run_takes_its_tensors_from_the_heap_not_from_fresh_mappings():
    def mapped_mib(mode: str) -> float:
        command = [sys.executable, "-c", MAPPED_MIB, mode]
        env = {"ACCELERATE_USE_CPU": "true", "PATH": "/usr/bin:/bin"}
        return float(subprocess.run(command, capture_output=True, text=True, env=env,
                                    check=True).stdout)  # fmt: skip

    assert mapped_mib("off") >= 24  # glibc's default: a fresh mapping, zeroed pages each time
    assert mapped_mib("on") == 0


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
    ],
)
def test_the_users_own_malloc_settings_are_left_alone(environ):
    libc = FakeLibc()
    assert not allocator.reuse_freed_memory(environ, libc)
    assert libc.calls == []


def test_both_thresholds_are_fixed_otherwise():
    libc = FakeLibc()
    assert allocator.reuse_freed_memory({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, libc)
    assert libc.calls == [
        (allocator.M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD_BYTES),
        (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD_BYTES),
    ]
