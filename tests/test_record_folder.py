"""cifar/record/folder.py: a run folder is owned by one run: a folder train.py did not make, one
that holds a run, one another run is using, or one it cannot write is refused untouched, and a
failed start leaves nothing behind."""

import time

from cifar.record import RunFolder
from tests.helpers import (
    SMALL,
    SMOKE,
    assert_refused,
    folder_hashes,
    make_image_folders,
    read_json,
    read_metrics,
    run_train,
    start_train,
    tiny_run,
    train_in_process,
)


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


def test_unwritable_output_folder_and_existing_run_are_refused(earlier_run, tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = run_train([*SMOKE, "--output-dir", tmp_path / "a-file" / "run"], check=False)
    assert result.returncode == 2 and "cannot write to the run folder" in result.stderr
    before = folder_hashes(earlier_run)
    result = run_train([*SMOKE, "--output-dir", earlier_run], check=False)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert folder_hashes(earlier_run) == before


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


def test_runs_started_in_one_second_without_an_output_dir_get_a_folder_each(tmp_path, monkeypatch):
    """The default folder is named by the second: another run started in it (another seed, a
    script starting several) is a run of its own, not a clash with the first."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(time, "strftime", lambda *args: "20260101-120000")
    first = tmp_path / "runs" / "cnn-synthetic-20260101-120000"
    running = RunFolder.claim(str(first), resume=False, fresh=True)  # a run training there
    try:
        assert running.path == str(first)
        for seed, name in ((1, "-2"), (2, "-3")):  # -2 holds a finished run once the first ends
            code, out, err = train_in_process([*SMALL, "--seed", str(seed)])
            assert code == 0, err
            assert f"run folder {first}{name}\n" in out, out
            assert read_json(f"{first}{name}/config.json")["seed"] == seed
        assert sorted(p.name for p in first.iterdir()) == ["run.lock"]
    finally:
        running.release()
