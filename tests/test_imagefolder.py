"""cifar/data/imagefolder.py: image folders read from files or decoded into a cache, subsets, bad
files named (or skipped), N processes == 1."""

import contextlib
import os
import shutil

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import cifar.data.image_cache as image_cache
import cifar.data.imagefolder as imagefolder
from cifar.config import Config, default_workers
from cifar.data import build_datasets
from cifar.data.imagefolder import ImageFiles
from cifar.data.loaders import build_loaders
from cifar.data.tensors import TensorImages
from cifar.errors import UserError
from tests.helpers import (
    EXAMPLES,
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

    real_decode_all = image_cache.decode_all
    monkeypatch.setattr(image_cache, "decode_all", no_decoding)
    again, _ = build_datasets(folder_config(root))
    assert torch.equal(first.images, again.images)

    changed = root / "train" / "blue" / "000.jpg"
    Image.new("RGB", (40, 30), (0, 255, 0)).save(changed)
    with pytest.raises(AssertionError, match="decoded although"):
        build_datasets(folder_config(root))
    monkeypatch.setattr(image_cache, "decode_all", real_decode_all)
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
    assert "could not be written ([Errno 28] No space left on device: " in capsys.readouterr().out
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


def test_the_cache_pass_decodes_as_the_uncached_epochs_do_even_where_cuda_is_there(
    tmp_path, monkeypatch
):
    small, large = tmp_path / "small.jpg", tmp_path / "large.jpg"
    smooth_image(40, 30).save(small)  # decoded at full size
    smooth_image(300, 200).save(large)  # decoded at 1/4 by libjpeg's DCT scaling
    samples = [(str(small), 0), (str(large), 1)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node: one decoder
    decode_jpeg = torchvision.io.decode_jpeg

    def cpu_only(data, *args, device="cpu", **kwargs):
        assert str(device) == "cpu", "the cache pass used nvJPEG"
        return decode_jpeg(data, *args, device=device, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", cpu_only)
    cached, failures = image_cache.decode_all(samples, 32, workers=0)
    files = ImageFiles(samples, ["a", "b"], size=32)
    assert failures == []
    for i in range(2):
        assert torch.equal(cached.images[i], files[i][0]), samples[i]


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


def test_a_class_folder_that_is_a_link_to_another_is_refused(tmp_path):
    make_image_folders(tmp_path)
    (tmp_path / "train" / "crimson").symlink_to(tmp_path / "train" / "red")
    (tmp_path / "test" / "crimson").symlink_to(tmp_path / "test" / "red")
    with pytest.raises(UserError, match="crimson and red of .* are one folder"):
        build_datasets(Config(dataset="imagefolder", data_dir=str(tmp_path)))


def test_a_folder_linked_from_two_classes_is_listed_for_the_first_only(tmp_path, capsys):
    make_image_folders(tmp_path / "data")
    make_image_folders(tmp_path / "more")
    for colour in ("red", "blue"):
        (tmp_path / "data" / "train" / colour / "more").symlink_to(tmp_path / "more" / "train")
    config = Config(dataset="imagefolder", data_dir=str(tmp_path / "data"), cache_images="never")
    train, _ = build_datasets(config)
    assert sorted(label for _, label in train.samples) == [0] * 9 + [1] * 3
    assert "red/more (a link to a folder listed elsewhere" in capsys.readouterr().out


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


# Any layout of an image folder: a listing or one paragraph, never a traceback, a hang or a
# changed file. Listing opens no file, so Hypothesis can try many layouts quickly.

ODD_NAMES = [
    "red", "blue", "a b", "ünïcödé", "-dash", ".hidden", "x" * 200, "new\nline", "back\\slash",
    "日本", os.fsdecode(b"caf\xe9"), "*?[]", " ", "a" * 250,
]  # fmt: skip
SUFFIXES = [".png", ".JPG", ".jpeg", ".png.txt", ""]
# What an entry of a class folder is: an image, bytes named like one, a special file, a
# link (to a file, to folders inside, beside and above, to itself, to nothing), a sub-folder.
KINDS = [
    "image", "junk", "fifo", "text", "link to an image", "link to another class's image",
    "link to itself", "dangling link", "link to ..", "link to .", "link to the split",
    "link to the root", "link to another class", "link to an outside folder", "sub-folder",
    "link to a sub-folder",
]  # fmt: skip


def class_layouts():
    entry = st.tuples(st.sampled_from(KINDS), st.sampled_from(ODD_NAMES), st.sampled_from(SUFFIXES))
    one_class = st.tuples(st.sampled_from(ODD_NAMES), st.lists(entry, max_size=4))
    classes = st.lists(one_class, max_size=3, unique_by=lambda c: c[0])
    # test/ like train/, another layout, or a class folder that is a link to another class
    return st.tuples(classes, st.sampled_from(["same", "other", "linked class"]), classes)


PNG = None


def tiny_png() -> bytes:
    global PNG
    if PNG is None:
        import io

        buffer = io.BytesIO()
        Image.new("RGB", (4, 4), (9, 9, 9)).save(buffer, format="PNG")
        PNG = buffer.getvalue()
    return PNG


def make_entry(root, split, class_dir, kind, name, suffix, other_class):
    path = os.path.join(class_dir, name + suffix)
    if os.path.lexists(path) or len(os.fsencode(name + suffix + ".txt")) > 255:
        return
    if kind == "image":
        with open(path, "wb") as f:
            f.write(tiny_png())
    elif kind == "junk":
        with open(path, "wb") as f:
            f.write(b"not an image")
    elif kind == "text":
        with open(os.path.join(class_dir, name + ".txt"), "w") as f:
            f.write("x")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "sub-folder":
        os.makedirs(path)
        with open(os.path.join(path, "inner.png"), "wb") as f:
            f.write(tiny_png())
    else:
        targets = {
            "link to an image": os.path.join(root, "outside", "image.png"),
            "link to another class's image": os.path.join(other_class, "shared.png"),
            "link to itself": path,
            "dangling link": os.path.join(root, "nothing-here"),
            "link to ..": "..",
            "link to .": ".",
            "link to the split": os.path.join(root, "data", split),
            "link to the root": root,
            "link to another class": other_class,
            "link to an outside folder": os.path.join(root, "outside"),
            "link to a sub-folder": os.path.join(class_dir, "sub"),
        }
        os.symlink(targets[kind], path)


def make_layout(root, layout):
    """root/data/{train,test}/<class>/... as drawn, beside root/outside (an image and a folder
    reached through links)."""
    train_classes, test_kind, test_classes = layout
    os.makedirs(os.path.join(root, "outside"))
    with open(os.path.join(root, "outside", "image.png"), "wb") as f:
        f.write(tiny_png())
    splits = {
        "train": train_classes,
        "test": train_classes if test_kind == "same" else test_classes,
    }
    for split, classes in splits.items():
        split_dir = os.path.join(root, "data", split)
        os.makedirs(split_dir)
        names = [name for name, _ in classes]
        for index, (name, entries) in enumerate(classes):
            class_dir = os.path.join(split_dir, name)
            other = os.path.join(split_dir, names[(index + 1) % len(names)])
            if test_kind == "linked class" and split == "test" and index == 1:
                os.symlink(os.path.join(split_dir, names[0]), class_dir)
                continue
            os.makedirs(class_dir, exist_ok=True)
            os.makedirs(os.path.join(class_dir, "sub"), exist_ok=True)
            with open(os.path.join(class_dir, "shared.png"), "wb") as f:
                f.write(tiny_png())
            for kind, entry_name, suffix in entries:
                make_entry(root, split, class_dir, kind, entry_name, suffix, other)


def tree_snapshot(root) -> dict:
    """Every entry below root, links not followed: a file's sha256, a link's target, a FIFO."""
    import hashlib
    import stat as stat_module

    snapshot = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat_module.S_ISLNK(mode):
                snapshot[path] = "-> " + os.readlink(path)
            elif stat_module.S_ISREG(mode):
                with open(path, "rb") as f:
                    snapshot[path] = hashlib.sha256(f.read()).hexdigest()
            else:
                snapshot[path] = stat_module.filemode(mode)
    return snapshot


REFUSALS = ["at least two", "holds no images", "different classes", "are one folder"]


class Hang(Exception):
    pass


def within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


def check_listing(train, test, data_dir: str) -> None:
    """A listing is an image folder train.py may train on: two classes or more, the same in both
    splits, each image a regular file (or a dangling link, named when read) found under its own
    class folder and not inside another's, no file listed twice, no two classes one folder."""
    import stat as stat_module

    assert train.classes == test.classes and len(train.classes) >= 2
    for split, name in ((train, "train"), (test, "test")):
        split_dir = os.path.join(data_dir, name)
        reals = [os.path.realpath(os.path.join(split_dir, c)) for c in split.classes]
        assert len(set(reals)) == len(reals), "two classes are one folder"
        seen = set()
        for path, label in split.samples:
            assert path.startswith(os.path.join(split_dir, split.classes[label]) + os.sep)
            if os.path.exists(path):
                assert stat_module.S_ISREG(os.stat(path).st_mode), path
            else:
                assert os.path.islink(path), path
            real_dir = os.path.realpath(os.path.dirname(path))
            key = (real_dir, os.path.basename(path))
            assert key not in seen, f"{path} listed twice"
            seen.add(key)
            if not within(real_dir, reals[label]):
                assert not any(within(real_dir, real) for real in reals), path
    manifest = imagefolder.Manifest.of(data_dir, train, test)
    assert [len(manifest.splits[s]) for s in ("train", "test")] == [len(train), len(test)]
    assert imagefolder.Manifest.of(data_dir, train, test).digest == manifest.digest


@settings(
    max_examples=EXAMPLES * 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layout=class_layouts())
def test_any_folder_layout_is_a_listing_or_one_paragraph_and_no_file_changes(layout):
    import io
    import signal
    import tempfile

    root = tempfile.mkdtemp()
    try:
        make_layout(root, layout)
        before = tree_snapshot(root)
        config = Config(
            dataset="imagefolder",
            data_dir=os.path.join(root, "data"),
            cache_images="never",
            num_workers=0,
        )
        strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")  # a terminal's

        def hang(signum, frame):
            raise Hang("listing the folder blocked")

        previous = signal.signal(signal.SIGALRM, hang)
        signal.alarm(20)
        try:
            with contextlib.redirect_stdout(strict):
                train, test = build_datasets(config)
        except UserError as error:
            assert str(error).strip() and "\n" not in str(error), str(error)
            event(next((f"refused: {p}" for p in REFUSALS if p in str(error)), "refused"))
        else:
            check_listing(train, test, config.data_dir)
            event("listed")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        assert tree_snapshot(root) == before
    finally:
        shutil.rmtree(root, ignore_errors=True)
