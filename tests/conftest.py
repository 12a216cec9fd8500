"""The suite's hooks and shared fixtures; the shared code is tests/helpers.py."""

# Only for tests/test_study.py and tests/test_report.py, which import these from here until
# they import them from tests.helpers.
from tests.helpers import ROOT, SMOKE, read_json, read_metrics, require, run_train, train_env  # noqa: F401
