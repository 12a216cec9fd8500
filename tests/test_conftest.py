"""tests/conftest.py: a test that starts a process (itself, through a fixture it uses, or through a
function of tests/ either calls) is marked slow as it is collected, one that stays in this
process is not; and the fast tier refuses a process that the marking missed.

The pretend tests below are reached through PRETEND (a dict the marking does not follow), so
that these tests, which only collect them, stay in-process themselves."""

import ctypes.util
import os
import subprocess

import pytest

from tests.conftest import RefusedProcess, pytest_collection_modifyitems
from tests.helpers import starts_a_process


def starts_true():
    """A function of tests/ that starts a process."""
    return subprocess.run(["true"], check=True)


def calls_a_helper_that_starts_a_process():
    assert starts_true().returncode == 0


def uses_a_fixture_that_trains(earlier_run):
    assert (earlier_run / "summary.json").is_file()


def imports_subprocess_itself():
    import subprocess as processes

    processes.run(["true"], check=True)


def forks():
    if os.fork() == 0:
        os._exit(0)


def stays_in_process(tmp_path):
    (tmp_path / "a").write_text("no process")
    assert sorted([3, 1, 2]) == [1, 2, 3]


PRETEND = {
    "calls_a_helper_that_starts_a_process": calls_a_helper_that_starts_a_process,
    "uses_a_fixture_that_trains": uses_a_fixture_that_trains,
    "imports_subprocess_itself": imports_subprocess_itself,
    "forks": forks,
    "stays_in_process": stays_in_process,
}


def test_the_tests_that_start_a_process_are_marked_slow_and_one_in_process_is_not(request):
    items = {
        name: pytest.Function.from_parent(request.node.parent, name=name, callobj=function)
        for name, function in PRETEND.items()
    }
    pytest_collection_modifyitems(request.config, list(items.values()))
    slow = {name for name, item in items.items() if item.get_closest_marker("slow")}
    assert slow == set(PRETEND) - {"stays_in_process"}
    # The fixture's own code starts the process, not the test's.
    assert not starts_a_process(PRETEND["uses_a_fixture_that_trains"])
    assert starts_a_process(PRETEND["calls_a_helper_that_starts_a_process"])


def test_the_fast_tier_refuses_a_process_the_marking_missed(monkeypatch):
    monkeypatch.setattr("subprocess.Popen", RefusedProcess)  # what CIFAR_FAST_TIER=1 sets
    refusal = r"this test starts a process \(\['true'\]\), so it belongs to the slow tests"
    with pytest.raises(pytest.fail.Exception, match=refusal):
        PRETEND["calls_a_helper_that_starts_a_process"]()
    assert ctypes.util.find_library("c")  # ldconfig -p, let through
