"""cifar/data/manifest.py: an image folder is what its run recorded, or the run stops. The
manifest in the run folder, the refusal of a changed folder on resume (what changed, exit 2,
nothing touched), runs begun before manifests, and image caches checked against the files they
were decoded from. Runs are train.py's main() in this process."""

import json
import os
import shutil

import pytest
import torch
from PIL import Image

import cifar.data.image_cache as image_cache
from cifar.config import Config
from cifar.data import build_datasets
from cifar.data.manifest import MANIFEST_SETTING, Manifest, changes
from tests.helpers import folder_hashes, make_image_folders, read_json, train_in_process

IMAGES_PER_SPLIT = 6  # make_image_folders: 2 classes of 3


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """(image folder, a finished 2-epoch run on it, its flags), caches in the test's folder."""
    root = tmp_path_factory.mktemp("manifest")
    images = root / "images"
    make_image_folders(images)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(root / "cache"))
        patch.setenv("CIFAR_OFFLINE", "1")
        args = [
            "--dataset", "imagefolder", "--data-dir", str(images), "--tracker", "none",
            "--epochs", "2", "--batch-size", "2", "--num-workers", "0",
        ]  # fmt: skip
        code, out, err = train_in_process([*args, "--output-dir", str(root / "run")])
        assert code == 0, err
        yield images, root / "run", args


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CIFAR_OFFLINE", "1")
    return tmp_path / "cache"


def unfinished_copy(run_dir, tmp_path):
    """A copy of the run as a kill before its last checkpoint leaves it: resumable at epoch 2."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(sorted((copy / "checkpoints").glob("step-*"))[-1])
    os.remove(copy / "summary.json")
    return copy


def resume(args, run_dir):
    return train_in_process([*args, "--output-dir", str(run_dir), "--resume", "auto"])


def move_to_another_class(images):
    source, target = images / "train" / "red" / "2.png", images / "train" / "blue" / "2r.png"
    os.rename(source, target)  # a move keeps the size and mtime
    return "1 moved to another class (train/red/2.png -> train/blue/2r.png)", lambda: os.rename(
        target, source
    )


def replace_bytes(images):
    path = images / "train" / "blue" / "1.png"
    saved, status = path.read_bytes(), path.stat()
    Image.new("RGB", (21, 24), (0, 255, 0)).save(path)  # the same size of image, other pixels

    def undo():
        path.write_bytes(saved)
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))

    return "1 changed size or mtime (train/blue/1.png", undo


def add_an_image(images):
    path = images / "test" / "red" / "9.png"
    Image.new("RGB", (20, 24), (255, 0, 0)).save(path)
    return "1 added (test/red/9.png)", path.unlink


CHANGES = [move_to_another_class, replace_bytes, add_an_image]


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("finished", [False, True], ids=["unfinished", "finished"])
def test_a_changed_image_folder_is_refused_saying_what_changed_and_nothing_is_touched(
    folder_run, tmp_path, change, finished
):
    images, run_dir, args = folder_run
    run = tmp_path / "run" if finished else unfinished_copy(run_dir, tmp_path)
    if finished:
        shutil.copytree(run_dir, run)
    before = folder_hashes(run, folders=True)
    named, undo = change(images)
    try:
        code, _, err = resume(args, run)
    finally:
        undo()
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "the image folder's files are not those the run was trained on" in message, err
    assert named in message and "data_manifest.json lists each one" in message, err
    assert "train_images" not in message  # the manifest's words say it
    assert folder_hashes(run, folders=True) == before


def test_an_unchanged_folder_resumes_and_its_manifest_is_the_runs_record(folder_run, tmp_path):
    images, run_dir, args = folder_run
    run = unfinished_copy(run_dir, tmp_path)
    manifest = read_json(run / "data_manifest.json")
    assert manifest["image_folder"] == os.path.realpath(images)
    assert manifest["fields"] == ["path", "class", "size", "mtime_ns"]
    assert [len(manifest[split]) for split in ("train", "test")] == [IMAGES_PER_SPLIT] * 2
    first = manifest["train"][0]
    status = (images / first[0]).stat()
    assert first == ["train/blue/0.png", "blue", status.st_size, status.st_mtime_ns]
    assert read_json(run / "config.json")[MANIFEST_SETTING] == manifest["digest"]
    recorded = (run / "data_manifest.json").read_bytes()
    code, out, err = resume(args, run)
    assert code == 0, err
    assert "resuming at epoch 2" in out
    (entry,) = [json.loads(line) for line in (run / "resume.jsonl").read_text().splitlines()]
    assert list(entry["changed"]) == ["output_dir"]  # the copy's own folder, nothing else
    assert (run / "data_manifest.json").read_bytes() == recorded


def test_a_subset_manifest_lists_the_images_used(folder_run, tmp_path):
    images, _, args = folder_run
    subset = ["--train-subset", "4", "--test-subset", "2", "--epochs", "1"]
    code, _, err = train_in_process([*args, *subset, "--output-dir", str(tmp_path / "run")])
    assert code == 0, err
    manifest = read_json(tmp_path / "run" / "data_manifest.json")
    assert [len(manifest["train"]), len(manifest["test"])] == [4, 2]
    config = read_json(tmp_path / "run" / "config.json")
    assert (config["train_images"], config["test_images"]) == (4, 2)


def strip_manifest(run):
    """The run as a version before manifests left it: no digest recorded, no manifest file."""
    for progress in (run / "checkpoints").glob("step-*/progress.json"):
        data = read_json(progress)
        del data["settings"][MANIFEST_SETTING]
        progress.write_text(json.dumps(data))
    config = read_json(run / "config.json")
    del config[MANIFEST_SETTING]
    (run / "config.json").write_text(json.dumps(config))
    os.remove(run / "data_manifest.json")


def test_a_run_begun_before_manifests_resumes_and_is_checked_from_then_on(folder_run, tmp_path):
    images, run_dir, args = folder_run
    run = unfinished_copy(run_dir, tmp_path)
    strip_manifest(run)
    code, _, err = resume(args, run)
    assert code == 0, err
    (entry,) = [json.loads(line) for line in (run / "resume.jsonl").read_text().splitlines()]
    digest = read_json(run / "data_manifest.json")["digest"]
    assert entry["changed"][MANIFEST_SETTING] == [None, digest]
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert read_json(newest / "progress.json")["settings"][MANIFEST_SETTING] == digest
    named, undo = add_an_image(images)  # now a change is seen
    try:
        code, _, err = resume(args, run)
    finally:
        undo()
    assert code == 2 and named in " ".join(err.split()), err


def test_a_lost_manifest_file_still_refuses_a_changed_folder(folder_run, tmp_path):
    images, run_dir, args = folder_run
    run = unfinished_copy(run_dir, tmp_path)
    os.remove(run / "data_manifest.json")
    before = folder_hashes(run)
    _, undo = add_an_image(images)
    try:
        code, _, err = resume(args, run)
    finally:
        undo()
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    assert "data_manifest.json, which would list each file, is missing" in message, err
    assert folder_hashes(run) == before


def entries(*paths, size=10, mtime=1):
    return [[path, path.split("/")[1], size, mtime] for path in paths]


def test_changes_are_counted_with_a_few_examples_each():
    before = Manifest({"train": entries(*[f"train/a/{i}.png" for i in range(6)]), "test": []})
    after = Manifest(
        {
            "train": entries("train/b/0.png", "train/a/1.png", "train/a/x.png")
            + entries("train/a/2.png", size=11)
            + entries(*[f"train/a/new{i}.png" for i in range(5)], mtime=2),
            "test": entries("test/a/0.png"),
        }
    )
    text = changes(before, after)
    assert "1 moved to another class (train/a/0.png -> train/b/0.png)" in text
    assert "1 renamed (train/a/3.png -> train/a/x.png)" in text
    assert "1 changed size or mtime (train/a/2.png (10 -> 11 bytes))" in text
    assert "6 added (train/a/new0.png, train/a/new1.png, train/a/new2.png, and 3 more)" in text
    assert "2 removed (train/a/4.png, train/a/5.png)" in text
    assert "rsync -a" not in text


def test_a_copy_that_lost_the_modification_times_is_told_how_to_stage_one():
    paths = [f"train/a/{i}.png" for i in range(4)]
    before = Manifest({"train": entries(*paths), "test": []})
    text = changes(before, Manifest({"train": entries(*paths, mtime=5), "test": []}))
    assert text.startswith("4 changed size or mtime (train/a/0.png (modified since)")
    assert "only modification times changed" in text and "rsync -a or cp -p" in text
    resized = Manifest(
        {"train": entries(*paths[:3], mtime=5) + entries(paths[3], size=9), "test": []}
    )
    assert "rsync" not in changes(before, resized)


# Image caches: used only when they are the files they claim to be.


def folder_config(root, **settings) -> Config:
    return Config(dataset="imagefolder", data_dir=str(root), num_workers=0, **settings)


def cache_files(cache_home):
    return sorted((cache_home / "cifar-accelerate" / "imagefolder").glob("*.pt"))


def forge(saved: dict) -> dict:
    """5 images of 64 px standing in for the folder's, with its manifest digest."""
    return {
        **saved,
        "images": torch.zeros(5, 3, 64, 64, dtype=torch.uint8),
        "labels": torch.ones(5, dtype=torch.long),
    }


EDITS = {
    "other images": forge,
    "float images": lambda saved: {**saved, "images": saved["images"].float()},
    "swapped labels": lambda saved: {**saved, "labels": 1 - saved["labels"]},
    "other files": lambda saved: {**saved, "manifest": "0" * 64},
    "an older layout": lambda saved: {k: saved[k] for k in ("images", "labels", "failures")},
    "a list": lambda saved: [saved["images"]],
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS)
def test_an_edited_cache_is_decoded_again_not_used(tmp_path, cache_home, capsys, edit):
    root = tmp_path / "images"
    make_image_folders(root)
    fresh, fresh_test = build_datasets(folder_config(root, cache_images="always"))
    train_cache = next(p for p in cache_files(cache_home) if f"-{IMAGES_PER_SPLIT}x32px-" in p.name)
    for path in cache_files(cache_home):
        torch.save(edit(torch.load(path, weights_only=True)), path)
    capsys.readouterr()
    train, test = build_datasets(folder_config(root, cache_images="always"))
    out = capsys.readouterr().out
    assert out.count("does not match the files it was built from") == 2, out
    for a, b in ((train, fresh), (test, fresh_test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    again = torch.load(train_cache, weights_only=True)  # rebuilt: the real images once more
    assert torch.equal(again["images"], fresh.images)


def test_a_cache_of_garbage_bytes_is_decoded_again(tmp_path, cache_home, capsys):
    root = tmp_path / "images"
    make_image_folders(root)
    fresh, _ = build_datasets(folder_config(root, cache_images="always"))
    for path in cache_files(cache_home):
        path.write_bytes(b"PK\x03\x04 not a cache")
    train, _ = build_datasets(folder_config(root, cache_images="always"))
    assert "does not match the files it was built from (unreadable" in capsys.readouterr().out
    assert torch.equal(train.images, fresh.images)


def test_a_run_on_an_edited_cache_trains_on_the_real_folder(tmp_path, cache_home):
    root = tmp_path / "images"
    make_image_folders(root)
    args = [
        "--dataset", "imagefolder", "--data-dir", str(root), "--tracker", "none", "--epochs",
        "1", "--batch-size", "2", "--num-workers", "0", "--cache-images", "always",
    ]  # fmt: skip
    code, _, err = train_in_process([*args, "--output-dir", str(tmp_path / "fresh")])
    assert code == 0, err
    for path in cache_files(cache_home):
        torch.save(forge(torch.load(path, weights_only=True)), path)
    code, out, err = train_in_process([*args, "--output-dir", str(tmp_path / "edited")])
    assert code == 0, err
    assert "does not match the files it was built from (it holds 5 torch.uint8 images" in out
    config = read_json(tmp_path / "edited" / "config.json")
    assert (config["train_images"], config["test_images"]) == (IMAGES_PER_SPLIT,) * 2
    fresh, edited = (read_json(tmp_path / run / "summary.json") for run in ("fresh", "edited"))
    assert edited["num_test_samples"] == IMAGES_PER_SPLIT
    assert edited["test_loss"] == fresh["test_loss"]  # the same data, the same run


def test_a_cache_is_named_by_the_manifest_of_its_files(tmp_path, cache_home, monkeypatch):
    root = tmp_path / "images"
    make_image_folders(root)
    build_datasets(folder_config(root, cache_images="always"))
    names = [p.name for p in cache_files(cache_home)]
    (root / "train" / "red" / "0.png").touch()  # a new mtime: another manifest
    decoded = []
    real = image_cache.decode_all
    monkeypatch.setattr(image_cache, "decode_all", lambda *a: decoded.append(1) or real(*a))
    build_datasets(folder_config(root, cache_images="always"))
    assert decoded == [1]  # the train split only
    assert len(set(names) & {p.name for p in cache_files(cache_home)}) == 1
