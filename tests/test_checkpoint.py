"""cifar/checkpoint.py: checkpoints written whole, resumed only under the settings they were
trained with, and skipped (the previous one loaded) when torn, edited, foreign or unsafe."""

import glob
import json
import os
import pickle
import shutil
import subprocess

import pytest

from cifar.checkpoint import settings_differences
from cifar.config import SETTING_DEFAULTS, Config
from tests.helpers import (
    SMOKE,
    Payload,
    assert_refused,
    final_weights,
    folder_hashes,
    max_difference,
    read_json,
    read_metrics,
    require,
    run_train,
    tiny_run,
    warning_lines,
)

TWO_EPOCHS = tiny_run(epochs=2)


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory):
    """A 2-epoch run that lost its last checkpoint and summary: resumable from epoch 1."""
    run_dir = tmp_path_factory.mktemp("unfinished") / "run"
    run_train([*TWO_EPOCHS, "--output-dir", run_dir])
    shutil.rmtree(sorted(glob.glob(f"{run_dir}/checkpoints/step-*"))[-1])
    os.remove(run_dir / "summary.json")
    return run_dir


@pytest.mark.parametrize(
    "change, named",
    [
        (["--seed", "5", "--test-subset", "8"], ["test_subset: 0 -> 8", "seed: 0 -> 5"]),
        (["--train-subset", "512"], ["train_subset: 0 -> 512", "train_images: 1024 -> 512"]),
        (["--synthetic-train-size", "2048"], ["synthetic_train_size: 1024 -> 2048"]),
        (["--label-smoothing", "0", "--augment", "flip"], ["label_smoothing", "augment"]),
        (["--mixed-precision", "bf16"], ["mixed_precision: 'no' -> 'bf16'"]),
        (["--epochs", "3"], ["epochs: 2 -> 3"]),
    ],
)
def test_resume_refuses_a_changed_setting_naming_it_and_touches_nothing(
    unfinished_run, change, named
):
    before = folder_hashes(unfinished_run)
    result = run_train(
        [*TWO_EPOCHS, "--output-dir", unfinished_run, "--resume", "auto", *change], check=False
    )
    assert_refused(result, "these settings differ from the ones it was trained with", *named)
    assert folder_hashes(unfinished_run) == before


def test_resume_under_other_allowed_settings_logs_them_and_keeps_config_json(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*TWO_EPOCHS, "--output-dir", run_dir])
    shutil.rmtree(sorted(glob.glob(f"{run_dir}/checkpoints/step-*"))[-1])
    os.remove(run_dir / "summary.json")
    config_before = (run_dir / "config.json").read_bytes()

    allowed = ["--log-every", "3", "--keep-checkpoints", "3", "--num-workers", "0"]
    result = run_train([*TWO_EPOCHS, "--output-dir", run_dir, "--resume", "auto", *allowed])
    assert "resuming at epoch 2 step 16" in result.stdout

    assert (run_dir / "config.json").read_bytes() == config_before
    (entry,) = [json.loads(line) for line in (run_dir / "resume.jsonl").read_text().splitlines()]
    assert entry["epoch"] == 1 and entry["global_step"] == 16 and entry["world_size"] == 1
    assert entry["checkpoint"].endswith("step-000000016")
    assert entry["changed"] == {
        "log_every": [50, 3],
        "keep_checkpoints": [2, 3],
        "num_workers": [Config().num_workers, 0],
    }
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]
    assert read_json(run_dir / "summary.json")["epochs"] == 2


def test_a_setting_a_checkpoint_does_not_record_reads_as_its_default():
    current = {"width": 8, "dropout": SETTING_DEFAULTS["dropout"]}
    assert settings_differences({"width": 8}, current) == {}
    changed = settings_differences({"width": 8}, {**current, "dropout": 0.5})
    assert changed == {"dropout": (SETTING_DEFAULTS["dropout"], 0.5)}
    # Settings that are not flags (data sizes) have no default: their absence is a difference.
    assert settings_differences({}, {"train_images": 256}) == {
        "train_images": ("(not recorded)", 256)
    }


def test_an_image_folder_may_not_change_on_resume_but_its_worker_count_may():
    from types import SimpleNamespace

    from cifar.assemble import run_settings
    from cifar.checkpoint import settings_differences
    from cifar.config import Config

    accelerator = SimpleNamespace(
        mixed_precision="no", gradient_accumulation_steps=1, num_processes=1
    )
    for dataset, strict in (("imagefolder", True), ("cifar10", False)):
        before = run_settings(Config(dataset=dataset, data_dir="a", num_workers=2), accelerator)
        after = run_settings(Config(dataset=dataset, data_dir="b", num_workers=3), accelerator)
        assert list(settings_differences(before, after)) == (["image_folder"] if strict else [])
        moved = run_settings(Config(dataset=dataset, data_dir="a", num_workers=0), accelerator)
        assert settings_differences(before, moved) == {}, dataset


def test_a_run_begun_under_another_image_folder_pipeline_is_not_resumed():
    from types import SimpleNamespace

    from cifar.assemble import run_settings
    from cifar.checkpoint import refuse_other_settings, settings_differences
    from cifar.config import Config
    from cifar.data.imagefolder import PIPELINE_VERSION
    from cifar.errors import UserError

    accelerator = SimpleNamespace(
        mixed_precision="no", gradient_accumulation_steps=1, num_processes=1
    )
    now = run_settings(Config(dataset="imagefolder", data_dir="a"), accelerator)
    assert now["image_folder_pipeline"] == PIPELINE_VERSION
    before = {k: v for k, v in now.items() if k != "image_folder_pipeline"}  # an older version
    differences = settings_differences(before, now)
    assert list(differences) == ["image_folder_pipeline"]
    with pytest.raises(UserError) as error:
        refuse_other_settings(differences, "runs/x/checkpoints/step-000000004")
    message = str(error.value)
    assert "reads the dataset's files differently" in message and "start a new run" in message


def test_a_run_that_left_an_uneven_accumulation_tail_out_is_refused_saying_why():
    from cifar.checkpoint import ACCUMULATION_TAIL, refuse_other_settings, settings_differences
    from cifar.errors import UserError

    before = {"batch_size": 32, "gradient_accumulation_steps": 3, "train_images": 256}
    now = {**before, ACCUMULATION_TAIL: 2}  # 8 batches: 3 + 3 + 2
    differences = settings_differences(before, now)
    assert differences == {ACCUMULATION_TAIL: ("(not recorded)", 2)}
    with pytest.raises(UserError) as error:
        refuse_other_settings(differences, "runs/x/checkpoints/step-000000004")
    message = str(error.value)
    assert "trains the 2 batches after the last whole accumulation group" in message
    assert "left them out: finish it with that version" in message


def test_a_checkpoint_of_a_version_that_left_the_accumulation_tail_out_is_refused(tmp_path):
    """A checkpoint inside epoch 1 of 8 batches with accumulation 3, its settings as a version
    that dropped the last 2 batches recorded them (without the tail): refused, untouched."""
    args = tiny_run("--width", "8", "--head-hidden", "32", "--gradient-accumulation-steps", "3",
                    "--checkpoint-every", "2", train=256, test=64, batch=32)  # fmt: skip
    run_dir = tmp_path / "run"
    run_train([*args, "--output-dir", run_dir])
    (run_dir / "summary.json").unlink()
    shutil.rmtree(run_dir / "checkpoints" / "step-000000003")
    progress_file = run_dir / "checkpoints" / "step-000000002" / "progress.json"
    progress = read_json(progress_file)
    del progress["settings"]["accumulation_tail_batches"]
    progress_file.write_text(json.dumps(progress))
    before = folder_hashes(run_dir)
    result = run_train([*args, "--output-dir", run_dir, "--resume", "auto"], check=False)
    assert_refused(result, "accumulation_tail_batches: '(not recorded)' -> 2",
                   "the one that began the run left them out")  # fmt: skip
    assert folder_hashes(run_dir) == before


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path):
    result = run_train([*SMOKE, "--output-dir", tmp_path / "new", "--resume", "auto"])
    assert "resuming" not in result.stdout
    assert [r["epoch"] for r in read_metrics(tmp_path / "new")] == [1]
    assert not (tmp_path / "new" / "resume.jsonl").exists()


def completed_run(tmp_path, epochs=2):
    run_dir = tmp_path / "run"
    run_train([*SMOKE, "--epochs", epochs, "--output-dir", run_dir])
    return run_dir


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run_dir = completed_run(tmp_path)
    before = read_json(run_dir / "summary.json")
    weights_before = final_weights(run_dir)
    previous, newest = sorted(glob.glob(f"{run_dir}/checkpoints/step-*"))
    with open(f"{newest}/model.safetensors", "r+b") as f:
        f.truncate(100)
    os.remove(run_dir / "summary.json")  # the end of the run is lost: it must be redone
    result = run_train([*SMOKE, "--epochs", 2, "--output-dir", run_dir, "--resume", "auto"])
    (warning,) = warning_lines(result.stderr)
    assert warning.startswith(f"warning: skipping checkpoint {newest}: ")
    assert "resuming at epoch 2" in result.stdout
    after = read_json(run_dir / "summary.json")
    assert after["test_accuracy"] == before["test_accuracy"]
    assert max_difference(weights_before, final_weights(run_dir)) == 0.0


def test_a_checkpoint_with_a_pickle_payload_does_not_run_code(tmp_path):
    run_dir = completed_run(tmp_path, epochs=1)
    marker = tmp_path / "pwned"
    (newest,) = glob.glob(f"{run_dir}/checkpoints/step-*")
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        with open(f"{newest}/{name}", "wb") as f:
            pickle.dump({"state": Payload(str(marker))}, f)
    os.remove(run_dir / "summary.json")
    result = run_train([*SMOKE, "--output-dir", run_dir, "--resume", newest], check=False)
    assert not marker.exists()
    assert "skipping checkpoint" in result.stderr


def tamper(folder: str, edit) -> None:
    path = os.path.join(folder, "progress.json")
    with open(path) as f:
        data = json.load(f)
    with open(path, "w") as f:
        json.dump(edit(data), f)


def test_an_edited_progress_json_is_skipped_like_a_torn_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TWO_EPOCHS, "--checkpoint-every", "10", "--keep-checkpoints", "3"]
    run_train([*args, "--output-dir", run_dir])
    os.remove(run_dir / "summary.json")
    older, newest = sorted(glob.glob(f"{run_dir}/checkpoints/step-*"))[-2:]
    tamper(newest, lambda p: {**p, "epoch": 999})
    result = run_train([*args, "--output-dir", run_dir, "--resume", "auto"])
    warning = f"skipping checkpoint {newest}: invalid progress.json (epoch 999 is outside 0..2)"
    assert warning in " ".join(result.stderr.split())
    assert f"resuming at epoch 2 step {int(older[-9:])}" in result.stdout
    assert read_json(run_dir / "summary.json")["epochs"] == 2


def test_a_progress_json_that_is_not_ours_makes_no_traceback(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*SMOKE, "--output-dir", run_dir])
    os.remove(run_dir / "summary.json")
    for newest in glob.glob(f"{run_dir}/checkpoints/step-*"):
        tamper(newest, lambda p: [1, 2, 3])
    before = folder_hashes(run_dir)
    result = run_train([*SMOKE, "--output-dir", run_dir, "--resume", "auto"], check=False)
    assert_refused(
        result, "invalid progress.json (expected an object, got list)", "could be loaded"
    )
    assert folder_hashes(run_dir) == before


def test_a_full_disk_while_checkpointing_is_reported_and_keeps_earlier_checkpoints(tmp_path):
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "mounting a tmpfs needs root")
    args = tiny_run("--checkpoint-every", "3", "--width", "8", "--head-hidden", "64", epochs=3)
    probe = tmp_path / "probe"
    run_train([*args, "--epochs", "1", "--output-dir", probe])
    newest = sorted(glob.glob(f"{probe}/checkpoints/step-*"))[-1]
    checkpoint_bytes = sum(os.path.getsize(p) for p in glob.glob(f"{newest}/*"))
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for two checkpoints and half of a third.
    size_kib = (2 * checkpoint_bytes + checkpoint_bytes // 2 + 64 * 1024) // 1024
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", disk], check=True)
    try:
        run_dir = disk / "run"
        result = run_train([*args, "--output-dir", run_dir], check=False)
        assert result.returncode == 74, (result.stdout, result.stderr)
        message = " ".join(result.stderr.split())
        assert "Traceback" not in message and "could not write the checkpoint" in message
        assert "MiB free there" in message and "--resume auto" in message
        assert not glob.glob(f"{run_dir}/checkpoints/tmp-*")
        kept = sorted(glob.glob(f"{run_dir}/checkpoints/step-*"))
        assert len(kept) == 2
        copy = tmp_path / "moved"
        shutil.copytree(run_dir, copy)
    finally:
        subprocess.run(["umount", disk], check=True)
    run_train([*args, "--output-dir", copy, "--resume", "auto"])
    assert [r["epoch"] for r in read_metrics(copy)] == [1, 2, 3]


def test_only_step_folders_are_checkpoints_a_backup_is_neither_loaded_nor_pruned(tmp_path):
    from cifar.record import list_checkpoints

    root = tmp_path / "checkpoints"
    for name in ("step-000000003", "step-000000009", "step-000000003.bak", "tmp-step-000000012"):
        (root / name).mkdir(parents=True)
    (root / "step-000000010").write_text("a file, not a checkpoint")
    found = [os.path.basename(p) for p in list_checkpoints(str(root))]
    assert found == ["step-000000003", "step-000000009"]


def test_a_tail_that_follows_from_other_changed_settings_is_not_blamed_on_an_older_version():
    from cifar.checkpoint import ACCUMULATION_TAIL, refuse_other_settings, settings_differences
    from cifar.errors import UserError

    before = {"batch_size": 32, "gradient_accumulation_steps": 2, "train_images": 256}
    now = {**before, "batch_size": 16, ACCUMULATION_TAIL: 1}  # this version, a new batch size
    with pytest.raises(UserError) as error:
        refuse_other_settings(settings_differences(before, now), "runs/x/checkpoints/step-4")
    message = str(error.value)
    assert "(batch_size: 32 -> 16)" in message and ACCUMULATION_TAIL not in message
    assert "older" not in message and "that version" not in message
    assert "Resume with the run's own settings" in message


def test_tf32_is_compared_once_recorded_and_not_before():
    from cifar.checkpoint import settings_differences

    now = {"batch_size": 32, "tf32": False}
    assert settings_differences({"batch_size": 32}, now) == {}  # before --tf32: neither value
    assert settings_differences({"batch_size": 32, "tf32": True}, now) == {"tf32": (True, False)}


def test_a_run_begun_without_test_time_flips_is_told_of_no_tta():
    from cifar.checkpoint import refuse_other_settings, settings_differences
    from cifar.errors import UserError

    before = {"dataset": "fashion-mnist"}  # before --tta: read as without it
    differences = settings_differences(before, {**before, "tta": True})
    assert differences == {"tta": (False, True)}
    with pytest.raises(UserError, match="--no-tta scores it without test-time flips"):
        refuse_other_settings(differences, "runs/x/checkpoints/step-4")
