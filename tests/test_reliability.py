"""Nothing a user or a cluster does loses a run: exact resume, safe checkpoints, clear errors."""

import glob
import os
import pickle
import signal
import subprocess

import pytest
from safetensors.torch import load_file

from tests.helpers import (
    SMOKE,
    Payload,
    comparable_metrics,
    final_weights,
    folder_hashes,
    max_difference,
    read_json,
    read_metrics,
    run_train,
    start_train,
    tiny_run,
    train_in_process,
    wait_for_checkpoint,
)


def resumable(batch: int) -> list[str]:
    """16 steps per epoch (1 process, batch 64, or 2 processes, batch 32), checkpoints every 5."""
    return tiny_run(
        "--checkpoint-every", "5", "--dropout", "0.1", "--deterministic", batch=batch, epochs=3
    )


def kill_run(process: subprocess.Popen, run_dir) -> None:
    """SIGKILL the launcher and every process training into run_dir (torchrun's workers run in
    sessions of their own, outside the launcher's process group)."""
    os.killpg(process.pid, signal.SIGKILL)
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                if str(run_dir).encode() in f.read():
                    os.kill(int(cmdline.split("/")[2]), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    process.wait()


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_in_epoch_two_then_resume_equals_an_uninterrupted_run(tmp_path, processes):
    kind = "python" if processes == 1 else "torchrun"
    args = resumable(batch=64 // processes)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_train([*args, "--output-dir", whole], kind=kind, processes=processes)

    process = start_train([*args, "--output-dir", killed], kind, processes)
    wait_for_checkpoint(killed, after_step=16, process=process)  # inside epoch 2 (steps 17-32)
    kill_run(process, killed)
    assert len(read_metrics(killed)) == 1
    run_train([*args, "--output-dir", killed, "--resume", "auto"], kind=kind, processes=processes)

    assert max_difference(final_weights(whole), final_weights(killed)) == 0.0
    expected, resumed = comparable_metrics(whole), comparable_metrics(killed)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(expected, resumed, strict=True):
        assert a == pytest.approx(b, rel=1e-12, abs=0)


def test_sigterm_saves_a_checkpoint_and_exits_for_requeue(tmp_path):
    args = [*resumable(batch=64), "--output-dir", tmp_path]
    process = start_train(args)
    wait_for_checkpoint(tmp_path, after_step=5, process=process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 75, output
    assert "SIGTERM: checkpoint saved" in output
    progress = read_json(sorted(glob.glob(f"{tmp_path}/checkpoints/step-*/progress.json"))[-1])
    assert progress["global_step"] > 5
    run_train([*args, "--resume", "auto"])
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]


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
    assert f"skipping checkpoint {newest}" in result.stderr
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


def test_a_pickle_payload_in_the_weights_cache_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    with open(cache / "resnet50-11ad3fa6.pth", "wb") as f:
        pickle.dump({"conv1.weight": Payload(str(marker))}, f)
    result = run_train(
        [*SMOKE, "--model", "resnet50", "--output-dir", tmp_path / "run"],
        env={"TORCH_HOME": str(tmp_path / "torch")},
        check=False,
    )
    assert not marker.exists()
    assert result.returncode == 2 and "could not be loaded" in result.stderr


def test_non_finite_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path):
    result = run_train(
        [
            *SMOKE,
            "--epochs",
            3,
            "--lr",
            "1e6",
            "--scheduler",
            "none",
            "--log-every",
            "1",
            "--checkpoint-every",
            "1",
            "--output-dir",
            tmp_path,
        ],
        check=False,
    )
    assert result.returncode == 1
    assert "became NaN or infinite at optimizer step" in result.stderr
    assert "Traceback" not in result.stderr
    folders = glob.glob(f"{tmp_path}/checkpoints/step-*")
    assert folders  # the steps before the divergence were saved
    for folder in folders:
        weights = load_file(f"{folder}/model.safetensors")
        assert all(t.isfinite().all() for t in weights.values()), folder


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    run_train([*SMOKE, "--output-dir", run_dir])
    return run_dir


def bad_inputs(tmp: str):
    """(flags, what the message must say) for each user mistake."""
    os.makedirs(f"{tmp}/empty", exist_ok=True)
    with open(f"{tmp}/bad.yaml", "w") as f:
        f.write("epochs: [1,\n")
    with open(f"{tmp}/bad.json", "w") as f:
        f.write('{"epochs": 1,}')
    with open(f"{tmp}/a-file", "w") as f:
        f.write("x")
    return [
        (["--model", "vgg"], "invalid choice: 'vgg'"),
        (["--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["--dataset", "fashion-mnist", "--data-dir", f"{tmp}/missing"], "could not be downloaded"),
        (["--dataset", "cifar10", "--data-dir", f"{tmp}/empty"], "cifar-10-python.tar.gz"),
        (["--dataset", "imagefolder", "--data-dir", f"{tmp}/empty"], "does not exist"),
        (["--model", "resnet50"], "are not cached at"),
        (["--resume", f"{tmp}/empty"], "no checkpoint there"),
        (["--batch-size", "4096"], "fewer than one optimizer step"),
        (["--mixed-precision", "fp16"], "fp16 mixed precision needs a GPU"),
        (["--config", f"{tmp}/bad.yaml"], "is not valid YAML"),
        (["--config", f"{tmp}/bad.json"], "is not valid JSON"),
        (
            ["--model", "resnet50", "--no-pretrained", "--image-size", "32"],
            "differ from the ones it was trained with (model: 'cnn' -> 'resnet50'",
        ),
    ]


def test_each_bad_input_gives_its_message_exit_2_and_touches_nothing(
    earlier_run, tmp_path, monkeypatch
):
    """Each mistake, made on a new run folder (which is not left behind) and on an existing
    run (which is not touched). In this process: an exception escaping main() fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    before = folder_hashes(earlier_run)
    fresh = tmp_path / "fresh"
    for flags, message in bad_inputs(str(tmp_path)):
        resuming = flags[0] == "--resume" or "trained with" in message
        run_dir = earlier_run if resuming else fresh
        resume = [] if flags[0] == "--resume" else ["--resume", "auto"]
        code, _, err = train_in_process(
            [str(arg) for arg in [*SMOKE, "--output-dir", run_dir, *resume, *flags]]
        )
        assert code == 2, (flags, err)
        assert message in " ".join(err.split()), (flags, err)
        assert "Traceback" not in err, flags
        assert folder_hashes(earlier_run) == before, flags
        assert not fresh.exists(), flags


def test_unwritable_output_folder_and_existing_run_are_refused(earlier_run, tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = run_train([*SMOKE, "--output-dir", tmp_path / "a-file" / "run"], check=False)
    assert result.returncode == 2 and "cannot write to the run folder" in result.stderr
    before = folder_hashes(earlier_run)
    result = run_train([*SMOKE, "--output-dir", earlier_run], check=False)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert folder_hashes(earlier_run) == before


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path):
    result = run_train([*SMOKE, "--output-dir", tmp_path / "new", "--resume", "auto"])
    assert "resuming" not in result.stdout
    assert [r["epoch"] for r in read_metrics(tmp_path / "new")] == [1]
    assert not (tmp_path / "new" / "resume.jsonl").exists()
