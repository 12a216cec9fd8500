"""cifar/imagefolder.py: decoding, the on-disk cache, subsets, bad files, N processes == 1."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import cifar.imagefolder as imagefolder
from cifar.config import Config, default_workers
from cifar.data import TensorImages, build_datasets, load_rgb
from cifar.errors import UserError
from cifar.imagefolder import ImageFiles
from cifar.transforms import image_folder_transforms
from tests.conftest import read_json, run_train
from tests.test_distributed import final_weights, max_difference

pytestmark = pytest.mark.fast  # in-process: part of `make test-fast`


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Caches go to this test's folder, not the user's."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def make_jpegs(root, per_class: int = 8, size=(40, 30)):
    """Noisy red and blue JPEGs: a learnable two-class folder."""
    for split in ("train", "test"):
        for index, colour in enumerate(("red", "blue")):
            folder = root / split / colour
            folder.mkdir(parents=True)
            for i in range(per_class):
                noise = Image.effect_noise(size, 40).convert("RGB")
                tint = Image.new("RGB", size, (200, 30, 30) if index == 0 else (30, 30, 200))
                Image.blend(noise, tint, 0.6).save(folder / f"{i:03}.jpg", quality=90)
    return root


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still reads; the pixels do not


def folder_config(root, **settings) -> Config:
    return Config(dataset="imagefolder", data_dir=str(root), num_workers=0, **settings)


@pytest.mark.slow
def test_cached_folder_trains_equally_on_two_processes_and_one(tmp_path, cache_home):
    images = make_jpegs(tmp_path / "images", per_class=32)
    args = [
        "--dataset", "imagefolder", "--data-dir", images, "--cache-images", "always",
        "--tracker", "none", "--epochs", "1", "--no-batch-norm", "--num-workers", "0",
    ]  # fmt: skip
    env = {"XDG_CACHE_HOME": str(cache_home)}
    one, two = tmp_path / "one", tmp_path / "two"
    run_train([*args, "--batch-size", "16", "--output-dir", one], env=env)
    run_train(
        [*args, "--batch-size", "8", "--output-dir", two], kind="torchrun", processes=2, env=env
    )
    assert max_difference(final_weights(one), final_weights(two)) < 1e-5
    summary_one, summary_two = read_json(one / "summary.json"), read_json(two / "summary.json")
    assert summary_two["world_size"] == 2
    assert summary_one["test_accuracy"] == summary_two["test_accuracy"]
    assert summary_one["num_test_samples"] == summary_two["num_test_samples"] == 64


def test_small_folders_are_cached_unless_never_and_large_ones_are_not(tmp_path, monkeypatch):
    root = make_jpegs(tmp_path / "images", per_class=2)
    cached, test = build_datasets(folder_config(root))
    assert isinstance(cached, TensorImages) and cached.images.shape == (4, 3, 32, 32)
    assert cached.classes == ["blue", "red"] and cached.labels.tolist() == [0, 0, 1, 1]
    resnet, _ = build_datasets(folder_config(root, model="resnet50", image_size=48))
    assert resnet.images.shape == (4, 3, 48, 48)
    never, _ = build_datasets(folder_config(root, cache_images="never"))
    assert isinstance(never, ImageFiles) and len(never) == 4
    monkeypatch.setattr(imagefolder, "CACHE_BUDGET_BYTES", 8 * 3 * 32 * 32 - 1)
    assert isinstance(build_datasets(folder_config(root))[0], ImageFiles)
    assert isinstance(build_datasets(folder_config(root, cache_images="always"))[0], TensorImages)


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch, cache_home):
    root = make_jpegs(tmp_path / "images", per_class=2)
    first, _ = build_datasets(folder_config(root))

    def no_decoding(*args):
        raise AssertionError("decoded although the cache holds these files")

    real_decode_all = imagefolder.decode_all
    monkeypatch.setattr(imagefolder, "decode_all", no_decoding)
    again, _ = build_datasets(folder_config(root))
    assert torch.equal(first.images, again.images)

    changed = root / "train" / "blue" / "000.jpg"
    Image.new("RGB", (40, 30), (0, 255, 0)).save(changed)
    with pytest.raises(AssertionError, match="decoded although"):
        build_datasets(folder_config(root))
    monkeypatch.setattr(imagefolder, "decode_all", real_decode_all)
    rebuilt, _ = build_datasets(folder_config(root))
    assert rebuilt.images[0, 1].float().mean() > 200  # now green
    assert torch.equal(rebuilt.images[1:], first.images[1:])
    caches = sorted(p.name for p in (cache_home / "cifar-accelerate" / "imagefolder").iterdir())
    assert len(caches) == 2, caches  # train and test: the stale train cache was removed


@pytest.mark.parametrize("cache", ["always", "never"])
def test_subsets_are_the_same_fixed_images_whatever_the_seed(tmp_path, cache):
    root = make_jpegs(tmp_path / "images", per_class=8)
    full = build_datasets(folder_config(root, cache_images="never"))[0].samples
    picks = []
    for seed in (0, 5):
        train, test = build_datasets(
            folder_config(root, cache_images=cache, seed=seed, train_subset=6, test_subset=3)
        )
        assert len(train) == 6 and len(test) == 3
        picks.append(train.labels.tolist() if cache == "always" else train.samples)
    assert picks[0] == picks[1]
    if cache == "never":
        assert picks[0] == [s for s in full if s in picks[0]]  # in the folder's order
        assert {label for _, label in picks[0]} == {0, 1}  # not the first class only


def test_uncached_images_draw_their_own_crop_and_flip(tmp_path):
    path = tmp_path / "one.png"
    Image.effect_noise((32, 32), 80).convert("RGB").save(path)
    files = ImageFiles([(str(path), 0)] * 32, ["a"], image_folder_transforms(32, "crop-flip"))
    images, _ = next(iter(DataLoader(files, batch_size=32)))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.uint8
    assert len({image.numpy().tobytes() for image in images}) > 8


@pytest.mark.parametrize("suffix", ["png", "bmp"])
def test_images_decode_to_the_pixels_pil_reads(tmp_path, suffix):
    path = tmp_path / f"image.{suffix}"
    Image.effect_noise((21, 13), 70).convert("RGB").save(path)
    with Image.open(path) as image:
        expected = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    decoded = load_rgb(str(path))
    assert decoded.shape == (3, 13, 21)
    assert torch.equal(decoded.permute(1, 2, 0), expected)


def test_a_bad_image_is_named_when_the_cache_is_built(tmp_path):
    root = make_jpegs(tmp_path / "images", per_class=2)
    broken = root / "test" / "red" / "001.jpg"
    truncate(broken)
    with pytest.raises(UserError) as error:
        build_datasets(folder_config(root))
    assert f"cannot decode image {broken} (OSError" in str(error.value)
    assert "--skip-bad-images" in str(error.value)


@pytest.mark.slow
def test_a_truncated_jpeg_decoded_in_a_worker_is_named_with_exit_2(tmp_path):
    root = make_jpegs(tmp_path / "images", per_class=4)
    broken = root / "train" / "blue" / "002.jpg"
    truncate(broken)
    args = ["--dataset", "imagefolder", "--data-dir", root, "--cache-images", "never"]
    result = run_train(
        [*args, "--tracker", "none", "--batch-size", "2", "--num-workers", "1",
         "--output-dir", tmp_path / "run"],
        check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert f"cannot decode image {broken} (OSError" in message and "--resume auto" in message


@pytest.mark.parametrize("cache", ["always", "never"])
@pytest.mark.slow
def test_skip_bad_images_lists_the_skipped_files_and_trains(tmp_path, cache):
    root = make_jpegs(tmp_path / "images", per_class=4)
    truncated, garbage = root / "train" / "red" / "001.jpg", root / "test" / "blue" / "003.jpg"
    truncate(truncated)
    garbage.write_text("not an image")
    args = [
        "--dataset", "imagefolder", "--data-dir", root, "--cache-images", cache,
        "--tracker", "none", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
        "--scheduler", "none",
    ]  # fmt: skip
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    refused = run_train([*args, "--output-dir", tmp_path / "refused"], env=env, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--skip-bad-images" in refused.stderr
    result = run_train([*args, "--skip-bad-images", "--output-dir", tmp_path / "run"], env=env)
    assert "warning: --skip-bad-images left out 2 image(s):" in result.stdout
    assert str(truncated) in result.stdout and str(garbage) in result.stdout
    assert read_json(tmp_path / "run" / "summary.json")["num_test_samples"] == 7


def test_default_workers_share_the_cpus_this_process_may_use(monkeypatch):
    def set_cpus(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    set_cpus(2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 2
    set_cpus(64)
    assert default_workers() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert default_workers() == 4
    set_cpus(2)
    assert default_workers() == 1
