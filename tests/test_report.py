"""cifar/report.py: figures and the results table from real run folders."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from cifar.report import curves_figure, load_run, main, run_labels
from tests.conftest import ROOT, SMOKE, read_json, read_metrics, run_train, train_env

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
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    header, *body = [[cell.strip() for cell in row] for row in rows]
    assert header == [
        "run",
        "model",
        "dataset",
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
        _, model, dataset, accuracy, loss, epochs, wall, rate = rows[run_dir.name]
        assert (model, dataset, int(epochs)) == ("cnn", "synthetic", 2)
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


def test_accuracy_figure_plots_every_epoch_of_every_run(two_runs):
    runs = [load_run(str(d)) for d in two_runs]
    for run, label in zip(runs, run_labels([str(d) for d in two_runs]), strict=True):
        run["label"] = label
    figure = curves_figure(runs, "test_accuracy", "test accuracy")
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["cnn-seed0", "cnn-seed1"]
    for line, run_dir in zip(lines, two_runs, strict=True):
        metrics = read_metrics(run_dir)
        assert list(line.get_xdata()) == [1, 2]
        assert list(line.get_ydata()) == [r["test_accuracy"] for r in metrics]


def test_run_labels_stay_unique_when_folder_names_clash():
    assert run_labels(["runs/a/cnn", "runs/b/cnn"]) == ["a/cnn", "b/cnn"]
    assert run_labels(["runs/x", "runs/y"]) == ["x", "y"]
    assert run_labels(["runs/x", "runs/x"]) == ["x", "x#2"]


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
