"""cifar/engine.py and cifar/evaluation.py: what the loop records about each epoch and the run."""

import shutil

import pytest

from tests.helpers import folder_hashes, read_json, read_metrics, run_train, tiny_run

SMALL = tiny_run("--width", "8", "--head-hidden", "32", train=256, test=64)  # 4 steps an epoch


def test_a_class_without_a_test_image_has_no_accuracy_not_zero(tmp_path):
    run_train([*SMALL, "--test-subset", "6", "--output-dir", tmp_path / "run"])
    summary = read_json(tmp_path / "run" / "summary.json")
    tested = {
        name: sum(row)
        for name, row in zip(summary["classes"], summary["confusion_matrix"], strict=True)
    }
    assert sum(tested.values()) == 6 and 0 in tested.values()  # 10 classes, 6 images
    for name, count in tested.items():
        accuracy = summary["per_class_accuracy"][name]
        assert (accuracy is None) == (count == 0), (name, count, accuracy)


def test_a_resumed_epoch_reports_the_time_and_rate_of_the_whole_epoch(tmp_path):
    """A run stopped inside epoch 2 (here: a checkpoint kept from step 6 of 8, the state a stop
    there leaves) and resumed: epoch 2's time covers both parts, and its rate is the epoch's
    images over that time, not the tail's images alone."""
    full = tmp_path / "full"
    run_train([*SMALL, "--epochs", "2", "--checkpoint-every", "6", "--keep-checkpoints", "3",
               "--output-dir", full])  # fmt: skip
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for name in ("summary.json", "metrics.jsonl"):
        (resumed / name).unlink()
    for step in ("step-000000008",):
        shutil.rmtree(resumed / "checkpoints" / step)
    before = read_json(resumed / "checkpoints" / "step-000000006" / "progress.json")["partial"]
    assert before["seen"] == 128 and before["seconds"] > 0  # 2 of epoch 2's 4 steps
    run_train([*SMALL, "--epochs", "2", "--output-dir", resumed, "--resume", "auto"])
    epoch = read_metrics(resumed)[1]
    assert epoch["epoch_seconds"] > before["seconds"]
    images = epoch["train_images_per_second"] * epoch["epoch_seconds"]
    assert images == pytest.approx(256, rel=1e-9)  # the whole epoch's images
    summary = read_json(resumed / "summary.json")
    rates = [r["train_images_per_second"] for r in read_metrics(resumed)]
    assert summary["train_images_per_second"] == pytest.approx(sum(rates) / 2)


def test_a_finished_run_whose_metrics_jsonl_was_deleted_gets_it_back_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*SMALL, "--epochs", "2", "--output-dir", run_dir])
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    (run_dir / "metrics.jsonl").unlink()
    before = folder_hashes(run_dir)
    result = run_train([*SMALL, "--epochs", "2", "--output-dir", run_dir, "--resume", "auto"])
    assert "metrics.jsonl was missing and was written again from the checkpoint" in result.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    after = folder_hashes(run_dir)
    assert after.pop("metrics.jsonl") and after == before  # nothing else changed
    report = run_train([*SMALL, "--epochs", "2", "--output-dir", run_dir, "--resume", "auto"])
    assert "nothing to do, no file changed" in report.stderr


def test_config_json_records_the_process_settings_the_run_applied(tmp_path):
    run_train([*SMALL, "--output-dir", tmp_path / "run", "--deterministic"])
    applied = read_json(tmp_path / "run" / "config.json")["process_settings"]
    assert applied["stop_with_launcher"] is False  # plain python: no launcher to outlive
    assert applied["deterministic_algorithms"] is True
    assert applied["cublas_workspace_config"] == ":4096:8"
    assert isinstance(applied["malloc_reuses_freed_memory"], bool)  # True with glibc, on a CPU
