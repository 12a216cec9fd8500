"""cifar/study/figures.py, markdown.py and statistics.py on made-up run folders: intervals inside
the metric's range and said so, the paired-difference figure, classes without a test image,
the one-arm study. Each study is written by write_study and read back from its files."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.image import imread

from cifar.record import read_finished_run
from cifar.study.figures import accuracy_figure, curves_figure, difference_figure, per_class_figure
from cifar.study.results import aggregate, write_study
from cifar.study.statistics import compare_paired, describe
from tests.helpers import write_run

pytestmark = pytest.mark.fast  # in-process: part of `make test-fast`
EXAMPLES = int(os.environ.get("CIFAR_HYPOTHESIS_EXAMPLES", "30"))
RANGES = {"accuracy": (0.0, 1.0), "loss": (0.0, math.inf), "seconds": (0.0, math.inf)}


def made_up_study(out: Path, arms: dict, seeds=(0, 1, 2)) -> dict:
    """A study of made-up runs: arms maps a name to {seed: write_run keywords}; writes it with
    write_study into out and returns the study dict aggregate made of the same runs."""
    finished = {}
    for index, (arm, runs) in enumerate(arms.items()):
        for seed in seeds:
            folder = write_run(out / arm / f"seed{seed}", seed=10 * index + seed, **runs[seed])
            finished[arm, seed] = read_finished_run(str(folder), "")
    grid = {
        "name": out.name,
        "seeds": list(seeds),
        "arms": {arm: f"--width {8 * (i + 1)}" for i, arm in enumerate(arms)},
        "common": ["--epochs", "2"],
    }
    collected = {"finished": finished, "missing": []}
    write_study(grid, str(out), collected)
    return aggregate(grid, collected)


def near_the_top(accuracies, seconds=(10.0, 300.0, 20.0)) -> dict:
    """Runs whose accuracies crowd 100% and whose wall times spread widely: three seeds give
    t-intervals past 100% and below 0 s."""
    return {
        seed: {"summary": {"test_accuracy": a, "best_test_accuracy": a, "wall_seconds": s}}
        for seed, (a, s) in enumerate(zip(accuracies, seconds, strict=True))
    }


def all_stats(study: dict):
    """(what, range, stat or pair) for every interval of study.json."""
    for name, arm in study["arms"].items():
        for metric, stat in arm.items():
            if isinstance(stat, dict) and "n" in stat:
                kind = "accuracy" if metric.endswith("accuracy") else "loss"
                yield f"{name} {metric}", RANGES[kind], stat
        for cls, stat in arm["per_class_accuracy"].items():
            yield f"{name} {cls}", RANGES["accuracy"], stat
        for key, points in arm["curves"].items():
            kind = "accuracy" if key.endswith("accuracy") else "loss"
            for point in points:
                yield f"{name} {key} epoch {point['epoch']}", RANGES[kind], point
    for pair in study["pairs"]:
        bound = 1.0 if pair["metric"] == "test_accuracy" else math.inf
        yield f"{pair['a']} - {pair['b']} {pair['metric']}", (-bound, bound), pair


def test_every_interval_lies_in_its_metrics_range_and_study_md_marks_the_cut_ones(tmp_path):
    out = tmp_path / "top"
    made_up_study(
        out,
        {
            "w8": near_the_top([0.90, 0.97, 0.99]),
            "w16": near_the_top([0.93, 0.995, 1.0], seconds=(12.0, 30.0, 20.0)),
        },
    )
    study = json.loads((out / "study.json").read_text())
    cut = []
    for what, (low, high), stat in all_stats(study):
        if stat["ci95"] is not None:
            assert low <= stat["ci95"][0] <= stat["ci95"][1] <= high, (what, stat["ci95"])
        if stat["clipped"]:
            cut.append(what)
    assert {"w8 test_accuracy", "w16 test_accuracy", "w8 wall_seconds"} <= set(cut)
    assert study["arms"]["w8"]["test_accuracy"]["ci95"][1] == 1.0
    assert study["arms"]["w8"]["wall_seconds"]["ci95"][0] == 0.0
    assert "w16 test_loss" not in cut

    text = (out / "study.md").read_text()
    (w8,) = [line for line in text.splitlines() if line.startswith("| w8 |")]
    accuracy, wall = w8.split(" | ")[2], w8.split(" | ")[5]
    assert accuracy.endswith(", 100.00]†") and wall.startswith("110.0 s") and "[0.0 s, " in wall
    assert wall.endswith("†") and not re.search(r"\[-", text)  # no interval below 0
    assert "† The t-interval reached past the values the metric can take" in text
    figure = accuracy_figure(study)
    assert "(interval of w8, w16 cut to 0-100%)" in figure.axes[0].get_title()


def test_no_note_on_cutting_where_no_interval_was_cut(tmp_path):
    out = tmp_path / "middle"
    spread = {
        s: {"summary": {"test_accuracy": 0.5 + s / 100, "wall_seconds": 10.0}} for s in range(3)
    }
    made_up_study(out, {"a": spread, "b": spread})
    text = (out / "study.md").read_text()
    assert "†" not in text.split("| arm |")[1]
    assert (
        "cut"
        not in accuracy_figure(json.loads((out / "study.json").read_text())).axes[0].get_title()
    )


def test_the_paired_difference_figure_shows_every_seed_and_the_mean_with_its_interval(tmp_path):
    out = tmp_path / "pairs"
    made_up_study(
        out,
        {
            "w8": near_the_top([0.80, 0.85, 0.90]),
            "w16": near_the_top([0.84, 0.86, 0.95]),
        },
    )
    study = json.loads((out / "study.json").read_text())
    text = (out / "study.md").read_text()
    assert (
        "](paired_difference.png)" in text and imread(out / "paired_difference.png").shape[0] > 200
    )
    figure = difference_figure(study)
    accuracy, loss = figure.axes
    (pair,) = [p for p in study["pairs"] if p["metric"] == "test_accuracy"]
    # One marker per seed at that seed's difference, in points; the mean and its interval.
    points = [c for c in accuracy.collections if isinstance(c, PathCollection)]
    assert [p.get_offsets()[0][0] for p in points] == pytest.approx([4.0, 1.0, 5.0])
    assert len({tuple(map(tuple, p.get_paths()[0].vertices)) for p in points}) == 3
    (mean,) = [line for line in accuracy.get_lines() if line.get_marker() == "o"]
    assert mean.get_xdata()[0] == pytest.approx(100 * pair["mean_difference"])
    (bar,) = [c for c in accuracy.collections if isinstance(c, LineCollection)]
    ends = bar.get_segments()[0][:, 0]
    assert sorted(ends) == pytest.approx([100 * v for v in pair["ci95"]])
    assert [t.get_text() for t in accuracy.get_yticklabels()] == ["w16 − w8"]
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "seed 0",
        "seed 1",
        "seed 2",
        "mean, 95% CI",
    ]
    assert "a more accurate" in accuracy.get_xlabel() and "lower loss" in loss.get_xlabel()


def test_each_seed_has_its_marker_and_its_runs_are_joined_across_arms(tmp_path):
    out = tmp_path / "seeds"
    study = made_up_study(
        out, {"a": near_the_top([0.80, 0.85, 0.90]), "b": near_the_top([0.84, 0.86, 0.95])}
    )
    ax = accuracy_figure(study).axes[0]
    runs = [c for c in ax.collections if isinstance(c, PathCollection)]
    shapes = {}
    for run in runs:
        shapes.setdefault(tuple(map(tuple, run.get_paths()[0].vertices)), []).append(
            tuple(run.get_offsets()[0])
        )
    # Three shapes, each on one run of arm a (x -0.1) and one of arm b (x 0.9).
    assert sorted(len(places) for places in shapes.values()) == [2, 2, 2]
    joins = [line for line in ax.get_lines() if line.get_color() == "grey"]
    assert sorted(tuple(line.get_ydata()) for line in joins) == [
        (0.80, 0.84),
        (0.85, 0.86),
        (0.90, 0.95),
    ]


def test_the_accuracy_band_of_the_curves_stays_within_0_and_1(tmp_path):
    out = tmp_path / "curves"
    study = made_up_study(
        out, {"a": near_the_top([0.90, 0.97, 0.99]), "b": near_the_top([0.5, 0.99, 1.0])}
    )
    accuracy = curves_figure(study).axes[0]
    for band in accuracy.collections:
        corners = band.get_paths()[0].vertices[:, 1]
        assert corners.min() >= 0.0 and corners.max() <= 1.0
    assert "cut to the metric's range" in accuracy.get_title()


def test_a_one_epoch_study_draws_its_interval_as_a_bar(tmp_path):
    out = tmp_path / "one-epoch"
    study = made_up_study(out, {"a": {s: {"epochs": 1} for s in range(3)}})
    accuracy = curves_figure(study).axes[0]
    low, high = accuracy.get_xlim()
    assert low <= 0.6 and high >= 1.4
    (point,) = study["arms"]["a"]["curves"]["test_accuracy"]
    (bar,) = [c for c in accuracy.collections if isinstance(c, LineCollection)]
    assert sorted(bar.get_segments()[0][:, 1]) == pytest.approx(point["ci95"])


def test_a_one_arm_study_says_there_is_no_pair_instead_of_an_empty_table(tmp_path):
    out = tmp_path / "alone"
    made_up_study(out, {"w8": {s: {} for s in range(3)}})
    text = (out / "study.md").read_text()
    assert "- One arm (w8): there is no pair to compare." in text
    assert "| a − b |" not in text and "paired t-test" not in text
    assert not (out / "paired_difference.png").exists()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links == ["test_accuracy.png", "curves.png", "per_class_accuracy.png"]
    assert all((out / name).is_file() for name in links)


def test_a_class_without_test_image_has_no_accuracy_in_the_study(tmp_path):
    out = tmp_path / "untested"
    # Arm a: seed 1 had no dog (null); arm b: no run had a dog, one wrote 0.0 as runs did.
    a = {s: {"tested": [20, 0, 20] if s == 1 else [20, 20, 20]} for s in range(3)}
    b = {s: {"tested": [20, 0, 20], "zero_for_untested": s == 0} for s in range(3)}
    made_up_study(out, {"a": a, "b": b})
    study = json.loads((out / "study.json").read_text())
    dogs = [
        json.loads((out / "a" / f"seed{s}" / "summary.json").read_text())["per_class_accuracy"][
            "dog"
        ]
        for s in (0, 2)
    ]
    dog = study["arms"]["a"]["per_class_accuracy"]["dog"]
    assert (dog["n"], dog["mean"]) == (2, pytest.approx(np.mean(dogs)))
    assert study["arms"]["a"]["no_test_image"] == {"dog": [1]}
    assert study["arms"]["b"]["per_class_accuracy"]["dog"] == {
        "n": 0,
        "mean": None,
        "std": None,
        "ci95": None,
        "clipped": False,
    }
    assert study["arms"]["b"]["no_test_image"] == {"dog": [0, 1, 2]}
    assert study["arms"]["b"]["per_class_accuracy"]["cat"]["n"] == 3

    text = (out / "study.md").read_text()
    assert "- a: dog (seed 1)\n- b: dog (seeds 0, 1, 2)" in text
    figure = per_class_figure(study)
    ax = figure.axes[0]
    assert len(ax.patches) == 5  # a: cat, dog, emu; b: cat, emu
    assert [t.get_text() for t in ax.texts] == ["no test image"]
    assert "1 bar(s) left out: no test image" in ax.get_title()
    assert "4 run(s) without a test image of a class" in ax.get_title()


ACCURACY = st.floats(min_value=0, max_value=1, allow_nan=False, allow_subnormal=False)
BOUNDED = st.lists(ACCURACY, min_size=2, max_size=8)


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(BOUNDED)
def test_an_interval_is_the_t_interval_cut_to_the_range(values):
    raw = describe(values)
    cut = describe(values, (0.0, 1.0))
    assert (cut["n"], cut["mean"], cut["std"]) == (raw["n"], raw["mean"], raw["std"])
    assert cut["ci95"] == [max(raw["ci95"][0], 0.0), min(raw["ci95"][1], 1.0)]
    assert 0.0 <= cut["ci95"][0] <= cut["mean"] <= cut["ci95"][1] <= 1.0
    assert cut["clipped"] == (raw["ci95"][0] < 0 or raw["ci95"][1] > 1)
    assert raw["clipped"] is False


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(st.lists(st.tuples(ACCURACY, ACCURACY), min_size=2, max_size=8))
def test_a_paired_difference_of_accuracies_lies_within_minus_1_and_1(pairs):
    a = {seed: x for seed, (x, _) in enumerate(pairs)}
    b = {seed: y for seed, (_, y) in enumerate(pairs)}
    raw, cut = compare_paired(a, b), compare_paired(a, b, (-1.0, 1.0))
    assert cut["ci95"] == [max(raw["ci95"][0], -1.0), min(raw["ci95"][1], 1.0)]
    assert cut["clipped"] == (raw["ci95"][0] < -1 or raw["ci95"][1] > 1)
    assert (cut["mean_difference"], cut["p_value"]) == (raw["mean_difference"], raw["p_value"])


def test_arms_that_score_other_test_images_are_not_paired_and_study_md_says_why(tmp_path):
    out = tmp_path / "datasets"
    study = made_up_study(
        out,
        {
            "synthetic": {s: {} for s in range(3)},
            "fashion": {s: {"dataset": "fashion-mnist"} for s in range(3)},
            "synthetic2": {s: {} for s in range(3)},
        },
    )
    assert {(p["a"], p["b"]) for p in study["pairs"]} == {("synthetic2", "synthetic")}
    assert study["unpaired"] == [
        {
            "a": "fashion",
            "b": "synthetic",
            "test_sets_differ": "dataset 'fashion-mnist' vs 'synthetic'",
        },
        {
            "a": "synthetic2",
            "b": "fashion",
            "test_sets_differ": "dataset 'synthetic' vs 'fashion-mnist'",
        },
    ]
    text = (out / "study.md").read_text()
    assert (
        "- fashion and synthetic are not compared: they score other test images (dataset "
        "'fashion-mnist' vs 'synthetic'), so their difference would not be the arms' alone."
    ) in text
    assert "| synthetic2 − synthetic |" in text and "fashion −" not in text
    assert json.loads((out / "study.json").read_text())["unpaired"] == study["unpaired"]
