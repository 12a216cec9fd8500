"""A run folder is a record: owned by one run, resumed only under its own settings, never lost."""

import glob
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from cifar.config import Config
from tests.helpers import (
    SMOKE,
    assert_refused,
    folder_hashes,
    make_image_folders,
    read_json,
    read_metrics,
    require,
    run_train,
    start_train,
    tiny_run,
    wait_for_checkpoint,
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


def test_resuming_a_finished_run_changes_no_file_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*SMOKE, "--output-dir", run_dir])
    before = folder_hashes(run_dir)
    result = run_train([*SMOKE, "--output-dir", run_dir, "--resume", "auto"])
    assert "is finished (1 epochs); nothing to do, no file changed" in result.stderr
    assert "resuming" not in result.stdout
    assert folder_hashes(run_dir) == before


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


def test_a_folder_not_made_by_train_py_is_refused_untouched(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "config.json").write_text('{"mine": true}')
    (folder / "summary.json").write_text('{"accuracy": 0.99}')
    before = folder_hashes(folder)
    for resume in ([], ["--resume", "auto"]):
        result = run_train([*SMOKE, "--output-dir", folder, *resume], check=False)
        assert_refused(result, f"the folder {folder} is not empty", "was not made by train.py")
        assert folder_hashes(folder) == before


def test_a_failed_start_leaves_nothing_that_blocks_the_same_command(tmp_path):
    images = tmp_path / "images"
    fresh, empty = tmp_path / "fresh", tmp_path / "empty"
    empty.mkdir()
    folder_args = ["--dataset", "imagefolder", "--data-dir", images, "--batch-size", "2"]
    for run_dir in (fresh, empty):
        command = [*SMOKE, *folder_args, "--output-dir", run_dir]
        assert_refused(run_train(command, check=False), "does not exist")
        assert not fresh.exists() and list(empty.iterdir()) == []
    make_image_folders(images, per_class=4, size=(8, 8))
    for run_dir in (fresh, empty):
        run_train([*SMOKE, *folder_args, "--output-dir", run_dir])
        assert read_json(run_dir / "summary.json")["epochs"] == 1


def test_three_runs_started_at_once_on_one_folder_exactly_one_trains(tmp_path):
    run_dir = tmp_path / "run"
    args = [*tiny_run(train=4096, epochs=3), "--output-dir", run_dir]
    processes = {seed: start_train([*args, "--seed", seed]) for seed in (1, 2, 3)}
    refused, winner = {}, None
    deadline = time.time() + 300
    while len(refused) < 2 and time.time() < deadline:
        for seed, process in processes.items():
            if seed not in refused and process.poll() is not None:
                if process.returncode == 0:
                    winner = seed
                else:
                    refused[seed] = (process.returncode, process.stdout.read())
                    # The others are stopped while the winner still trains.
                    assert any(p.poll() is None for p in processes.values()), refused
        time.sleep(0.05)
    assert len(refused) == 2, refused
    for code, output in refused.values():
        assert code == 2 and "Traceback" not in output, output
        assert f"another run is using the run folder {run_dir} (process " in output, output
    (winner,) = set(processes) - set(refused)
    assert processes[winner].wait(timeout=300) == 0, processes[winner].stdout.read()
    assert read_json(run_dir / "config.json")["seed"] == winner
    assert len(read_metrics(run_dir)) == 3


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


def test_ctrl_c_checkpoints_and_exits_for_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run("--checkpoint-every", "5", train=4096, epochs=2)
    process = start_train([*args, "--output-dir", run_dir])
    wait_for_checkpoint(run_dir, after_step=5, process=process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 75, output
    assert "SIGINT: checkpoint saved at step" in output and "Traceback" not in output
    run_train([*args, "--output-dir", run_dir, "--resume", "auto"])
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]


def test_a_second_ctrl_c_stops_at_once_without_a_traceback():
    from cifar.processes import StopRequest

    class OneProcess:
        num_processes = 1

    stop = StopRequest(OneProcess())
    stop.handle(signal.SIGINT, None)
    assert stop.should_stop(1) and stop.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT, None)


def test_ctrl_c_while_setting_up_exits_130_without_a_traceback(tmp_path):
    process = start_train([*SMOKE, "--output-dir", tmp_path / "run"])
    time.sleep(1.0)  # inside the imports or the set-up, before the loop's handler
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode in (130, 75), output
    assert "Traceback" not in output, output


def wait_gone(pid: int, timeout: float) -> bool:
    """True once the process has exited (gone, or a zombie nobody reaps)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_sigterm_to_accelerate_launch_checkpoints_and_stops_the_training(tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run("--checkpoint-every", "5", train=4096, epochs=2)
    process = start_train([*args, "--output-dir", run_dir], kind="accelerate")
    wait_for_checkpoint(run_dir, after_step=5, process=process)
    (training,) = children(process.pid)
    process.send_signal(signal.SIGTERM)  # to the launcher alone
    process.wait(timeout=60)
    assert wait_gone(training, timeout=120), "the training process went on without its launcher"
    output = process.stdout.read()
    assert "SIGTERM: checkpoint saved at step" in output, output
    run_train([*args, "--output-dir", run_dir, "--resume", "auto"])
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]


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


def test_resume_path_never_continues_another_run_over_a_folder_holding_one(tmp_path):
    kept, other = tmp_path / "kept", tmp_path / "other"
    run_train([*SMOKE, "--output-dir", kept])
    run_train([*SMOKE, "--seed", "7", "--output-dir", other])
    os.remove(other / "summary.json")
    before = folder_hashes(kept)
    result = run_train(
        [*SMOKE, "--seed", "7", "--output-dir", kept, "--resume", other], check=False
    )
    assert_refused(result, f"the run folder {kept} already holds a run", "another run's checkpoint")
    assert folder_hashes(kept) == before


def test_only_step_folders_are_checkpoints_a_backup_is_neither_loaded_nor_pruned(tmp_path):
    from cifar.record import list_checkpoints

    root = tmp_path / "checkpoints"
    for name in ("step-000000003", "step-000000009", "step-000000003.bak", "tmp-step-000000012"):
        (root / name).mkdir(parents=True)
    (root / "step-000000010").write_text("a file, not a checkpoint")
    found = [os.path.basename(p) for p in list_checkpoints(str(root))]
    assert found == ["step-000000003", "step-000000009"]
