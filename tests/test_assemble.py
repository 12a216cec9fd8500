"""cifar/assemble.py: where a run starts: a finished run is left as it is, and a folder holding a
run never continues another run's checkpoint."""

import os

from tests.helpers import SMOKE, assert_refused, folder_hashes, run_train


def test_resuming_a_finished_run_changes_no_file_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*SMOKE, "--output-dir", run_dir])
    before = folder_hashes(run_dir)
    result = run_train([*SMOKE, "--output-dir", run_dir, "--resume", "auto"])
    assert "is finished (1 epochs); nothing to do, no file changed" in result.stderr
    assert "resuming" not in result.stdout
    assert folder_hashes(run_dir) == before


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
