"""cifar/predict.py: PNG files written from a finished run's test images are labelled image by
image as the evaluation scores them; files that are not images stop it before any output."""

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torchvision

from tests.helpers import (
    assert_disk_error,
    assert_one_paragraph,
    call_main,
    eval_path_scores,
    fashion_run,
    fashion_test_set,
    folder_hashes,
    full_disk,
    read_json,
    run_module,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return fashion_run(tmp_path_factory)


@pytest.mark.slow
def test_pngs_of_the_test_images_get_the_labels_of_the_evaluation(run_dir, tmp_path):
    test = fashion_test_set()
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(test.images):
        torchvision.io.write_png(image, str(folder / f"{i:05d}.png"))
    before = folder_hashes(run_dir)
    result = run_module("cifar.predict", [run_dir, folder, "--format", "json", "--top-k", "3"])

    rows = json.loads(result.stdout)
    assert [row["path"] for row in rows] == [str(folder / f"{i:05d}.png") for i in range(512)]
    summary = read_json(run_dir / "summary.json")
    classes = summary["classes"]
    predicted = [classes.index(row["predictions"][0]["label"]) for row in rows]
    # The confusion matrix of these labels is the evaluation's, count for count...
    matrix = [[0] * len(classes) for _ in classes]
    for truth, label in zip(test.labels.tolist(), predicted, strict=True):
        matrix[truth][label] += 1
    assert matrix == summary["confusion_matrix"]
    # ...and image by image they are the evaluation's labels, with its probabilities.
    scores = eval_path_scores(run_dir, test.images, tta=True)
    assert predicted == scores.argmax(dim=1).tolist()
    top = scores.topk(3, dim=1)
    for row, values, indices in zip(rows, top.values, top.indices, strict=True):
        assert [p["label"] for p in row["predictions"]] == [classes[i] for i in indices]
        assert [p["probability"] for p in row["predictions"]] == values.tolist()
    assert folder_hashes(run_dir) == before


@pytest.mark.slow
def test_csv_lists_each_file_named_with_its_top_k(run_dir, tmp_path):
    from cifar.predict import main

    test = fashion_test_set()
    paths = []
    for i in (0, 1, 2):
        paths.append(tmp_path / f"image {i}.png")  # a space in a name survives CSV quoting
        torchvision.io.write_png(test.images[i], str(paths[-1]))
    code, out, err = call_main(main, [run_dir, *paths, "--top-k", "2", "--batch-size", "2"])
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "label", "probability", "label_2", "probability_2"]
    assert [row[0] for row in rows[1:]] == [str(p) for p in paths]
    classes = read_json(run_dir / "summary.json")["classes"]
    for row in rows[1:]:
        assert row[1] in classes and row[3] in classes and row[1] != row[3]
        assert 1 >= float(row[2]) >= float(row[4]) >= 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "content", [b"this is not a PNG", "truncated"], ids=["not-an-image", "truncated"]
)
def test_an_image_that_does_not_decode_is_one_paragraph_and_no_output(run_dir, tmp_path, content):
    from cifar.predict import main

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    torchvision.io.write_png(fashion_test_set().images[0], str(good))
    png = good.read_bytes()
    bad.write_bytes(png[: len(png) // 2] if content == "truncated" else content)
    before = folder_hashes(tmp_path)
    code, out, err = call_main(main, [run_dir, good, bad])
    assert_one_paragraph(code, err, f"cannot decode image {bad}", "nothing was printed")
    assert out == "" and folder_hashes(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty-folder", "top-k"])
def test_inputs_that_name_no_image_are_refused(run_dir, tmp_path, case):
    from cifar.predict import main

    (tmp_path / "empty").mkdir()
    args = {
        "missing": [tmp_path / "nowhere.png"],
        "empty-folder": [tmp_path / "empty"],
        "top-k": [tmp_path / "empty", "--top-k", "11"],
    }[case]
    phrase = {
        "missing": "is neither a file nor a folder",
        "empty-folder": "holds no image files",
        "top-k": "--top-k must be in [1, 10]",
    }[case]
    code, out, err = call_main(main, [run_dir, *args])
    assert_one_paragraph(code, err, phrase)
    assert out == ""


def test_a_folder_lists_regular_image_files_only_and_names_what_it_leaves_out(tmp_path, capsys):
    """A FIFO named like an image would block the decoding forever; a dangling link has no image:
    both are left out, named on stderr (stdout is the predictions)."""
    import os

    from cifar.predict import list_images

    folder = tmp_path / "photos"
    folder.mkdir()
    torchvision.io.write_png(fashion_test_set().images[0], str(folder / "good.png"))
    os.mkfifo(folder / "pipe.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    assert list_images([str(folder)]) == [str(folder / "good.png")]
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{folder / 'dangling.png'} (not a regular file)" in err
    assert f"{folder / 'pipe.png'} (not a regular file)" in err


@pytest.mark.slow
@pytest.mark.parametrize("form", ["csv", "json"])
def test_predictions_to_a_full_disk_are_one_paragraph(run_dir, tmp_path, form):
    import subprocess

    from tests.helpers import ROOT, train_env

    image = tmp_path / "good.png"
    torchvision.io.write_png(fashion_test_set().images[0], str(image))
    # stdout on a full disk (/dev/full may not exist)
    with full_disk(tmp_path) as disk, open(disk / "filler", "ab") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "cifar.predict", str(run_dir), str(image), "--format", form],
            cwd=ROOT,
            env=train_env(PYTHONPATH=str(ROOT)),
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert_disk_error(result.returncode, result.stderr, "could not write to stdout", "incomplete")
