import gzip
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cifar.config import Config
from cifar.data import build_datasets
from cifar.data.tensors import FASHION_FILES
from cifar.errors import UserError
from tests.conftest import FASHION_DIR, require

pytestmark = pytest.mark.fast  # in-process: part of `make test-fast`


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


def make_image_folders(root, per_class=3):
    for split in ("train", "test"):
        for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20 + i, 24), colour).save(folder / f"{i}.png")


def test_image_folder_reads_train_and_test(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_image_folders(tmp_path)
    train, test = build_datasets(Config(dataset="imagefolder", data_dir=str(tmp_path)))
    assert train.classes == ["blue", "red"] and len(train) == 6 and len(test) == 6


def test_image_folder_names_an_unreadable_image(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_image_folders(tmp_path)
    (tmp_path / "train" / "red" / "broken.png").write_text("not an image")
    with pytest.raises(UserError, match="broken.png"):
        build_datasets(Config(dataset="imagefolder", data_dir=str(tmp_path)))


def test_image_folder_without_images_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_image_folders(tmp_path)
    shutil.rmtree(tmp_path / "test")
    (tmp_path / "test" / "red").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no images"):
        build_datasets(Config(dataset="imagefolder", data_dir=str(tmp_path)))
