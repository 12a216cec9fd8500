"""train.py end to end, as users run it: real data, real launchers, the run folder read back."""

import json
import os

import pytest

from cifar.data.tensors import FASHION_FILES
from cifar.record import FORMAT_KEY, FORMAT_VERSION, METRIC_KEYS, SUMMARY_KEYS
from tests.helpers import (
    FASHION_DIR,
    SMOKE,
    make_image_folders,
    read_json,
    read_metrics,
    require,
    run_train,
    tiny_run,
)


def test_synthetic_run_learns_and_writes_the_run_folder(tmp_path):
    result = run_train([*SMOKE, "--epochs", "2", "--output-dir", tmp_path])
    assert "epoch 2/2" in result.stdout
    config = read_json(tmp_path / "config.json")
    assert config["model"] == "cnn" and config["world_size"] == 1 and config["epochs"] == 2
    metrics = read_metrics(tmp_path)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(list(m) == [FORMAT_KEY, *METRIC_KEYS] for m in metrics)
    assert all(m[FORMAT_KEY] == FORMAT_VERSION for m in metrics)
    summary = read_json(tmp_path / "summary.json")
    assert list(summary) == [FORMAT_KEY, *SUMMARY_KEYS]  # the contract, in order
    assert summary["test_accuracy"] >= 0.9
    assert summary["test_accuracy"] == metrics[-1]["test_accuracy"]
    assert summary["num_test_samples"] == 256
    assert len(summary["per_class_accuracy"]) == 10
    assert os.listdir(tmp_path / "checkpoints")


def test_fashion_mnist_one_epoch_on_20000_images_reaches_85_percent(tmp_path):
    require(
        all(os.path.exists(f"{FASHION_DIR}/{f}.gz") for f in FASHION_FILES),
        "apt-get install dataset-fashion-mnist",
    )
    run_train(
        [
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            FASHION_DIR,
            "--train-subset",
            "20000",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--tracker",
            "none",
            "--output-dir",
            tmp_path / "run",
        ],
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["num_test_samples"] == 10_000
    assert summary["test_accuracy"] >= 0.85, summary["test_accuracy"]


def test_accelerate_launch_end_to_end(tmp_path):
    result = run_train([*SMOKE, "--output-dir", tmp_path], kind="accelerate")
    assert read_json(tmp_path / "summary.json")["test_accuracy"] > 0.5, result.stdout


def test_config_file_and_flag_precedence_end_to_end(tmp_path):
    (tmp_path / "run.yaml").write_text("epochs: 3\nseed: 4\nbatch-size: 32\n")
    run_train(
        [
            *SMOKE,
            "--config",
            tmp_path / "run.yaml",
            "--output-dir",
            tmp_path / "run",
            "--batch-size",
            "128",
        ]
    )
    config = read_json(tmp_path / "run" / "config.json")
    assert (config["epochs"], config["seed"], config["batch_size"]) == (1, 4, 128)


def test_resnet50_transfer_trains_end_to_end_with_and_without_cached_features(tmp_path):
    resnet = ["--model", "resnet50", "--no-pretrained", "--image-size", "32"]
    tiny = tiny_run(*resnet, "--augment", "none", "--lr", "0.01", train=256, test=64, batch=32)
    run_train([*tiny, "--output-dir", tmp_path / "plain"])
    run_train([*tiny, "--cache-features", "--output-dir", tmp_path / "cached"])
    plain, cached = (read_json(tmp_path / d / "summary.json") for d in ("plain", "cached"))
    assert plain["num_test_samples"] == cached["num_test_samples"] == 64
    # Same frozen features, same head initialisation and batches: the same training.
    assert plain["test_accuracy"] == pytest.approx(cached["test_accuracy"], abs=1 / 64)
    assert plain["test_loss"] == pytest.approx(cached["test_loss"], rel=1e-3)


def test_image_folder_end_to_end(tmp_path):
    make_image_folders(tmp_path / "images", per_class=16)
    run_train(
        [
            "--dataset",
            "imagefolder",
            "--data-dir",
            tmp_path / "images",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--tracker",
            "none",
            "--output-dir",
            tmp_path / "run",
        ]
    )
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["classes"] == ["blue", "red"] and summary["num_test_samples"] == 32
    assert summary["test_accuracy"] == 1.0  # a red or blue image is not hard


def test_main_job_offline_stops_with_the_dataset_message_only(tmp_path):
    result = run_train(
        ["--tracker", "none", "--data-dir", tmp_path / "data", "--output-dir", tmp_path / "run"],
        kind="accelerate",
        check=False,
    )
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert "CIFAR-10 is not in" in message and "--dataset synthetic" in message
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_prepare_only_readies_data_without_training(tmp_path):
    result = run_train([*SMOKE, "--prepare-only", "--output-dir", tmp_path / "run"])
    assert "dataset synthetic ready" in result.stdout
    assert not (tmp_path / "run").exists()
    json.dumps(result.stdout)
