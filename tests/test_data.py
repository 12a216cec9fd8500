"""cifar/data/__init__.py and tensors.py: the registry, and the sets held in memory, read from
files in their real formats through torchvision's own classes."""

import gzip
import hashlib
import json
import os
import pickle
import re

import numpy as np
import pytest
import scipy.io
import torch
import torchvision

from cifar.config import Config, build_parser, parse_config
from cifar.data import DATASETS, REGISTRY, build_datasets, dataset_spec
from cifar.data.tensors import FASHION_FILES, make_synthetic
from cifar.errors import UserError
from tests.helpers import FASHION_DIR, require, tiny_run, train_in_process


def test_the_dataset_flag_its_defaults_and_messages_come_from_the_registry():
    assert tuple(REGISTRY) == DATASETS
    dataset_flag = next(a for a in build_parser()._actions if a.dest == "dataset")
    assert tuple(dataset_flag.choices) == DATASETS
    for name, spec in REGISTRY.items():
        assert parse_config(["--dataset", name]).augment == spec.augment
    with pytest.raises(UserError) as error:
        parse_config(["--dataset", "imagefolder", "--cache-features", "--augment", "none"])
    in_memory = ", ".join(n for n in DATASETS if not dataset_spec(n).file_backed)
    assert f"held in memory ({in_memory}), not with --dataset imagefolder" in str(error.value)


def test_synthetic_set_is_deterministic_from_the_seed_and_sized_by_flags():
    config = Config(dataset="synthetic", synthetic_train_size=300, synthetic_test_size=50)
    train, test = build_datasets(config)
    again, _ = build_datasets(config)
    other, _ = build_datasets(Config(dataset="synthetic", seed=1, synthetic_train_size=300))
    assert train.images.shape == (300, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(test) == 50 and len(train.classes) == 10
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert not torch.equal(train.images, other.images)


def test_subsets_take_the_first_images():
    full, _ = build_datasets(Config(dataset="synthetic", synthetic_train_size=300))
    cut, test = build_datasets(
        Config(dataset="synthetic", synthetic_train_size=300, train_subset=100, test_subset=7)
    )
    assert torch.equal(cut.images, full.images[:100]) and len(test) == 7


def write_idx(folder, compress):
    """A tiny Fashion-MNIST in IDX format, as Debian's package lays it out."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", 40), ("t10k", 12)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        files = {
            f"{name}-images-idx3-ubyte": b"\x00\x00\x08\x03"
            + np.array([count, 28, 28], ">i4").tobytes()
            + images.tobytes(),
            f"{name}-labels-idx1-ubyte": b"\x00\x00\x08\x01"
            + np.array([count], ">i4").tobytes()
            + labels.tobytes(),
        }
        for filename, data in files.items():
            opener = gzip.open if compress else open
            with opener(os.path.join(folder, filename + (".gz" if compress else "")), "wb") as f:
                f.write(data)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path, monkeypatch, compress):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    test_images, test_labels = write_idx(tmp_path / "idx", compress)
    train, test = build_datasets(Config(dataset="fashion-mnist", data_dir=str(tmp_path / "idx")))
    assert train.images.shape == (40, 3, 32, 32) and len(test) == 12
    assert torch.equal(test.images[:, 1, 2:30, 2:30], torch.from_numpy(test_images))
    assert torch.equal(test.labels, torch.from_numpy(test_labels).long())
    assert test.images[:, :, :2].sum() == 0  # zero padding to 32 x 32
    if compress:  # unpacked into the cache: the four files, nothing half-written beside them
        (unpacked,) = (tmp_path / "cache" / "cifar-accelerate" / "fashion-mnist").iterdir()
        assert sorted(os.listdir(unpacked / "FashionMNIST" / "raw")) == sorted(FASHION_FILES)


def test_a_torn_fashion_mnist_archive_leaves_no_unpacked_file_to_trust(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_idx(tmp_path / "idx", compress=True)
    archive = tmp_path / "idx" / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-40])  # a copy cut short
    with pytest.raises(UserError, match=re.escape(f"cannot unpack {archive} (EOFError")):
        build_datasets(Config(dataset="fashion-mnist", data_dir=str(tmp_path / "idx")))
    (unpacked,) = (tmp_path / "cache" / "cifar-accelerate" / "fashion-mnist").iterdir()
    assert os.listdir(unpacked / "FashionMNIST" / "raw") == []  # the next run unpacks again


def test_fashion_mnist_in_torchvision_layout(tmp_path):
    write_idx(tmp_path / "root" / "FashionMNIST" / "raw", compress=False)
    train, _ = build_datasets(Config(dataset="fashion-mnist", data_dir=str(tmp_path / "root")))
    assert len(train) == 40 and train.classes[0] == "T-shirt/top"


def test_debian_fashion_mnist_package_loads(tmp_path, monkeypatch):
    require(
        all(os.path.exists(f"{FASHION_DIR}/{f}.gz") for f in FASHION_FILES),
        "apt-get install dataset-fashion-mnist",
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    train, test = build_datasets(Config(dataset="fashion-mnist", data_dir=FASHION_DIR))
    assert (len(train), len(test)) == (60_000, 10_000)
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def learnable(n_train: int, n_test: int, seed: int = 0):
    """Images a small model learns in one epoch (the synthetic set's), to write as files."""
    config = Config(synthetic_train_size=n_train, synthetic_test_size=n_test, seed=seed)
    return make_synthetic(config)


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


CIFAR_LAYOUT = {  # class -> (folder, train files, test file, meta file, meta key, label key)
    "CIFAR10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_2"], "test_batch",
                "batches.meta", "label_names", "labels"),
    "CIFAR100": ("cifar-100-python", ["train"], "test", "meta", "fine_label_names",
                 "fine_labels"),
}  # fmt: skip


def write_cifar(root, monkeypatch, name: str, train, test, classes: list) -> None:
    """CIFAR's python version as torchvision reads it: pickled dicts of N x 3072 uint8 rows (the
    red, green and blue planes) and labels, and a meta file of class names; the class's md5
    tables are pointed at these files."""
    cls = getattr(torchvision.datasets, name)
    folder, train_files, test_file, meta_file, meta_key, label_key = CIFAR_LAYOUT[name]
    (root / folder).mkdir(parents=True)

    def write(filename, content):
        path = root / folder / filename
        path.write_bytes(pickle.dumps(content, protocol=2))
        return [filename, md5(path)]

    def batch(images, labels):
        rows = images.reshape(len(images), 3 * 32 * 32).numpy()
        return {"data": rows, label_key: labels.tolist(), "coarse_labels": [0] * len(labels)}

    parts = np.array_split(np.arange(len(train)), len(train_files))
    train_list = [
        write(f, batch(train.images[p], train.labels[p]))
        for f, p in zip(train_files, parts, strict=True)
    ]
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", [write(test_file, batch(test.images, test.labels))])
    _, meta_md5 = write(meta_file, {meta_key: classes})
    monkeypatch.setattr(cls, "meta", {"filename": meta_file, "key": meta_key, "md5": meta_md5})


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_reads_its_pickled_batches_through_torchvision_pixel_for_pixel(
    tmp_path, monkeypatch, dataset
):
    written_train, written_test = learnable(60, 20)
    classes = [f"class {i}" for i in range(10)]
    name = dataset.upper()
    write_cifar(tmp_path, monkeypatch, name, written_train, written_test, classes)
    train, test = build_datasets(Config(dataset=dataset, data_dir=str(tmp_path)))
    for read, written in ((train, written_train), (test, written_test)):
        assert read.images.dtype == torch.uint8 and read.images.is_contiguous()
        assert torch.equal(read.images, written.images)  # batches joined in order, planes kept
        assert torch.equal(read.labels, written.labels) and read.classes == classes


def test_a_cifar_batch_that_fails_its_checksum_is_the_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_OFFLINE", "1")
    write_cifar(tmp_path, monkeypatch, "CIFAR10", *learnable(20, 10), [str(i) for i in range(10)])
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\x00")
    with pytest.raises(UserError) as error:
        build_datasets(Config(dataset="cifar10", data_dir=str(tmp_path)))
    message = str(error.value)
    assert f"CIFAR-10 is not in {tmp_path} (expected cifar-10-batches-py/" in message
    assert "--dataset synthetic" in message and "--prepare-only" in message


def train_one_epoch(dataset: str, data_dir, run) -> dict:
    """train.main on dataset in this process; its summary, checked against metrics.jsonl, with
    every one of its 200 test images counted once and learnt (chance is 0.1)."""
    code, _, err = train_in_process(
        [*tiny_run_of(dataset), "--data-dir", str(data_dir), "--output-dir", str(run)]
    )
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["dataset"] == dataset and len(metrics) == 1
    assert summary["num_test_samples"] == 200 and sum(map(sum, summary["confusion_matrix"])) == 200
    assert summary["test_accuracy"] > 0.9
    assert metrics[-1]["test_accuracy"] == summary["test_accuracy"]
    return summary


def tiny_run_of(dataset: str) -> list[str]:
    return tiny_run("--width", "8", dataset=dataset, batch=16)


def test_cifar10_trains_end_to_end_on_batches_in_its_real_format(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_OFFLINE", "1")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]  # fmt: skip
    write_cifar(tmp_path / "data", monkeypatch, "CIFAR10", *learnable(512, 200), classes)
    summary = train_one_epoch("cifar10", tmp_path / "data", tmp_path / "run")
    assert summary["classes"] == classes


def write_svhn(root, monkeypatch, train, test) -> None:
    """SVHN's cropped digits as torchvision reads them: <split>_32x32.mat with X as 32 x 32 x 3
    x N uint8 and y as N x 1, where 10 stands for the digit 0; SVHN's md5 table (split_list)
    is pointed at these files."""
    root.mkdir(parents=True, exist_ok=True)
    for split, images in (("train", train), ("test", test)):
        path = root / f"{split}_32x32.mat"
        digits = images.labels.numpy().astype(np.uint8)
        y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        scipy.io.savemat(path, {"X": images.images.permute(2, 3, 1, 0).numpy(), "y": y})
        url = torchvision.datasets.SVHN.split_list[split][0]
        monkeypatch.setitem(
            torchvision.datasets.SVHN.split_list, split, [url, path.name, md5(path)]
        )


def test_svhn_reads_its_mat_files_through_torchvision_pixel_for_pixel(tmp_path, monkeypatch):
    written_train, written_test = learnable(60, 30)
    assert 0 in written_train.labels  # the digit 0, stored as 10
    write_svhn(tmp_path, monkeypatch, written_train, written_test)
    train, test = build_datasets(Config(dataset="svhn", data_dir=str(tmp_path)))
    for read, written in ((train, written_train), (test, written_test)):
        assert read.images.dtype == torch.uint8 and read.images.is_contiguous()
        assert torch.equal(read.images, written.images)
        assert torch.equal(read.labels, written.labels)
        assert read.classes == [str(digit) for digit in range(10)]


def test_svhn_trains_end_to_end_on_files_in_its_real_format(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_OFFLINE", "1")
    write_svhn(tmp_path / "data", monkeypatch, *learnable(512, 200, seed=3))
    summary = train_one_epoch("svhn", tmp_path / "data", tmp_path / "run")
    assert summary["classes"] == list("0123456789")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["augment"] == "none"  # what auto means on digits


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("cifar10", "cifar-10-batches-py/"),
        ("cifar100", "cifar-100-python/"),
        ("svhn", "train_32x32.mat and test_32x32.mat"),
    ],
)
def test_missing_files_are_the_offline_message_with_exit_2(
    tmp_path, monkeypatch, dataset, expected
):
    monkeypatch.setenv("CIFAR_OFFLINE", "1")
    run = tmp_path / "run"
    code, _, err = train_in_process(
        [*tiny_run_of(dataset), "--data-dir", str(tmp_path / "data"), "--output-dir", str(run)]
    )
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"is not in {tmp_path / 'data'} (expected {expected}" in line
    assert "downloads are off" in line and "--dataset synthetic" in line
    assert not run.exists() or not os.listdir(run)


def test_cifar10_absent_and_offline_names_folder_file_and_synthetic(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(UserError) as error:
        build_datasets(Config(dataset="cifar10", data_dir=str(tmp_path / "cifar")))
    message = str(error.value)
    assert str(tmp_path / "cifar") in message and "cifar-10-python.tar.gz" in message
    assert "--dataset synthetic" in message


def write_idx_set(folder, train: int, test: int) -> None:
    """A Fashion-MNIST-format set of blank 28x28 images, gzipped as Debian ships it."""
    folder.mkdir(parents=True)
    for prefix, n in (("train", train), ("t10k", test)):
        images = bytes([0, 0, 8, 3]) + b"".join(x.to_bytes(4, "big") for x in (n, 28, 28))
        labels = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big")
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(images + bytes(n * 28 * 28))
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(labels + bytes(i % 10 for i in range(n)))


def test_the_fashion_mnist_unpack_cache_is_keyed_by_its_files_not_their_mangled_path(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_idx_set(tmp_path / "x" / "a" / "b_c", train=30, test=10)
    write_idx_set(tmp_path / "x" / "a_b" / "c", train=20, test=5)  # the same path with / -> _

    def sizes(folder):
        train, test = build_datasets(Config(dataset="fashion-mnist", data_dir=str(folder)))
        return len(train), len(test)

    assert sizes(tmp_path / "x" / "a" / "b_c") == (30, 10)
    assert sizes(tmp_path / "x" / "a_b" / "c") == (20, 5)
    write_idx_set(tmp_path / "y", train=12, test=4)
    for name in os.listdir(tmp_path / "y"):  # new files in place of the old ones
        os.replace(tmp_path / "y" / name, tmp_path / "x" / "a_b" / "c" / name)
    assert sizes(tmp_path / "x" / "a_b" / "c") == (12, 4)


def test_a_home_that_cannot_be_written_unpacks_fashion_mnist_beside_the_data(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-cache-here")
    write_idx_set(tmp_path / "data" / "fashion", train=20, test=5)
    train, _ = build_datasets(
        Config(dataset="fashion-mnist", data_dir=str(tmp_path / "data" / "fashion"))
    )
    assert len(train) == 20
    assert (tmp_path / "data" / ".cifar-accelerate-cache" / "fashion-mnist").is_dir()
    assert "caching in" in capsys.readouterr().out
