"""cifar/trackers.py: the adapters of W&B (offline, disabled, without credentials), TensorBoard
and none, each read back from the files it writes (W&B's offline log with tests.helpers'
read_wandb_records)."""

import json
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from cifar.record import METRIC_KEYS, metric_values
from tests.helpers import (
    ROOT,
    SMOKE,
    assert_refused,
    isolated_home,
    offline_logs,
    read_json,
    read_metrics,
    read_wandb_records,
    require_package,
    run_train,
    train_env,
    wandb_history,
    wandb_run_record,
    wandb_summary,
    warning_lines,
)


def tracked(run_dir: Path, tracker: str, *extra) -> list:
    return [*SMOKE, "--tracker", tracker, "--log-every", "4", "--output-dir", run_dir, *extra]


def test_offline_wandb_log_holds_every_metric_and_the_summary(tmp_path):
    require_package("wandb")
    run_dir = tmp_path / "run"
    run_train(tracked(run_dir, "wandb", "--tags", "smoke"), env={"WANDB_MODE": "offline"})

    logs = offline_logs(run_dir)
    assert len(logs) == 1, list(run_dir.glob("wandb/*"))
    records = read_wandb_records(logs[0])
    run_id = read_json(run_dir / "tracker.json")["run_id"]
    assert logs[0].name == f"run-{run_id}.wandb"
    run = wandb_run_record(records)
    assert (run.run_id, run.project) == (run_id, "cifar-accelerate")
    assert run.run_group == "synthetic-study"
    assert set(run.tags) == {"smoke", "cnn", "synthetic"}

    config = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update if i.key})
    assert (config["model"], config["batch_size"], config["log_every"]) == ("cnn", 64, 4)

    history = wandb_history(records)
    steps = [row["_step"] for row in history if "train/step_loss" in row]
    assert steps == [4, 8, 12, 16]  # 1024 images / batch 64 = 16 steps, logged every 4
    assert all("lr" in row for row in history if "train/step_loss" in row)
    metrics = read_metrics(run_dir)
    epoch_rows = [row for row in history if "epoch/test_accuracy" in row]
    assert len(epoch_rows) == len(metrics) == 1
    for key in METRIC_KEYS:
        assert epoch_rows[0][f"epoch/{key}"] == pytest.approx(metrics[0][key], rel=1e-12), key

    summary = read_json(run_dir / "summary.json")
    final = wandb_summary(records)
    for key, value in metric_values(summary).items():  # all but the file's format version
        assert final[key] == value, key
    assert final["test_accuracy"] == summary["test_accuracy"] == metrics[-1]["test_accuracy"]
    assert epoch_rows[0]["summary/test_accuracy"] == summary["test_accuracy"]
    for name, accuracy in summary["per_class_accuracy"].items():
        assert epoch_rows[0][f"summary/per_class_accuracy/{name}"] == pytest.approx(accuracy)

    # The end-of-run tables: per-class accuracy, the confusion matrix, 32 sample predictions.
    # W&B stores logged tables as artifacts, staged (offline) inside the run folder.
    assert epoch_rows[0]["test/samples/nrows"] == 32
    assert epoch_rows[0]["test/confusion_matrix_table/nrows"] == 10 * 10
    staged = {
        entry.path: Path(entry.local_path)
        for record in records
        if record.WhichOneof("record_type") == "artifact"
        for entry in record.artifact.manifest.contents
    }
    assert all(path.is_relative_to(run_dir / "wandb") for path in staged.values())
    images = [name for name in staged if name.startswith("media/images/")]
    assert len(images) == 32
    assert all(staged[name].read_bytes()[:4] == b"\x89PNG" for name in images)
    samples = json.loads(staged["test/samples.table.json"].read_text())
    assert samples["columns"] == ["image", "label", "prediction", "confidence", "correct"]
    assert len(samples["data"]) == 32
    assert all(row[4] == (row[1] == row[2]) for row in samples["data"])
    assert all(row[1] in summary["classes"] and 0 < row[3] <= 1 for row in samples["data"])
    cells = json.loads(staged["test/confusion_matrix_table.table.json"].read_text())
    counts = {(a, p): n for a, p, n in cells["data"]}
    classes = summary["classes"]
    assert [[counts[a, p] for p in classes] for a in classes] == summary["confusion_matrix"]


def test_wandb_without_api_key_or_mode_falls_back_to_offline(tmp_path):
    require_package("wandb")
    run_dir = tmp_path / "run"
    result = run_train(tracked(run_dir, "wandb"), env=isolated_home(tmp_path), timeout=180)

    warning = (
        f"warning: no W&B credentials found (`wandb login`, WANDB_API_KEY): logging offline to "
        f"{run_dir}; upload later with `wandb sync {run_dir}/wandb/offline-run-*`"
    )
    assert warning_lines(result.stderr) == [warning], result.stderr
    assert result.stderr.count("logging offline") == 1
    output = result.stdout + result.stderr
    # wandb's quiet output: its offline notice, not the banner, the environment it read
    # before the mode was chosen, the tables of history and summary or the log folder.
    for noise in ("Changes to your `wandb` environment", "Tracking run with wandb version",
                  "Run history", "Run summary", "Find logs at"):  # fmt: skip
        assert noise not in output, output
    logs = offline_logs(run_dir)
    assert len(logs) == 1
    # Its tables are staged in the run folder, though wandb had read the environment before.
    assert list((run_dir / "wandb" / "artifacts" / "staging").iterdir())
    assert not (tmp_path / "home" / ".local" / "share" / "wandb").exists()
    summary = wandb_summary(read_wandb_records(logs[0]))
    assert summary["test_accuracy"] == read_json(run_dir / "summary.json")["test_accuracy"]
    assert f"wandb sync {logs[0].parent}" in result.stdout


def test_a_start_that_fails_names_no_wandb_folder_to_sync(tmp_path):
    """The offline warning comes when the W&B run starts: a start refused before it (and
    the new run folder removed) names no folder to upload."""
    require_package("wandb")
    run_dir = tmp_path / "run"
    args = tracked(run_dir, "wandb", "--batch-size", "2048")  # more than the 1024 images
    result = run_train(args, env=isolated_home(tmp_path), check=False, timeout=180)
    assert_refused(result, "the training set has 1024 images, fewer than one optimizer step")
    assert "wandb" not in result.stdout + result.stderr and not run_dir.exists()


def test_wandb_key_without_network_goes_offline_and_trains(tmp_path):
    require_package("wandb")
    from cifar.trackers import WANDB_PROBE_SECONDS

    run_dir = tmp_path / "run"
    # A well-formed key for a server that cannot be reached (no such host).
    env = {
        **isolated_home(tmp_path),
        "WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567",
        "WANDB_BASE_URL": "https://wandb.invalid",
    }
    result = run_train(tracked(run_dir, "wandb"), env=env, timeout=180)

    warning = f"https://wandb.invalid did not answer within {WANDB_PROBE_SECONDS} s"
    assert result.stderr.count(warning) == 1, result.stderr
    assert f"wandb sync {run_dir}/wandb/offline-run-*" in result.stderr
    assert "Traceback" not in result.stderr
    logs = offline_logs(run_dir)
    assert len(logs) == 1
    summary = wandb_summary(read_wandb_records(logs[0]))
    assert summary["test_accuracy"] == read_json(run_dir / "summary.json")["test_accuracy"]


@pytest.mark.parametrize(
    "credential",
    [
        {"WANDB_API_KEY": "f" * 40},
        {"WANDB_BASE_URL": "https://wandb.example.com", "netrc": "wandb.example.com"},
        {"WANDB_IDENTITY_TOKEN_FILE": "token"},
    ],
    ids=["api-key", "self-hosted-netrc", "identity-token"],
)
def test_wandb_credentials_are_found_the_way_wandb_finds_them(tmp_path, credential):
    require_package("wandb")
    env = isolated_home(tmp_path)

    def found() -> bool:
        code = "from cifar.trackers import wandb_has_credentials as f; print(f())"
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=train_env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip() == "True"

    assert not found()
    credential = dict(credential)
    host = credential.pop("netrc", None)
    if host:
        netrc = tmp_path / "home" / ".netrc"
        netrc.write_text(f"machine {host}\n  login user\n  password {'b' * 40}\n")
        netrc.chmod(0o600)
        del env["NETRC"]
    if "WANDB_IDENTITY_TOKEN_FILE" in credential:
        (tmp_path / "token").write_text("a.b.c")
        credential["WANDB_IDENTITY_TOKEN_FILE"] = str(tmp_path / "token")
    env.update(credential)
    assert found()


def test_wandb_online_without_credentials_stops_before_any_work(tmp_path):
    require_package("wandb")
    run_dir = tmp_path / "run"
    env = {**isolated_home(tmp_path), "WANDB_MODE": "online"}
    result = run_train(tracked(run_dir, "wandb"), env=env, check=False, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "WANDB_MODE=online, but wandb finds no credentials" in result.stderr
    assert "wandb login" in result.stderr and "WANDB_MODE=offline" in result.stderr
    assert not run_dir.exists()


def test_wandb_disabled_mode_trains_and_writes_no_wandb_files(tmp_path):
    require_package("wandb")
    run_dir = tmp_path / "run"
    result = run_train(tracked(run_dir, "wandb"), env={"WANDB_MODE": "disabled"}, timeout=180)
    assert (run_dir / "summary.json").is_file()
    assert not offline_logs(run_dir)
    assert "no W&B credentials" not in result.stderr


def test_missing_tracker_package_is_a_clear_error():
    # A None entry in sys.modules makes importlib report the package as not installed.
    code = (
        "import runpy, sys; sys.modules['wandb'] = None; "
        "sys.argv = ['train.py', '--dataset', 'synthetic', '--tracker', 'wandb']; "
        "runpy.run_path('train.py', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "--tracker wandb needs the wandb package" in result.stderr
    assert "pip install wandb" in result.stderr and "--tracker none" in result.stderr
    assert "Traceback" not in result.stderr


def test_tensorboard_writes_event_files_with_the_run_metrics(tmp_path):
    require_package("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    run_train(tracked(run_dir, "tensorboard"))

    events = list((run_dir / "tensorboard").glob("**/events.out.tfevents.*"))
    assert events, list(run_dir.iterdir())
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    accumulator.Reload()
    scalars = {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}
    assert [e.step for e in scalars["train/step_loss"]] == [4, 8, 12, 16]
    metrics = read_metrics(run_dir)
    for key in METRIC_KEYS:
        assert scalars[f"epoch/{key}"][-1].value == pytest.approx(metrics[-1][key], rel=1e-6)
    summary = read_json(run_dir / "summary.json")
    assert scalars["summary/test_accuracy"][-1].value == pytest.approx(summary["test_accuracy"])
    for name, accuracy in summary["per_class_accuracy"].items():
        assert scalars[f"summary/per_class_accuracy/{name}"][-1].value == pytest.approx(accuracy)
    images = {"test/per_class_accuracy", "test/confusion_matrix", "test/samples"}
    assert set(accumulator.Tags()["images"]) == images


def test_resumed_run_continues_the_same_wandb_run(tmp_path):
    require_package("wandb")
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline"}
    two_epochs = ("--epochs", "2")
    run_train(tracked(run_dir, "wandb", *two_epochs), env=env)
    run_id = read_json(run_dir / "tracker.json")["run_id"]
    # Lose the end of the run (its last checkpoint and summary): resume from epoch 1's.
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    shutil.rmtree(newest)
    (run_dir / "summary.json").unlink()
    run_train(tracked(run_dir, "wandb", *two_epochs, "--resume", "auto"), env=env)

    assert read_json(run_dir / "tracker.json")["run_id"] == run_id
    logs = offline_logs(run_dir)
    assert [log.name for log in logs] == [f"run-{run_id}.wandb"] * 2
    first, second = (read_wandb_records(log) for log in logs)
    assert wandb_run_record(first).run_id == wandb_run_record(second).run_id == run_id
    epochs = [row["epoch/epoch"] for row in wandb_history(second) if "epoch/epoch" in row]
    assert epochs == [2]  # the resumed part logs only the epoch it trained
    steps = [row["_step"] for row in wandb_history(second) if "train/step_loss" in row]
    assert steps == [20, 24, 28, 32]
    summary = read_json(run_dir / "summary.json")
    assert summary["epochs"] == 2 and len(read_metrics(run_dir)) == 2
    assert wandb_summary(second)["test_accuracy"] == summary["test_accuracy"]


def summary_of_three_classes() -> dict:
    """A summary.json of a 3-class run, as evaluation.summarize writes it."""
    matrix = [[4, 1, 0], [0, 5, 0], [2, 0, 3]]
    classes = ["cat", "dog", "emu"]
    return {
        "model": "cnn",
        "dataset": "synthetic",
        "epochs": 1,
        "test_accuracy": 12 / 15,
        "test_loss": 0.5,
        "per_class_accuracy": {
            c: row[i] / sum(row) for i, (c, row) in enumerate(zip(classes, matrix, strict=True))
        },
        "confusion_matrix": matrix,
        "classes": classes,
        "wall_seconds": 2.5,
    }


@pytest.mark.parametrize("name", ["wandb", "tensorboard"])
def test_a_tracker_without_its_package_is_refused_in_one_paragraph(name, monkeypatch):
    from cifar.errors import UserError
    from cifar.trackers import tracker_named

    monkeypatch.setitem(sys.modules, name, None)  # importlib then finds no such package
    with pytest.raises(UserError) as refusal:
        tracker_named(name).check()
    assert str(refusal.value) == (
        f"--tracker {name} needs the {name} package, which is not installed. Run `pip install "
        f"{name}`, or train without a tracker: --tracker none."
    )


def test_the_trackers_join_the_accelerator_as_their_adapter_says(monkeypatch):
    from cifar.build import make_accelerator
    from cifar.config import TRACKERS, Config
    from cifar.trackers import REGISTRY

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert TRACKERS == tuple(REGISTRY) == ("wandb", "tensorboard", "none")
    # Accelerate leaves out a tracker whose package is missing (a run is refused before).
    installed = [n for n in TRACKERS if not REGISTRY[n].package or find_spec(REGISTRY[n].package)]
    joined = {name: [str(t) for t in make_accelerator(Config(tracker=name)).log_with]
              for name in installed}  # fmt: skip
    # W&B as the Accelerator is made; TensorBoard later, in start(), once the run folder is known.
    expected = {"wandb": ["wandb"], "tensorboard": [], "none": []}
    assert joined == {name: expected[name] for name in installed}


def test_none_needs_no_package_and_starts_and_logs_nothing(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from cifar.config import Config
    from cifar.trackers import tracker_named

    for package in ("wandb", "tensorboard"):
        monkeypatch.setitem(sys.modules, package, None)
    none = tracker_named("none")
    none.check()
    config = Config(tracker="none")
    accelerator = Accelerator(cpu=True)
    kwargs = none.prepare(config, str(tmp_path), True)
    none.start(accelerator, config, str(tmp_path), kwargs, config.to_dict())
    none.log_run_end(accelerator, None, summary_of_three_classes())  # None: it reads no run
    assert (kwargs, accelerator.trackers, none.sync_hint(accelerator)) == ({}, [], "")
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_adapter_logs_config_and_end_of_run_figures_read_back(tmp_path):
    require_package("tensorboard")
    import numpy as np
    from accelerate import Accelerator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cifar.config import Config
    from cifar.trackers import tracker_named

    tensorboard = tracker_named("tensorboard")
    config = Config(tracker="tensorboard", tags=["a", "b"])
    accelerator = Accelerator(cpu=True)
    tensorboard.start(accelerator, config, str(tmp_path), {}, config.to_dict())
    summary = summary_of_three_classes()
    samples = {
        "images": np.zeros((2, 8, 8, 3), dtype=np.uint8),
        "labels": ["cat", "dog"],
        "predictions": ["cat", "emu"],
        "confidences": [0.9, 0.4],
    }
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    tensorboard.log_end(writer, summary, samples, step=7)
    accelerator.end_training()

    hparams = (tmp_path / "tensorboard").glob("*/hparams.yml")
    assert "tags: '[''a'', ''b'']'" in next(hparams).read_text()  # a list, as its text
    accumulator = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    accumulator.Reload()
    scalars = {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}
    for name, accuracy in summary["per_class_accuracy"].items():
        (event,) = scalars[f"summary/per_class_accuracy/{name}"]
        assert (event.step, event.value) == (7, pytest.approx(accuracy))
    assert scalars["summary/test_accuracy"][0].value == pytest.approx(0.8)
    images = {tag: accumulator.Images(tag) for tag in accumulator.Tags()["images"]}
    assert set(images) == {"test/per_class_accuracy", "test/confusion_matrix", "test/samples"}
    assert all(e.step == 7 and e.encoded_image_string[:4] == b"\x89PNG" for (e,) in images.values())
    assert tensorboard.sync_hint(accelerator) == ""


@pytest.mark.fast
def test_a_class_without_test_image_is_logged_by_no_tracker(tmp_path):
    require_package("tensorboard")
    from accelerate import Accelerator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cifar.config import Config
    from cifar.trackers import per_class_rows, summary_scalars, tracker_named

    summary = summary_of_three_classes()
    summary["confusion_matrix"][1] = [0, 0, 0]  # no dog among the test images
    summary["per_class_accuracy"]["dog"] = None
    # W&B's per-class table and every tracker's scalars: cat and emu only, no 0 for dog.
    assert per_class_rows(summary) == [["cat", 0.8], ["emu", 0.6]]
    per_class = {k: v for k, v in summary_scalars(summary).items() if "per_class" in k}
    assert per_class == {
        "summary/per_class_accuracy/cat": 0.8,
        "summary/per_class_accuracy/emu": 0.6,
    }
    tensorboard = tracker_named("tensorboard")
    config = Config(tracker="tensorboard")
    accelerator = Accelerator(cpu=True)
    tensorboard.start(accelerator, config, str(tmp_path), {}, config.to_dict())
    tensorboard.log_end(accelerator.get_tracker("tensorboard", unwrap=True), summary, None, 3)
    accelerator.end_training()
    accumulator = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    accumulator.Reload()
    logged = sorted(t for t in accumulator.Tags()["scalars"] if "per_class" in t)
    assert logged == ["summary/per_class_accuracy/cat", "summary/per_class_accuracy/emu"]
    assert "test/per_class_accuracy" in accumulator.Tags()["images"]


def test_sample_predictions_are_scored_as_the_summary_is_with_the_ema_and_flips():
    """The logged sample table comes from the weights and inputs summary.json scores."""
    from types import SimpleNamespace

    import torch
    from accelerate import Accelerator

    from cifar.trackers import predict_samples

    class LeftAgainstRight(torch.nn.Module):
        """Class 0's logit: the left half's mean; class 1's: the right half's, plus bias."""

        def __init__(self, bias: float):
            super().__init__()
            self.bias = bias

        def forward(self, x):
            half = x.shape[-1] // 2
            left, right = x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))
            return torch.stack([left, right + self.bias], dim=1)

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    images[..., :4] = 2  # brighter on the left: class 0, unless flipped and averaged
    trained, average = LeftAgainstRight(bias=0.0), LeftAgainstRight(bias=5.0)
    run = SimpleNamespace(
        model=trained,
        scored_model=average,
        test_loader=[(images, torch.zeros(4, dtype=torch.long))],
        to_input=lambda batch: batch.float(),
        classes=["left", "right"],
    )
    accelerator = Accelerator(cpu=True)
    plain = predict_samples(accelerator, run, 4)
    assert plain["predictions"] == ["right"] * 4  # the average's bias, not the trained model
    flipped = predict_samples(accelerator, run, 4, tta=True)
    # With flips the halves' means are equal: only the bias decides, by exactly 5 logits.
    expected = torch.tensor([0.0, 5.0]).softmax(0)[1].item()
    assert flipped["confidences"] == pytest.approx([expected] * 4, abs=1e-6)
    assert plain["confidences"][0] < expected
