"""W&B (offline, disabled, without an API key) and TensorBoard through Accelerate's trackers.

Offline W&B runs are read back from their run-<id>.wandb file with wandb's own protobuf
classes: a LevelDB-style log of 32 KiB blocks whose records are wandb_internal_pb2.Record.
"""

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cifar.record import METRIC_KEYS
from tests.conftest import (
    ROOT,
    SMOKE,
    read_json,
    read_metrics,
    require,
    run_train,
    train_env,
)

BLOCK = 32 * 1024
HEADER = 7  # file header: b":W&B", 2 magic bytes, a version byte; each record header: 7 bytes


def require_package(name: str) -> None:
    require(importlib.util.find_spec(name) is not None, f"the {name} package is not installed")


def read_wandb_records(path: Path) -> list:
    """Every Record of a .wandb file, in order."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    records, payload, position = [], b"", HEADER
    while position + HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < HEADER:  # block trailer: zero padding
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if kind == 0:  # zero padding to the end of the block
            position += left_in_block
            continue
        payload += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = Record()
            record.ParseFromString(payload)
            records.append(record)
            payload = b""
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_history(records) -> list[dict]:
    return [
        {item_key(i): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def wandb_summary(records) -> dict:
    """The run summary as W&B holds it at the end: every summary update applied in order."""
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update({item_key(i): json.loads(i.value_json) for i in record.summary.update})
    return summary


def wandb_run_record(records):
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def offline_logs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


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
    for key, value in summary.items():
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
    home = tmp_path / "home"
    home.mkdir()
    run_dir = tmp_path / "run"
    # train_env drops every WANDB_* variable (the API key and WANDB_MODE with them).
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "NETRC": ""}
    result = run_train(tracked(run_dir, "wandb"), env=env, timeout=180)

    assert result.stderr.count("no W&B credentials found") == 1
    assert result.stderr.count("logging offline") == 1
    logs = offline_logs(run_dir)
    assert len(logs) == 1
    summary = wandb_summary(read_wandb_records(logs[0]))
    assert summary["test_accuracy"] == read_json(run_dir / "summary.json")["test_accuracy"]
    assert f"wandb sync {logs[0].parent}" in result.stdout


def isolated_home(tmp_path) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "NETRC": ""}


def test_wandb_key_without_network_goes_offline_and_trains(tmp_path):
    require_package("wandb")
    from cifar.tracking import WANDB_PROBE_SECONDS

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
        code = "from cifar.tracking import wandb_has_credentials as f; print(f())"
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
    assert set(accumulator.Tags()["images"]) == {"test/confusion_matrix", "test/samples"}


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
