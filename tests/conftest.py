"""The suite's hooks and shared fixtures; the shared code is tests/helpers.py."""

import pytest

# ROOT, read_json, read_metrics, require and train_env only for tests/test_study.py and
# tests/test_report.py, which import them (and SMOKE, run_train) from here until they import them
# from tests.helpers.
from tests.helpers import (  # noqa: F401
    ROOT,
    SMOKE,
    read_json,
    read_metrics,
    require,
    run_train,
    train_env,
)


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished one-epoch run, for tests that must leave it untouched."""
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    run_train([*SMOKE, "--output-dir", run_dir])
    return run_dir
