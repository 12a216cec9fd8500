"""cifar/report.py: figures and the results table from real run folders."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.colors import to_hex
from matplotlib.image import imread

from cifar.report import (
    confusion_figure,
    curves_figure,
    file_names,
    load_run,
    main,
    per_class_figure,
    run_labels,
    train_vs_test_figure,
)
from cifar.report.cli import name_data_in_legends
from cifar.report.runs import dataset_groups
from tests.helpers import ROOT, SMOKE, read_json, read_metrics, run_train, train_env, write_run

FIGURES = ("accuracy.png", "loss.png", "train_vs_test.png", "per_class_accuracy.png")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished 2-epoch synthetic runs of the CNN that differ only in the seed."""
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in (0, 1):
        run_dir = root / f"cnn-seed{seed}"
        run_train([*SMOKE, "--epochs", "2", "--seed", seed, "--output-dir", run_dir])
        runs.append(run_dir)
    return runs


def table_rows(markdown: str) -> dict:
    """Rows of the results table by run label, as lists of cell texts."""
    lines = [line.strip("|") for line in markdown.splitlines() if line.startswith("| ")]
    rows = [re.split(r"(?<!\\)\|", line) for line in lines]  # an escaped \| is no border
    header, *body = [[cell.strip() for cell in row] for row in rows]
    assert header == [
        "run",
        "model",
        "dataset",
        "train images",
        "test images",
        "test accuracy",
        "final test loss",
        "epochs",
        "wall time",
        "images/s",
    ]
    return {row[0]: row for row in body}


def test_report_writes_every_figure_and_one_table_row_per_run(two_runs, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "cifar.report", *map(str, two_runs), "--out", str(out)],
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    names = [*FIGURES, "confusion-cnn-seed0.png", "confusion-cnn-seed1.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "results.md"])
    for name in names:
        pixels = imread(out / name)
        height, width = pixels.shape[:2]
        assert height >= 400 and width >= 600, (name, pixels.shape)
        colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
        assert len(colours) > 100, f"{name} looks blank: {len(colours)} colours"

    markdown = (out / "results.md").read_text()
    rows = table_rows(markdown)
    assert sorted(rows) == ["cnn-seed0", "cnn-seed1"]
    for run_dir in two_runs:
        summary = read_json(run_dir / "summary.json")
        _, model, dataset, train, test, accuracy, loss, epochs, wall, rate = rows[run_dir.name]
        assert (model, dataset, int(epochs)) == ("cnn", "synthetic", 2)
        assert (train, test) == ("1,024", "256")
        percent = float(accuracy.rstrip("%"))
        assert percent == pytest.approx(100 * summary["test_accuracy"], abs=5e-3)
        assert float(loss) == pytest.approx(summary["test_loss"], abs=5e-5)
        assert float(re.fullmatch(r"([\d.]+) s", wall)[1]) == pytest.approx(
            summary["wall_seconds"], abs=0.05
        )
        assert float(rate.replace(",", "")) == pytest.approx(
            summary["train_images_per_second"], abs=0.5
        )
        assert f"`{run_dir}`" in markdown
    for name in names:
        assert f"]({name})" in markdown
    # Different seeds give different runs, so the two rows cannot both come from one summary.
    assert rows["cnn-seed0"][3:] != rows["cnn-seed1"][3:]


def labelled(run_dirs) -> list[dict]:
    """The runs as the report reads them, each with its label."""
    runs = [load_run(str(d)) for d in run_dirs]
    for run, label in zip(runs, run_labels([str(d) for d in run_dirs]), strict=True):
        run["label"] = label
    return runs


def test_accuracy_figure_plots_every_epoch_of_every_run(two_runs):
    runs = labelled(two_runs)
    figure = curves_figure(runs, "test_accuracy", "test accuracy")
    lines = figure.axes[0].get_lines()
    assert legend_texts(figure) == ["cnn-seed0", "cnn-seed1"]
    for line, run_dir in zip(lines, two_runs, strict=True):
        metrics = read_metrics(run_dir)
        assert list(line.get_xdata()) == [1, 2]
        assert list(line.get_ydata()) == [r["test_accuracy"] for r in metrics]


def legend_texts(figure) -> list[str]:
    (legend,) = figure.legends
    return [text.get_text() for text in legend.get_texts()]


def test_run_labels_stay_unique_when_folder_names_clash():
    assert run_labels(["runs/a/cnn", "runs/b/cnn"]) == ["a/cnn", "b/cnn"]
    assert run_labels(["runs/x", "runs/y"]) == ["x", "y"]
    assert run_labels(["runs/x", "runs/x"]) == ["x", "x#2"]
    assert run_labels(["runs/x", "runs/x", "runs/x#2"]) == ["x", "x#2", "x#2#2"]


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert message.startswith(f"error: {empty} is not a run folder: it has no metrics.jsonl")
    assert "python -m cifar.report" in message and message.count("\n") == 1
    assert not (tmp_path / "out").exists()

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert main([str(unfinished)]) == 2
    message = capsys.readouterr().err
    assert "holds an unfinished run" in message and "--resume auto" in message

    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def replace_key(path, key, value):
    data = read_json(path)
    data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "name, damage, says",
    [
        ("summary.json", lambda p: "{", "summary.json cannot be read as JSON"),
        ("summary.json", lambda p: "[1]", "summary.json is not a run record as train.py writes"),
        ("summary.json", lambda p: replace_key(p, "test_loss", "low"), "test_loss is not a number"),
        ("summary.json", lambda p: replace_key(p, "test_loss", 1e999), "test_loss is not a number"),
        ("summary.json", lambda p: replace_key(p, "model", None), "its model is not text"),
        ("summary.json", lambda p: replace_key(p, "confusion_matrix", [[1]]), "do not agree"),
        ("summary.json", lambda p: replace_key(p, "format_version", 99), "newer cifar-accelerate"),
        ("config.json", lambda p: "[]", "config.json is not a run record"),
        ("metrics.jsonl", lambda p: "[1, 2]\n", "epoch record 1: expected an object"),
        ("metrics.jsonl", lambda p: '{"epoch": 1}\n', "epoch record 1 lacks train_loss"),
        ("metrics.jsonl", lambda p: "", "metrics.jsonl holds no epoch"),
    ],
)
def test_damaged_run_files_are_one_paragraph_and_no_report(
    two_runs, tmp_path, capsys, name, damage, says
):
    run_dir = tmp_path / "run"
    shutil.copytree(two_runs[0], run_dir)
    (run_dir / name).write_text(damage(run_dir / name))
    assert main([str(run_dir), "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert message.startswith(f"error: {run_dir}") and says in message, message
    assert message.count("\n") == 1 and not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(two_runs, tmp_path, capsys):
    out = tmp_path / "report.md"
    out.write_text("mine")
    assert main([str(two_runs[0]), "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert (
        message
        == f"error: --out {out} is a file. Pass a folder for the report, e.g. --out report.\n"
    )
    assert out.read_text() == "mine"


EXAMPLES = int(os.environ.get("CIFAR_HYPOTHESIS_EXAMPLES", "30"))
# Folder names as a file system allows them: anything but "/" and NUL, not "." or "..".
FOLDER_NAME = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=24,
).filter(lambda name: name not in (".", ".."))


def linked_files(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def assert_every_run_has_its_own_confusion_figure(out: Path, count: int) -> None:
    """results.md links count distinct confusion figures, each a file of out, no file unlinked."""
    links = linked_files((out / "results.md").read_text())
    confusions = [name for name in links if name.startswith("confusion-")]
    assert len(confusions) == len(set(confusions)) == count, confusions
    on_disk = sorted(p.name for p in out.iterdir() if p.name.startswith("confusion-"))
    assert on_disk == sorted(confusions)
    assert len({name.lower() for name in on_disk}) == count  # case-insensitive file systems too
    for name in links:
        assert imread(out / name).shape[0] > 100


@pytest.mark.fast
def test_folder_names_that_clash_once_cleaned_get_figures_of_their_own(tmp_path):
    names = [
        "exp α",
        "exp β",
        "Run",
        "run",
        "a b",
        "a_b",
        "cost $\\frac$ 5",  # mathtext that does not parse
        "_hidden",  # matplotlib leaves labels starting with "_" out of legends
        "line\nbreak | pipe",
        os.fsdecode(b"not-utf8-\xff"),
    ]
    runs = [write_run(tmp_path / "runs" / name, seed=i) for i, name in enumerate(names)]
    out = tmp_path / "report"
    assert main([*map(str, runs), "--out", str(out)]) == 0
    assert_every_run_has_its_own_confusion_figure(out, len(names))
    # The two Greek runs' figures differ: each shows its own run, not the last one drawn.
    figures = {name: imread(out / name) for name in ("confusion-exp.png", "confusion-exp-2.png")}
    assert not np.array_equal(*figures.values())
    rows = table_rows((out / "results.md").read_text())
    assert "line?break \\| pipe" in rows and "not-utf8-\ufffd" in rows and len(rows) == 10
    legend = legend_texts(curves_figure(labelled(runs), "test_accuracy", "test accuracy"))
    assert legend[names.index("_hidden")] == "_hidden"
    assert legend[names.index("cost $\\frac$ 5")] == "cost \\$\\frac\\$ 5"  # drawn as written


@settings(max_examples=min(EXAMPLES, 12), deadline=None)
@given(st.lists(FOLDER_NAME, min_size=1, max_size=4, unique=True))
def test_any_folder_names_give_one_linked_figure_per_run(tmp_path_factory, names):
    root = tmp_path_factory.mktemp("names")
    runs = [
        write_run(root / name, seed=i, epochs=1, classes=("a", "b")) for i, name in enumerate(names)
    ]
    out = root / "report"
    assert main([*map(str, runs), "--out", str(out)]) == 0
    assert_every_run_has_its_own_confusion_figure(out, len(names))


@settings(max_examples=EXAMPLES * 10, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=12))
def test_file_names_are_unique_safe_and_short_for_any_labels(labels):
    names = file_names(labels, "confusion-", ".png")
    assert len(names) == len({name.lower() for name in names}) == len(labels)
    for name in names:
        assert re.fullmatch(r"confusion-[A-Za-z0-9._-]+\.png", name), name
        assert len(name) < 120


def bar_heights(figure) -> list[float]:
    return [patch.get_height() for patch in figure.axes[0].patches]


def texts(figure) -> list[str]:
    return [text.get_text() for ax in figure.axes for text in ax.texts]


@pytest.mark.fast
def test_a_class_without_test_image_has_no_bar_and_the_report_says_so(tmp_path):
    # --test-subset 6 left "dog" without a test image; the older run wrote 0.0 for it.
    null = write_run(tmp_path / "null", tested=[5, 0, 1], test_subset=6)
    zero = write_run(tmp_path / "zero", seed=1, tested=[5, 0, 1], zero_for_untested=True)
    assert read_json(null / "summary.json")["per_class_accuracy"]["dog"] is None
    assert read_json(zero / "summary.json")["per_class_accuracy"]["dog"] == 0.0
    out = tmp_path / "report"
    assert main([str(null), str(zero), "--out", str(out)]) == 0

    figure = per_class_figure(labelled([null, zero]))
    # cat and emu of each run: four bars, none for dog; a bar of 0 is a measured 0%.
    heights = bar_heights(figure)
    assert len(heights) == 4
    zeros = ["0%"] * heights.count(0)
    assert zeros, "the made-up runs should hold a class they got all wrong"
    assert sorted(texts(figure)) == [*zeros, "no test image", "no test image"]
    assert "no test image" in figure.axes[0].get_title()
    markdown = (out / "results.md").read_text()
    assert "- null: no test image of dog (--test-subset 6): no accuracy for it" in markdown
    assert "- zero: no test image of dog: no accuracy for it" in markdown
    assert table_rows(markdown)["null"][4] == "6 (subset)"
    confusion = confusion_figure(read_json(null / "summary.json"), "null")
    assert [t.get_text() for t in confusion.axes[0].get_yticklabels()][1] == "dog (no test image)"


def section(markdown: str, title: str) -> str:
    """The text of results.md's section "## title", up to the next section."""
    return markdown.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def drawn(figure):
    """figure after it was saved as the report saves it (its layout is made then)."""
    figure.savefig(io.BytesIO(), format="png")
    return figure


@pytest.mark.fast
def test_a_one_epoch_run_is_a_point_at_epoch_1_and_train_differs_from_test(tmp_path):
    runs = labelled([write_run(tmp_path / "short", epochs=1)])
    for figure in (
        curves_figure(runs, "test_accuracy", "test accuracy"),
        train_vs_test_figure(runs),
    ):
        for ax in drawn(figure).axes:
            low, high = ax.get_xlim()
            assert low <= 0.6 and high >= 1.4, (low, high)  # not 0.945 to 1.050
            assert [tick for tick in ax.get_xticks() if low <= tick <= high] == [1]
    accuracy, loss = train_vs_test_figure(runs).axes
    for ax in (accuracy, loss):
        train, test = ax.get_lines()
        assert (train.get_marker(), train.get_linestyle()) == ("s", "--")
        assert (test.get_marker(), test.get_linestyle()) == ("o", "-")
        assert train.get_markerfacecolor() == "none" != test.get_markerfacecolor()
    assert legend_texts(train_vs_test_figure(runs)) == ["train", "test", "short"]


@pytest.mark.fast
def test_runs_of_two_datasets_get_a_section_and_figures_each(tmp_path):
    fashion = [f"f{i}" for i in range(10)]
    runs = [
        write_run(tmp_path / "syn", epochs=3),
        write_run(tmp_path / "fm", epochs=3, dataset="fashion-mnist", classes=fashion),
        write_run(tmp_path / "syn2", seed=2, epochs=3),
    ]
    out = tmp_path / "report"
    assert main([*map(str, runs), "--out", str(out)]) == 0
    markdown = (out / "results.md").read_text()
    assert (
        "These runs use 2 datasets (synthetic (3 classes), fashion-mnist (10 classes))" in markdown
    )
    synthetic, fm = markdown.split("## synthetic (3 classes)")[1].split(
        "## fashion-mnist (10 classes)"
    )
    assert sorted(table_rows(synthetic)) == ["syn", "syn2"] and sorted(table_rows(fm)) == ["fm"]
    for kind in ("accuracy", "loss", "train_vs_test", "per_class_accuracy"):
        assert f"]({kind}-synthetic.png)" in synthetic and f"]({kind}-fashion-mnist.png)" in fm
        assert not (out / f"{kind}.png").exists()
    assert_every_run_has_its_own_confusion_figure(out, 3)
    # The per-class figure of each dataset has that dataset's classes only.
    groups = dataset_groups(labelled(runs))
    assert [[run["label"] for run in group["runs"]] for group in groups] == [
        ["syn", "syn2"],
        ["fm"],
    ]
    for group, classes in zip(groups, (["cat", "dog", "emu"], fashion), strict=True):
        axes = per_class_figure(group["runs"]).axes[0]
        assert [t.get_text() for t in axes.get_xticklabels()] == classes


@pytest.mark.fast
def test_the_report_says_when_the_runs_of_a_table_were_scored_differently(tmp_path):
    """An EMA of the weights or test-time flips change the test figures: a table of runs
    scored in different ways says so (a run from before these fields: trained, none)."""
    runs = [
        write_run(tmp_path / "plain"),
        write_run(tmp_path / "flips", seed=1, summary={"test_time_augmentation": "flip"}),
        write_run(
            tmp_path / "ema",
            seed=2,
            summary={"scored_weights": "ema 0.998", "test_time_augmentation": "none"},
        ),
    ]
    out = tmp_path / "report"
    assert main([*map(str, runs), "--out", str(out)]) == 0
    markdown = (out / "results.md").read_text()
    assert (
        "- These runs differ in what was scored (plain: weights trained, test-time "
        "augmentation none; flips: weights trained, test-time augmentation flip; ema: weights "
        "ema 0.998, test-time augmentation none): their test figures come from different "
        "evaluations."
    ) in markdown
    same = [write_run(tmp_path / "a"), write_run(tmp_path / "b", seed=1)]
    assert main([*map(str, same), "--out", str(tmp_path / "same")]) == 0
    assert "what was scored" not in (tmp_path / "same" / "results.md").read_text()


def test_the_report_names_the_images_each_run_trained_and_was_tested_on(tmp_path):
    runs = [
        write_run(tmp_path / "all", dataset="fashion-mnist"),
        write_run(tmp_path / "5k", seed=1, dataset="fashion-mnist", train_subset=5000),
        write_run(
            tmp_path / "small", seed=2, dataset="fashion-mnist", tested=[2, 2, 2], test_subset=6
        ),
        write_run(tmp_path / "syn", seed=3, train_subset=500),
    ]
    out = tmp_path / "report"
    assert main([*map(str, runs), "--out", str(out)]) == 0
    markdown = (out / "results.md").read_text()
    rows = table_rows(section(markdown, "fashion-mnist (3 classes)"))
    assert {name: row[3:5] for name, row in rows.items()} == {
        "all": ["all", "60"],
        "5k": ["first 5,000", "60"],
        "small": ["all", "6 (subset)"],
    }
    assert table_rows(section(markdown, "synthetic (3 classes)"))["syn"][3] == "500 (subset)"
    assert (
        "- These runs differ in their train images (all: all; 5k: first 5,000; small: all): "
        "their accuracies come from different training sets."
    ) in markdown
    fashion = dataset_groups(labelled(runs[:3]))[0]["runs"]
    name_data_in_legends(fashion)
    assert legend_texts(curves_figure(fashion, "test_accuracy", "test accuracy")) == [
        "all, train all, test 60",
        "5k, train first 5,000, test 60",
        "small, train all, test 6 (subset)",
    ]


@pytest.mark.fast
def test_fifty_runs_have_fifty_colours_and_a_legend_beside_the_axes(tmp_path):
    runs = labelled(
        [
            write_run(tmp_path / f"width{w}-seed{s}", seed=10 * w + s, epochs=4)
            for w in range(10)
            for s in range(5)
        ]
    )
    for figure in (
        curves_figure(runs, "test_accuracy", "test accuracy"),
        train_vs_test_figure(runs),
    ):
        drawn(figure)
        (legend,) = figure.legends
        box, page = legend.get_window_extent(), figure.bbox
        for ax in figure.axes:
            assert box.x0 >= ax.get_window_extent().x1  # beside the axes, over no line
            assert not box.overlaps(ax.title.get_window_extent())
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
        assert len(legend.get_texts()) >= 50
        colours = {to_hex(line.get_color()) for line in figure.axes[0].get_lines()}
        assert len(colours) == 50
    heatmap = per_class_figure(runs)
    (ax, _) = heatmap.axes  # a heatmap and its colour bar, not 150 bars
    assert [t.get_text() for t in ax.get_yticklabels()] == [run["label"] for run in runs]
    assert ax.images[0].get_array().shape == (50, 3)
