"""cifar/evaluate.py: a finished Fashion-MNIST run scored again, on 1 and 2 processes, gives its
summary.json's numbers to the last bit; every bad input is one paragraph and exit 2 that
changes no file.

The run (real data: 2,000 training and 512 test images, one epoch) is trained once per session
and shared by tests/test_predict.py and tests/test_export.py.
"""

from pathlib import Path

import pytest

from tests.helpers import (
    FASHION_DIR,
    TEST_IMAGES,
    assert_disk_error,
    assert_one_paragraph,
    call_main,
    copy_of,
    damage,
    devices_for,
    fashion_run,
    folder_hashes,
    full_disk,
    read_json,
    run_module,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return fashion_run(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, processes", [("python", 1), ("torchrun", 2), ("accelerate", 1)], ids=str
)
def test_evaluate_reproduces_the_summary_to_the_last_bit(run_dir, tmp_path, kind, processes):
    before = folder_hashes(run_dir)
    out = tmp_path / "eval.json"
    result = run_module("cifar.evaluate", [run_dir, "--out", out], kind=kind, processes=processes,
                        env=devices_for(2))  # fmt: skip

    summary, scored = read_json(run_dir / "summary.json"), read_json(out)
    assert scored["world_size"] == processes
    assert scored["num_test_samples"] == summary["num_test_samples"] == TEST_IMAGES
    for key in ("test_accuracy", "test_loss", "confusion_matrix", "per_class_accuracy", "classes"):
        assert scored[key] == summary[key], key  # exact: the same weights, images and batches
    assert f"accuracy {summary['test_accuracy']:.4%}  loss {summary['test_loss']:.6f}" in (
        result.stdout
    )
    assert "per-class accuracy: T-shirt/top " in result.stdout
    assert folder_hashes(run_dir) == before


@pytest.mark.slow
def test_shards_that_split_a_batch_count_every_image_once_and_agree_to_rounding(run_dir, tmp_path):
    """500 images on 2 processes: shards of 250 batch otherwise than 1 process does, so the
    float32 loss sums of the batches differ in rounding; the counts are exact."""
    scored = []
    for kind, processes in (("python", 1), ("torchrun", 2)):
        out = tmp_path / f"eval-{processes}.json"
        run_module("cifar.evaluate", [run_dir, "--test-subset", 500, "--out", out],
                   kind=kind, processes=processes, env=devices_for(2))  # fmt: skip
        scored.append(read_json(out))
    one, two = scored
    assert one["num_test_samples"] == two["num_test_samples"] == 500
    assert sum(map(sum, two["confusion_matrix"])) == 500
    assert one["confusion_matrix"] == two["confusion_matrix"]
    assert one["test_accuracy"] == two["test_accuracy"]
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-6)


BAD_RUNS = {
    "not-finished": (lambda d: (d / "summary.json").unlink(), "is not finished"),
    "not-ours": (lambda d: (d / "run.lock").unlink(), "is not a run folder made by train.py"),
    "corrupt-model": (lambda d: damage(d / "model.safetensors"), "cannot be loaded"),
    "no-portable-model": (lambda d: (d / "model.json").unlink(), "python -m cifar.export"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_a_bad_run_folder_is_one_paragraph_and_changes_nothing(run_dir, tmp_path, case):
    from cifar.evaluate import main

    edit, phrase = BAD_RUNS[case]
    bad = copy_of(run_dir, tmp_path, edit)
    before = folder_hashes(bad)
    code, out, err = call_main(main, [bad, "--out", tmp_path / "eval.json"])
    assert_one_paragraph(code, err, phrase, str(bad))
    assert folder_hashes(bad) == before and not (tmp_path / "eval.json").exists()


@pytest.mark.slow
def test_a_test_set_with_other_classes_is_refused_naming_the_difference(run_dir, tmp_path):
    from cifar.evaluate import main

    before = folder_hashes(run_dir)
    code, _, err = call_main(main, [run_dir, "--dataset", "synthetic", "--out", tmp_path / "e"])
    assert_one_paragraph(code, err, "has other classes", "'T-shirt/top' vs 'pattern0'")
    assert folder_hashes(run_dir) == before and not (tmp_path / "e").exists()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["summary.json", "checkpoints/eval.json", "."])
def test_out_never_replaces_the_runs_own_records(run_dir, target):
    from cifar.evaluate import main

    before = folder_hashes(run_dir)
    code, _, err = call_main(main, [run_dir, "--out", run_dir / target])
    assert_one_paragraph(code, err, "of the run's own records")
    assert folder_hashes(run_dir) == before


@pytest.mark.slow
def test_out_may_be_a_new_file_in_the_run_folder_and_nothing_else_changes(run_dir):
    from cifar.evaluate import main

    before = folder_hashes(run_dir)
    out = run_dir / "eval-again.json"
    try:
        code, _, err = call_main(main, [run_dir, "--out", out])
        assert code == 0, err
        assert (
            read_json(out)["test_accuracy"] == read_json(run_dir / "summary.json")["test_accuracy"]
        )
    finally:
        out.unlink(missing_ok=True)
    assert folder_hashes(run_dir) == before


@pytest.mark.fast
@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--test-subset", "-1"], "--test-subset must be in"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_flags_out_of_range_are_refused_before_anything_is_read(tmp_path, flags, phrase):
    from cifar.config import Config
    from cifar.errors import UserError
    from cifar.evaluate import parse_args, test_config
    from cifar.trained import FinishedRun

    run = FinishedRun(str(tmp_path), Config(), {}, {"classes": []})
    with pytest.raises(UserError, match=phrase):
        test_config(run, parse_args([str(tmp_path), *flags]))


@pytest.mark.fast
def test_another_dataset_defaults_to_all_its_test_images_in_the_default_folder(tmp_path):
    from cifar.config import Config
    from cifar.evaluate import parse_args, test_config
    from cifar.trained import FinishedRun

    trained = Config(dataset="fashion-mnist", data_dir=FASHION_DIR, test_subset=512)
    run = FinishedRun(str(tmp_path), trained, {}, {"classes": []})
    own = test_config(run, parse_args([str(tmp_path)]))
    other = test_config(run, parse_args([str(tmp_path), "--dataset", "cifar10"]))
    assert (own.dataset, own.data_dir, own.test_subset) == ("fashion-mnist", FASHION_DIR, 512)
    assert (other.dataset, other.data_dir, other.test_subset) == ("cifar10", "data", 0)


@pytest.mark.slow
def test_out_on_a_full_disk_is_one_paragraph_and_leaves_nothing_behind(run_dir, tmp_path):
    before = folder_hashes(run_dir)
    with full_disk(tmp_path) as disk:
        out = disk / "eval.json"
        result = run_module("cifar.evaluate", [run_dir, "--out", out], check=False)
        left = sorted(p.name for p in disk.iterdir())
    assert_disk_error(result.returncode, result.stderr, f"could not write {out}", "MiB free")
    assert left == ["filler"]
    assert folder_hashes(run_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_out_that_is_not_a_regular_file_is_refused_and_left_as_it_is(run_dir, tmp_path, kind):
    """--out /dev/stdout (a link, to a regular file when stdout goes to one), a FIFO, a device:
    the atomic rename would replace it by a plain file, as root even /dev's own nodes."""
    import os
    import stat

    from cifar.evaluate import main

    out = tmp_path / "results.json"
    if kind == "fifo":
        os.mkfifo(out)
    else:
        (tmp_path / "log.txt").write_text("the terminal's log\n")
        out.symlink_to(tmp_path / "log.txt")
    before = folder_hashes(run_dir)
    code, printed, err = call_main(main, [run_dir, "--out", out])
    assert_one_paragraph(code, err, f"--out {out} is not a regular file", "Name a file")
    mode = os.lstat(out).st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISLNK(mode)
    assert printed == "" and folder_hashes(run_dir) == before
