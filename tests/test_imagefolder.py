"""cifar/data/imagefolder.py: image folders read from files or decoded into a cache, subsets, bad
files named (or skipped), N processes == 1."""

import os
import shutil

import pytest
import torch
from PIL import Image

import cifar.data.imagefolder as imagefolder
from cifar.config import Config, default_workers
from cifar.data import build_datasets
from cifar.data.imagefolder import ImageFiles
from cifar.data.loaders import build_loaders
from cifar.data.tensors import TensorImages
from cifar.errors import UserError
from tests.helpers import (
    SMOKE,
    assert_refused,
    devices_for,
    final_weights,
    folder_hashes,
    make_image_folders,
    make_jpegs,
    max_difference,
    read_json,
    run_train,
    smooth_image,
)


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Caches go to this test's folder, not the user's."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def test_image_folder_reads_train_and_test(tmp_path):
    make_image_folders(tmp_path)
    train, test = build_datasets(Config(dataset="imagefolder", data_dir=str(tmp_path)))
    assert train.classes == ["blue", "red"] and len(train) == 6 and len(test) == 6


def test_image_folder_names_an_unreadable_image(tmp_path):
    make_image_folders(tmp_path)
    (tmp_path / "train" / "red" / "broken.png").write_text("not an image")
    with pytest.raises(UserError, match="broken.png"):
        build_datasets(Config(dataset="imagefolder", data_dir=str(tmp_path)))


def test_image_folder_without_images_is_refused(tmp_path):
    make_image_folders(tmp_path)
    shutil.rmtree(tmp_path / "test")
    (tmp_path / "test" / "red").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no images"):
        build_datasets(Config(dataset="imagefolder", data_dir=str(tmp_path)))


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still reads; the pixels do not


def folder_config(root, **settings) -> Config:
    return Config(dataset="imagefolder", data_dir=str(root), num_workers=0, **settings)


def test_a_folder_trains_equally_on_two_processes_and_one_cached_or_not(tmp_path, cache_home):
    images = make_jpegs(tmp_path / "images", per_class=32, size=(96, 72))  # decoded at 1/2
    args = [
        "--dataset", "imagefolder", "--data-dir", images, "--tracker", "none", "--epochs", "1",
        "--no-batch-norm",
    ]  # fmt: skip
    cached = ["--cache-images", "always", "--num-workers", "0"]
    env = {"XDG_CACHE_HOME": str(cache_home)}
    one, two, files = tmp_path / "one", tmp_path / "two", tmp_path / "files"
    one_side = {**env, **devices_for(2)}  # on the device the two processes get
    run_train([*args, *cached, "--batch-size", "16", "--output-dir", one], env=one_side)
    two_processes = {"kind": "torchrun", "processes": 2, "env": env}
    run_train([*args, *cached, "--batch-size", "8", "--output-dir", two], **two_processes)
    from_files = ["--cache-images", "never", "--num-workers", "1"]  # decoded in a worker
    run_train([*args, *from_files, "--batch-size", "8", "--output-dir", files], **two_processes)
    weights = final_weights(one)
    assert max_difference(weights, final_weights(two)) < 1e-5
    assert max_difference(weights, final_weights(files)) < 1e-5
    summaries = [read_json(run / "summary.json") for run in (one, two, files)]
    assert [s["world_size"] for s in summaries] == [1, 2, 2]
    assert len({s["test_accuracy"] for s in summaries}) == 1
    assert {s["num_test_samples"] for s in summaries} == {64}


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


def test_a_cache_that_cannot_be_written_leaves_no_file_and_costs_only_the_decoding(
    tmp_path, monkeypatch, cache_home, capsys
):
    root = make_jpegs(tmp_path / "images", per_class=2)
    real_save = torch.save

    def disk_full(obj, f):
        f.write(b"half a cache")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    decoded, _ = build_datasets(folder_config(root, cache_images="always"))
    assert "could not be written ([Errno 28] No space left on device)" in capsys.readouterr().out
    assert os.listdir(cache_home / "cifar-accelerate" / "imagefolder") == []
    monkeypatch.setattr(torch, "save", real_save)
    cached, _ = build_datasets(folder_config(root, cache_images="always"))
    assert torch.equal(decoded.images, cached.images) and torch.equal(decoded.labels, cached.labels)
    assert len(os.listdir(cache_home / "cifar-accelerate" / "imagefolder")) == 2


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


def folder_batches(root, cache: str, epoch: int, skip=0, rank=0, world=1, batch_size=4):
    """This process's training batches of an epoch, as build_loaders makes them."""
    from types import SimpleNamespace

    config = folder_config(root, cache_images=cache, batch_size=batch_size, augment="crop-flip")
    accelerator = SimpleNamespace(
        process_index=rank,
        num_processes=world,
        is_main_process=True,  # each simulated process checks the files itself
        device=torch.device("cpu"),
        gradient_accumulation_steps=1,
    )
    train, test = build_datasets(config)
    loader = build_loaders(config, accelerator, train, test)[0]
    loader.set_epoch(epoch, skip_batches=skip)
    return [(images.clone(), labels.clone()) for images, labels in loader]


def same_batches(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    pairs = zip(a, b, strict=True)  # batches of (images, labels)
    return all(torch.equal(x, y) for pair in pairs for x, y in zip(*pair, strict=True))


def test_files_read_each_epoch_give_the_cache_batches_on_any_process_count(tmp_path):
    root = make_jpegs(tmp_path / "images", per_class=8, size=(300, 200))  # decoded at 1/4
    cached = folder_batches(root, "always", epoch=1)
    assert len(cached) == 4 and cached[0][0].shape == (4, 3, 32, 32)
    assert len({images.numpy().tobytes() for images, _ in cached}) == 4
    assert same_batches(folder_batches(root, "never", epoch=1), cached)
    assert same_batches(folder_batches(root, "never", epoch=1, skip=2), cached[2:])  # resuming
    assert not same_batches(folder_batches(root, "never", epoch=2), cached)
    # Two processes with batch 2 each take the halves of one process's batches of 4.
    halves = [folder_batches(root, "never", 1, rank=r, world=2, batch_size=2) for r in (0, 1)]
    joined = [
        (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(*halves, strict=True)
    ]
    assert same_batches(joined, cached)


def test_the_cache_pass_decodes_for_nvjpeg_only_what_files_would_not_reduce(tmp_path):
    small, large = tmp_path / "small.jpg", tmp_path / "large.jpg"
    smooth_image(40, 30).save(small)
    smooth_image(300, 200).save(large)
    samples = [(str(small), 0), (str(large), 1)]
    for_gpu = imagefolder.Resized(samples, 32, jpeg_bytes=True)
    files = ImageFiles(samples, ["a", "b"], size=32)
    assert for_gpu[0][1].shape == (small.stat().st_size,)  # its bytes, for nvJPEG
    assert torch.equal(for_gpu[1][1], files[1][0])  # decoded at 1/4 here, as ImageFiles does


@pytest.mark.parametrize("size", [(40, 30), (400, 300)])  # decoded at full and at 1/8 scale
def test_a_bad_image_is_named_when_the_cache_is_built(tmp_path, size):
    root = make_jpegs(tmp_path / "images", per_class=2, size=size)
    broken = root / "test" / "red" / "001.jpg"
    truncate(broken)
    with pytest.raises(UserError) as error:
        build_datasets(folder_config(root))
    assert f"cannot decode image {broken} (OSError" in str(error.value)
    assert "--skip-bad-images" in str(error.value)


def test_a_truncated_jpeg_decoded_in_a_worker_is_named_with_exit_2(tmp_path):
    root = make_jpegs(tmp_path / "images", per_class=4, size=(400, 300))  # decoded at 1/8
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


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_jpeg_is_named_with_exit_2(tmp_path, workers):
    from PIL import Image

    images = tmp_path / "images"
    for split in ("train", "test"):
        for colour in ("red", "blue"):
            (images / split / colour).mkdir(parents=True)
            for i in range(4):
                Image.effect_noise((48, 48), 60).convert("RGB").save(
                    images / split / colour / f"{i}.jpg", quality=90
                )
    broken = images / "train" / "blue" / "2.jpg"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # the header still reads; the pixels do not
    before = folder_hashes(images)
    args = ["--dataset", "imagefolder", "--data-dir", images, "--batch-size", "2"]
    result = run_train(
        [*SMOKE, *args, "--num-workers", workers, "--output-dir", tmp_path / "run"], check=False
    )
    assert_refused(result, f"cannot decode image {broken} (OSError", "--resume auto")
    assert folder_hashes(images) == before


def test_a_symlink_loop_or_a_link_to_another_class_is_not_followed(tmp_path, capsys):
    make_image_folders(tmp_path)
    (tmp_path / "train" / "red" / "up").symlink_to("..")
    (tmp_path / "train" / "red" / "blues").symlink_to(tmp_path / "train" / "blue")
    config = Config(dataset="imagefolder", data_dir=str(tmp_path), cache_images="never")
    train, _ = build_datasets(config)
    assert len(train) == 6 and sorted(label for _, label in train.samples) == [0] * 3 + [1] * 3
    out = capsys.readouterr().out
    assert "2 entries" in out and "up (a link" in out and "blues (a link" in out


def test_a_fifo_among_the_images_is_skipped_and_named_not_read(tmp_path, capsys):
    make_image_folders(tmp_path)
    os.mkfifo(tmp_path / "train" / "red" / "pipe.jpg")
    train, _ = build_datasets(
        Config(dataset="imagefolder", data_dir=str(tmp_path), cache_images="never")
    )
    assert len(train) == 6
    assert "pipe.jpg (not a regular file)" in capsys.readouterr().out


def test_a_one_class_folder_is_refused_before_training(tmp_path):
    make_image_folders(tmp_path)
    for split in ("train", "test"):
        shutil.rmtree(tmp_path / split / "blue")
    with pytest.raises(UserError, match="needs at least two"):
        build_datasets(Config(dataset="imagefolder", data_dir=str(tmp_path)))


def test_an_unwritable_home_caches_beside_the_data(tmp_path, monkeypatch, capsys):
    make_image_folders(tmp_path / "images")
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-such-cache")
    monkeypatch.setenv("HOME", "/nonexistent")
    train, _ = build_datasets(Config(dataset="imagefolder", data_dir=str(tmp_path / "images")))
    assert len(train) == 6
    assert list((tmp_path / ".cifar-accelerate-cache" / "imagefolder").glob("*.pt"))
    assert "caching in" in capsys.readouterr().out
