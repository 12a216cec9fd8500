"""cifar/assemble.py: where a run starts: a finished run is left as it is, and a folder holding a
run never continues another run's checkpoint."""

import json
import os
import shutil

from tests.helpers import SMALL, SMOKE, assert_refused, folder_hashes, read_json, run_train


def test_resuming_a_finished_run_changes_no_file_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*SMOKE, "--output-dir", run_dir])
    before = folder_hashes(run_dir)
    result = run_train([*SMOKE, "--output-dir", run_dir, "--resume", "auto"])
    assert "is finished (1 epochs); nothing to do, no file changed" in result.stderr
    assert "resuming" not in result.stdout
    assert folder_hashes(run_dir) == before


def test_a_finished_run_whose_summary_was_lost_says_it_writes_it_not_that_it_resumes(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*SMALL, "--output-dir", run_dir])  # 1 epoch of 4 steps
    timing = ("wall_seconds", "train_images_per_second")
    summary = {k: v for k, v in read_json(run_dir / "summary.json").items() if k not in timing}
    os.remove(run_dir / "summary.json")
    result = run_train([*SMALL, "--output-dir", run_dir, "--resume", "auto"])
    assert "resuming at epoch" not in result.stdout, result.stdout
    assert (
        f"run folder {run_dir}, all 1 epochs trained: writing its results again from the "
        f"checkpoint of step 4\n"
    ) in result.stdout
    again = read_json(run_dir / "summary.json")
    assert {k: v for k, v in again.items() if k not in timing} == summary


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


def test_the_largest_seed_holds_for_every_rank_of_two_processes(tmp_path):
    """Each process seeds with seed + rank, wrapped into the range set_seed accepts."""
    run_train([*SMOKE, "--seed", "4294967295", "--output-dir", tmp_path / "run"],
              kind="torchrun", processes=2)  # fmt: skip
    assert (tmp_path / "run" / "summary.json").is_file()


def test_a_simple_cnn_run_that_recorded_an_unused_image_size_resumes_without_it(tmp_path):
    """Versions that took --image-size 1024 for SimpleCNN recorded it in the checkpoint's
    settings and config.json; it never changed the run, so resuming without it continues."""
    run_dir = tmp_path / "run"
    args = [*SMALL, "--epochs", "2", "--output-dir", run_dir]
    run_train(args)
    (run_dir / "summary.json").unlink()
    shutil.rmtree(run_dir / "checkpoints" / "step-000000008")
    for path in (run_dir / "checkpoints" / "step-000000004" / "progress.json",
                 run_dir / "config.json"):  # fmt: skip
        record = read_json(path)
        record.get("settings", record)["image_size"] = 1024
        path.write_text(json.dumps(record))
    before = folder_hashes(run_dir)
    refused = run_train([*args, "--resume", "auto", "--image-size", "1024"], check=False)
    assert_refused(refused, "--model cnn takes 32 x 32 images", "resumes without it")
    assert folder_hashes(run_dir) == before
    resumed = run_train([*args, "--resume", "auto"])
    assert "resuming at epoch 2 step 4" in resumed.stdout
    assert (run_dir / "summary.json").is_file()
