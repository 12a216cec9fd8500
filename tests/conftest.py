"""The suite's hooks and shared fixtures; the shared code is tests/helpers.py.

Every test that starts a process (itself, through a fixture it uses, or through a function of
tests/ it calls) is marked slow as it is collected (tests.helpers.item_starts_a_process). The
fast tier, `make test-fast`, runs the others (-m "not slow and not slurm") with
CIFAR_FAST_TIER=1, under which a test that starts a process all the same fails, saying so.
"""

import ctypes.util
import os
import subprocess
import sys

import pytest

from tests.helpers import SMOKE, item_starts_a_process, run_train

# The fast tier's guard names subprocess to refuse it: it starts no process.
IN_PROCESS_FIXTURES = ("refuse_processes_in_the_fast_tier",)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "gpu: needs CUDA (tests/test_gpu.py; `pytest -m gpu` runs them, each skipped with its "
        "reason without CUDA)",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        unmarked = isinstance(item, pytest.Function) and item.get_closest_marker("slow") is None
        if unmarked and item_starts_a_process(item, IN_PROCESS_FIXTURES):
            item.add_marker(pytest.mark.slow)


class RefusedProcess(subprocess.Popen):
    """subprocess.Popen in the fast tier: fails the test, naming the command. One process is let
    through: Python's own search for the C library (ctypes.util.find_library runs `ldconfig -p`),
    which a run's process settings make (cifar.allocator.glibc)."""

    def __init__(self, args, *more, **options):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != ctypes.util.__file__:
            frame = frame.f_back
        if frame is not None:
            super().__init__(args, *more, **options)
            return
        self._child_created = False  # what Popen.__del__ reads
        pytest.fail(
            f"this test starts a process ({args!r}), so it belongs to the slow tests: mark it "
            "@pytest.mark.slow, or start the process through a function of tests/ (which "
            "tests/conftest.py sees); `make test-fast` runs in-process tests only",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def refuse_processes_in_the_fast_tier(request, monkeypatch):
    """Under CIFAR_FAST_TIER=1 (make test-fast) a test not marked slow may not start a process."""
    if os.environ.get("CIFAR_FAST_TIER") == "1" and request.node.get_closest_marker("slow") is None:
        monkeypatch.setattr(subprocess, "Popen", RefusedProcess)


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished one-epoch run, for tests that must leave it untouched."""
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    run_train([*SMOKE, "--output-dir", run_dir])
    return run_dir
