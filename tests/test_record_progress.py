"""cifar/record/progress.py: progress.json is trusted only when it describes a state the run can
continue from."""

import copy
import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cifar.record import FORMAT_VERSION, METRIC_KEYS, InvalidProgress, Progress, Shape

# 2 epochs of 10 batches, accumulation 2 (5 optimizer steps an epoch), 3 classes.
SHAPE = Shape(epochs=2, batches_per_epoch=10, accumulation_steps=2, num_classes=3)


def record(epoch: int) -> dict:
    return {key: float(epoch if key == "epoch" else 0.5) for key in METRIC_KEYS} | {"epoch": epoch}


def valid_progress() -> dict:
    """After epoch 1 and 3 optimizer steps (6 batches) of epoch 2."""
    return {
        "settings": {"seed": 0},
        "epoch": 1,
        "step_in_epoch": 6,
        "global_step": 8,
        "history": [record(1)],
        "partial": {"loss_sum": 12.5, "correct": 20, "seen": 48},
        "wall_seconds": 3.5,
        "last_eval": {
            "confusion_matrix": [[3, 1, 0], [0, 4, 0], [1, 0, 5]],
            "num_test_samples": 14,
            "test_loss": 0.7,
            "test_accuracy": 12 / 14,
        },
    }


def test_a_valid_progress_reads_back_equal():
    data = valid_progress()
    progress = Progress.from_json(data, SHAPE, step=8)
    assert progress.to_json() == {"format_version": FORMAT_VERSION, **data}
    assert not progress.finished(SHAPE.epochs)


def test_the_start_and_the_end_of_a_run_are_valid():
    start = Progress({"seed": 0}).to_json()
    assert Progress.from_json(start, SHAPE, step=0).epoch == 0
    end = valid_progress() | {"epoch": 2, "step_in_epoch": 0, "global_step": 10}
    end["history"] = [record(1), record(2)]
    end["partial"] = {"loss_sum": 0.0, "correct": 0, "seen": 0}
    assert Progress.from_json(end, SHAPE, step=10).finished(SHAPE.epochs)


TAMPERINGS = {
    "epoch 999": (lambda p: p.update(epoch=999), "epoch 999 is outside 0..2"),
    "step_in_epoch 1000": (lambda p: p.update(step_in_epoch=1000), "step_in_epoch 1000"),
    "inside an accumulation group": (lambda p: p.update(step_in_epoch=5), "step_in_epoch 5"),
    "global step off": (lambda p: p.update(global_step=9), "global_step 9 does not match"),
    "epoch as text": (lambda p: p.update(epoch="1"), "'epoch' has the wrong type (str)"),
    "epoch as bool": (lambda p: p.update(epoch=True), "'epoch' has the wrong type (bool)"),
    "no history": (lambda p: p.update(history=[]), "0 epochs of history for epoch 1"),
    "NaN in history": (lambda p: p["history"][0].update(test_loss=math.nan), "bad value"),
    "missing key": (lambda p: p.pop("partial"), "'partial' is missing"),
    "more correct than seen": (lambda p: p["partial"].update(correct=49), "does not match"),
    "negative count": (lambda p: p["partial"].update(seen=-1), "'partial' holds a bad value"),
    "no evaluation": (lambda p: p.update(last_eval=None), "'last_eval' must be present"),
    "matrix of other classes": (
        lambda p: p["last_eval"].update(confusion_matrix=[[1, 0], [0, 1]]),
        "3x3 count matrix",
    ),
    "sample count off": (lambda p: p["last_eval"].update(num_test_samples=15), "bad value"),
    "negative wall time": (lambda p: p.update(wall_seconds=-1), "not a duration"),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_a_tampered_progress_is_refused_with_its_reason(name):
    edit, reason = TAMPERINGS[name]
    data = valid_progress()
    edit(data)
    with pytest.raises(InvalidProgress) as raised:
        Progress.from_json(data, SHAPE, step=8)
    assert reason in str(raised.value)


def test_a_progress_in_a_folder_of_another_step_is_refused():
    with pytest.raises(InvalidProgress, match="the folder says 7"):
        Progress.from_json(valid_progress(), SHAPE, step=7)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(sorted(valid_progress())),
    inner=st.one_of(st.none(), st.text(max_size=20)),
    value=json_values,
)
def test_any_value_anywhere_is_accepted_or_refused_never_a_crash(key, inner, value):
    data = copy.deepcopy(valid_progress())
    if inner is not None and isinstance(data[key], dict):
        data[key][inner] = value
    else:
        data[key] = value
    assert_accepted_whole_or_refused(data, step=8)


@settings(max_examples=100, deadline=None)
@given(value=json_values)
def test_any_json_document_is_accepted_or_refused_never_a_crash(value):
    assert_accepted_whole_or_refused(value, step=None)


def assert_accepted_whole_or_refused(data, step) -> None:
    """InvalidProgress, or a Progress that writes back what was read: every field it knows,
    in the current format version."""
    try:
        progress = Progress.from_json(data, SHAPE, step=step)
    except InvalidProgress:
        return
    known = {f.name for f in dataclasses.fields(Progress)}
    kept = {k: v for k, v in data.items() if k in known}
    assert progress.to_json() == {"format_version": FORMAT_VERSION, **kept}


def test_a_progress_file_nested_too_deeply_is_invalid_not_a_crash(tmp_path):
    from cifar.checkpoint import read_progress

    folder = tmp_path / "step-000000008"
    folder.mkdir()
    (folder / "progress.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidProgress, match="nested too deeply"):
        read_progress(str(folder), SHAPE, settings={})
