"""cifar/record/schema.py and files.py: versioned records that older and newer code read alike,
one validator per file."""

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cifar.checkpoint import read_progress
from cifar.errors import UserError
from cifar.record import (
    FORMAT_KEY,
    FORMAT_VERSION,
    METRIC_KEYS,
    RecordError,
    Shape,
    read_finished_run,
)
from cifar.record.schema import check_epoch_records, check_summary
from tests.helpers import ROOT, comparable_metrics, read_json, read_metrics, run_train, train_env

FIXTURES = Path(__file__).parent / "fixtures"
OLD_RUN = FIXTURES / "run-v0-mid-epoch"
EXPECTED = read_json(FIXTURES / "run-v0-mid-epoch.expected.json")
EXTRA = "ema_test_accuracy"  # a metric a later version may add


def without_version(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != FORMAT_KEY} for r in records]


def resume_old_run(tmp_path, edit=None) -> Path:
    run_dir = tmp_path / "old-run"
    shutil.copytree(OLD_RUN, run_dir)
    if edit is not None:
        edit(run_dir)
    run_train([*EXPECTED["flags"], "--output-dir", run_dir, "--resume", "auto"])
    return run_dir


def test_a_run_stopped_by_the_version_before_records_were_versioned_resumes_and_finishes(
    tmp_path,
):
    """The fixture was written by the code before this package (no format_version anywhere).
    Resumed here it finishes where an uninterrupted run of the same flags ends, and where that
    code's own run ended (to float rounding: another machine may sum in another order)."""
    assert FORMAT_KEY not in read_json(OLD_RUN / "config.json")
    run_dir = resume_old_run(tmp_path)
    fresh = tmp_path / "uninterrupted"
    run_train([*EXPECTED["flags"], "--output-dir", fresh])
    resumed = without_version(comparable_metrics(run_dir))
    assert read_metrics(run_dir)[0] == read_metrics(OLD_RUN)[0]  # the old epoch, kept as is
    for reference in (without_version(comparable_metrics(fresh)), EXPECTED["metrics"]):
        assert len(resumed) == len(reference) == 2
        for got, expected in zip(resumed, reference, strict=True):
            assert got == pytest.approx(expected, rel=1e-5)
    summary = read_json(run_dir / "summary.json")
    assert summary[FORMAT_KEY] == FORMAT_VERSION
    assert summary["test_loss"] == pytest.approx(EXPECTED["test_loss"], rel=1e-5)
    assert summary["confusion_matrix"] == EXPECTED["confusion_matrix"]
    old, new = read_metrics(run_dir)  # each line keeps the version it was recorded in
    assert FORMAT_KEY not in old and new[FORMAT_KEY] == FORMAT_VERSION


def add_extra_metric(run_dir: Path) -> None:
    """What a later version with one more metric would have written."""
    lines = [{**r, EXTRA: 0.5} for r in read_metrics(run_dir)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    progress_path = next((run_dir / "checkpoints").glob("step-*")) / "progress.json"
    progress = read_json(progress_path)
    progress["history"] = [{**r, EXTRA: 0.5} for r in progress["history"]]
    progress["a_future_field"] = {"any": "thing"}
    progress_path.write_text(json.dumps(progress))


def test_records_with_keys_this_version_does_not_know_are_read_by_resume_report_and_study(
    tmp_path,
):
    run_dir = resume_old_run(tmp_path, edit=add_extra_metric)
    assert read_metrics(run_dir)[0][EXTRA] == 0.5  # resume kept the record as it was
    summary = read_json(run_dir / "summary.json")
    (run_dir / "summary.json").write_text(json.dumps({**summary, EXTRA: 0.5}))

    env = train_env(PYTHONPATH=str(ROOT))
    report = subprocess.run(
        [sys.executable, "-m", "cifar.report", str(run_dir), "--out", str(tmp_path / "report")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "results.md").is_file()

    study_dir = tmp_path / "study"
    shutil.copytree(run_dir, study_dir / "old" / "seed0")
    study = subprocess.run(
        [
            sys.executable,
            "-m",
            "cifar.study",
            "--out",
            str(study_dir),
            "--arm",
            "old=",
            "--seeds",
            "0",
            "--",
            *EXPECTED["flags"],
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
    )
    assert study.returncode == 0, study.stderr
    assert "finished, skipped" in study.stdout
    arm = read_json(study_dir / "study.json")["arms"]["old"]
    assert arm["test_accuracy"]["n"] == 1
    assert arm["test_accuracy"]["mean"] == EXPECTED["test_accuracy"]


def test_a_checkpoint_of_a_newer_record_format_is_refused_naming_the_upgrade(tmp_path):
    folder = tmp_path / "step-000000006"
    shutil.copytree(OLD_RUN / "checkpoints" / "step-000000006", folder)
    progress = read_json(folder / "progress.json")
    (folder / "progress.json").write_text(json.dumps({**progress, FORMAT_KEY: FORMAT_VERSION + 1}))
    with pytest.raises(UserError, match="newer cifar-accelerate") as raised:
        read_progress(str(folder), Shape(2, 4, 1, 10), progress["settings"])
    assert f"formats up to {FORMAT_VERSION}" in str(raised.value)


def valid_summary() -> dict:
    matrix = [[6 if i == j else 0 for j in range(10)] for i in range(10)]
    return {
        "model": "cnn",
        "dataset": "synthetic",
        "epochs": 2,
        "test_accuracy": 1.0,
        "test_loss": 0.1,
        "best_test_accuracy": 1.0,
        "confusion_matrix": matrix,
        "per_class_accuracy": {f"c{i}": 0.5 for i in range(10)},
        "classes": [f"c{i}" for i in range(10)],
        "num_test_samples": 60,
        "world_size": 1,
        "mixed_precision": "no",
        "wall_seconds": 1.0,
        "train_images_per_second": 100.0,
    }


def test_a_summary_accepts_null_for_a_class_without_test_images_and_refuses_infinity():
    summary = valid_summary()
    check_summary(summary)
    check_summary({**summary, "per_class_accuracy": {**summary["per_class_accuracy"], "c3": None}})
    with pytest.raises(RecordError, match="test_loss is not a number"):
        check_summary({**summary, "test_loss": float("inf")})
    with pytest.raises(RecordError, match="newer"):
        check_summary({**summary, FORMAT_KEY: FORMAT_VERSION + 1})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from([*METRIC_KEYS, FORMAT_KEY, EXTRA]), value=json_values)
def test_any_value_in_an_epoch_record_is_accepted_or_refused_never_a_crash(key, value):
    record = {k: 1.0 for k in METRIC_KEYS} | {"epoch": 1, key: value}
    try:
        check_epoch_records([record])
    except RecordError:
        return
    assert all(isinstance(record[k], (int, float)) for k in METRIC_KEYS)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from([*valid_summary(), FORMAT_KEY]), value=json_values)
def test_any_value_in_a_summary_is_accepted_or_refused_never_a_crash(key, value):
    with contextlib.suppress(RecordError):
        check_summary({**valid_summary(), key: value})


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["config.json", "metrics.jsonl", "summary.json"]), text=st.text())
def test_any_text_in_a_run_file_reads_back_or_is_one_user_error(tmp_path_factory, name, text):
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "config.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text(json.dumps({k: 1 for k in METRIC_KEYS}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(valid_summary()))
    (run_dir / name).write_text(text)
    try:
        read_finished_run(str(run_dir), "FIX.")
    except UserError as error:
        assert str(error).endswith("FIX.") and "\n" not in str(error)
