"""train.py end to end, as users run it (real data, real launchers, the run folder read back), and
every input a user can type or have: it ends in a run or in one paragraph with exit 2.

Hypothesis draws flag combinations (numeric edges, NaN, inf, junk), tiny data sizes and config
files (any bytes, YAML and JSON as people write them) and runs train.py's main() in this process:
an exception escaping main() is a traceback a user would have seen. CIFAR_HYPOTHESIS_EXAMPLES
raises the number of examples (CI runs the default).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifar.data.tensors import FASHION_FILES
from cifar.record import FORMAT_KEY, FORMAT_VERSION, METRIC_KEYS, SUMMARY_KEYS
from tests.helpers import (
    EXAMPLES,
    FASHION_DIR,
    ROOT,
    SMOKE,
    folder_hashes,
    make_image_folders,
    read_json,
    read_metrics,
    require,
    run_train,
    tiny_run,
    train_env,
    train_in_process,
)


def test_synthetic_run_learns_and_writes_the_run_folder(tmp_path):
    result = run_train([*SMOKE, "--epochs", "2", "--output-dir", tmp_path])
    assert "epoch 2/2" in result.stdout
    config = read_json(tmp_path / "config.json")
    assert config["model"] == "cnn" and config["world_size"] == 1 and config["epochs"] == 2
    metrics = read_metrics(tmp_path)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(list(m) == [FORMAT_KEY, *METRIC_KEYS] for m in metrics)
    assert all(m[FORMAT_KEY] == FORMAT_VERSION for m in metrics)
    summary = read_json(tmp_path / "summary.json")
    assert list(summary) == [FORMAT_KEY, *SUMMARY_KEYS]  # the contract, in order
    assert summary["test_accuracy"] >= 0.9
    assert summary["test_accuracy"] == metrics[-1]["test_accuracy"]
    assert summary["num_test_samples"] == 256
    assert len(summary["per_class_accuracy"]) == 10
    assert os.listdir(tmp_path / "checkpoints")


def test_fashion_mnist_one_epoch_on_20000_images_reaches_85_percent(tmp_path):
    require(
        all(os.path.exists(f"{FASHION_DIR}/{f}.gz") for f in FASHION_FILES),
        "apt-get install dataset-fashion-mnist",
    )
    run_train(
        [
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            FASHION_DIR,
            "--train-subset",
            "20000",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--tracker",
            "none",
            "--output-dir",
            tmp_path / "run",
        ],
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["num_test_samples"] == 10_000
    assert summary["test_accuracy"] >= 0.85, summary["test_accuracy"]


def test_accelerate_launch_end_to_end(tmp_path):
    result = run_train([*SMOKE, "--output-dir", tmp_path], kind="accelerate")
    assert read_json(tmp_path / "summary.json")["test_accuracy"] > 0.5, result.stdout


def test_config_file_and_flag_precedence_end_to_end(tmp_path):
    (tmp_path / "run.yaml").write_text("epochs: 3\nseed: 4\nbatch-size: 32\n")
    run_train(
        [
            *SMOKE,
            "--config",
            tmp_path / "run.yaml",
            "--output-dir",
            tmp_path / "run",
            "--batch-size",
            "128",
        ]
    )
    config = read_json(tmp_path / "run" / "config.json")
    assert (config["epochs"], config["seed"], config["batch_size"]) == (1, 4, 128)


def test_resnet50_transfer_trains_end_to_end_with_and_without_cached_features(tmp_path):
    resnet = [
        "--model",
        "resnet50",
        "--no-pretrained",
        "--freeze",
        "backbone",
        "--image-size",
        "32",
    ]
    tiny = tiny_run(*resnet, "--augment", "none", "--lr", "0.01", train=256, test=64, batch=32)
    run_train([*tiny, "--output-dir", tmp_path / "plain"])
    run_train([*tiny, "--cache-features", "--output-dir", tmp_path / "cached"])
    plain, cached = (read_json(tmp_path / d / "summary.json") for d in ("plain", "cached"))
    assert plain["num_test_samples"] == cached["num_test_samples"] == 64
    # Same frozen features, same head initialisation and batches: the same training.
    assert plain["test_accuracy"] == pytest.approx(cached["test_accuracy"], abs=1 / 64)
    assert plain["test_loss"] == pytest.approx(cached["test_loss"], rel=1e-3)


def test_image_folder_end_to_end(tmp_path):
    make_image_folders(tmp_path / "images", per_class=16)
    run_train(
        [
            "--dataset",
            "imagefolder",
            "--data-dir",
            tmp_path / "images",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--tracker",
            "none",
            "--output-dir",
            tmp_path / "run",
        ]
    )
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["classes"] == ["blue", "red"] and summary["num_test_samples"] == 32
    assert summary["test_accuracy"] == 1.0  # a red or blue image is not hard


def test_main_job_offline_stops_with_the_dataset_message_only(tmp_path):
    result = run_train(
        ["--tracker", "none", "--data-dir", tmp_path / "data", "--output-dir", tmp_path / "run"],
        kind="accelerate",
        check=False,
    )
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert "CIFAR-10 is not in" in message and "--dataset synthetic" in message
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


CPU_CONFIG = ROOT / "accelerate_configs" / "cpu.yaml"


def test_accelerate_launch_quiet_shows_only_our_paragraph_and_exits_1(tmp_path):
    """The documented commands: Accelerate's own default config (`accelerate config default`)
    or a file of accelerate_configs/, and --quiet: our paragraph alone, exit 1 (the launcher's
    code for every failure). Without --quiet the launcher adds its traceback."""
    env = train_env(HF_HOME=str(tmp_path / "hf"), CUDA_VISIBLE_DEVICES="")
    accelerate = str(Path(sys.executable).parent / "accelerate")

    def launch(*args) -> subprocess.CompletedProcess:
        command = [accelerate, *map(str, args)]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)

    plain = launch("launch", "train.py", "--model", "nope")
    assert plain.returncode == 1 and "subprocess.CalledProcessError" in plain.stderr
    assert "were not passed to `accelerate launch`" in plain.stderr
    assert launch("config", "default").returncode == 0
    missing = tmp_path / "no-data"
    before = folder_hashes(tmp_path, folders=True)
    cases = [
        (["--model", "nope"], "error: argument --model: invalid choice: 'nope'"),
        (["--data-dir", missing, "--output-dir", tmp_path / "run"], "error: CIFAR-10 is not in"),
    ]
    for config, (flags, says) in zip(([], ["--config_file", CPU_CONFIG]), cases, strict=True):
        result = launch("launch", "--quiet", *config, "train.py", "--tracker", "none", *flags)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and "were not passed" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(says), result.stderr
        assert folder_hashes(tmp_path, folders=True) == before


def test_prepare_only_readies_data_without_training(tmp_path):
    result = run_train([*SMOKE, "--prepare-only", "--output-dir", tmp_path / "run"])
    assert "dataset synthetic ready" in result.stdout
    assert not (tmp_path / "run").exists()
    json.dumps(result.stdout)


NAN_MESSAGE = "became NaN or infinite"


# Values users type, edges of each range and beyond; sizes stay small so each run is quick.
SMALL_COUNT = ["0", "1", "2", "3", "8", "-1", "nan", "1e3", "1_0", "x", ""]


VALUES = {
    "--synthetic-train-size": ["1", "2", "3", "16", "64", "0", "-5", "2000001", "1e2"],
    "--synthetic-test-size": ["1", "2", "5", "0", "-1", "99999999999999999999"],
    "--train-subset": SMALL_COUNT,
    "--test-subset": SMALL_COUNT,
    "--batch-size": ["1", "2", "3", "8", "64", "0", "-1", "1000001"],
    "--epochs": ["1", "2", "0", "-1", "100001", "1.5"],
    "--width": ["1", "2", "8", "0", "513", "-1"],
    "--head-hidden": ["1", "4", "0", "65537"],
    "--gradient-accumulation-steps": ["0", "1", "2", "3", "100001", "-1"],
    "--seed": ["0", "1", "4294967295", "4294967296", "-1", "nan"],
    "--checkpoint-every": ["0", "1", "2", "-3"],
    "--keep-checkpoints": ["1", "3", "0", "1001"],
    "--log-every": ["0", "1", "-2"],
    "--num-workers": ["0", "2", "-1", "257"],
    "--lr": ["1e-3", "0.05", "1", "1e6", "0", "-1", "nan", "inf", "1e-300", "1e308", "x"],
    "--momentum": ["0", "0.9", "1", "-0.1", "nan", "inf", "1.5"],
    "--weight-decay": ["0", "5e-4", "-1", "nan", "inf", "1001"],
    "--dropout": ["0", "0.5", "0.999", "1", "-0.1", "nan", "-inf"],
    "--label-smoothing": ["0", "0.1", "1", "-0.0", "nan"],
    "--augment": ["auto", "crop-flip", "flip", "none", "zoom"],
    "--optimizer": ["sgd", "adamw", "lbfgs"],
    "--scheduler": ["none", "cosine", "onecycle", "step"],
    "--mixed-precision": ["no", "bf16", "fp16", "fp8", ""],
}


SWITCHES = ["--no-batch-norm", "--no-shuffle", "--deterministic", "--no-channels-last"]


RESNET = ["--model", "resnet50", "--no-pretrained", "--image-size", "32"]


def config_files():
    """Config file contents: settings as people write them, or any bytes at all."""
    values = st.sampled_from(["1e-3", "5e-4", "1_000", "2", "0.5", "yes", "~", "[1, 2]", "'x'"])
    # Not epochs: a file's `epochs: 1_000` is a legal run of a thousand epochs.
    keys = st.sampled_from(
        ["lr", "weight-decay", "momentum", "batch_size", "seed", "nope", "augment"]
    )
    yaml_text = st.lists(st.tuples(keys, values), max_size=4).map(
        lambda pairs: "".join(f"{k}: {v}\n" for k, v in pairs).encode()
    )
    return st.tuples(
        st.sampled_from([".yaml", ".json", ".yml"]),
        st.one_of(yaml_text, st.binary(max_size=64), st.text(max_size=40).map(str.encode)),
    )


@st.composite
def argument_lists(draw):
    flags = draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=5, unique=True))
    args = tiny_run(train=64, test=16, batch=16, epochs=None)
    for flag in flags:
        args += [flag, draw(st.sampled_from(VALUES[flag]))]
    args += draw(st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True))
    if draw(st.integers(0, 9)) == 0:
        args += RESNET + draw(st.sampled_from([[], ["--cache-features", "--augment", "none"]]))
    config = draw(st.one_of(st.none(), config_files()))
    return args, config


@pytest.fixture(scope="module")
def offline_env():
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(("WANDB_", "SLURM_"))]:
        del os.environ[key]
    os.environ["CIFAR_OFFLINE"] = "1"
    yield
    os.environ.clear()
    os.environ.update(saved)


def assert_run_or_one_paragraph(code, out, err, run_dir):
    if code == 0:
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            assert len(f.readlines()) == summary["epochs"]
        assert os.path.isfile(os.path.join(run_dir, "config.json"))
        return
    assert code in (1, 2), (code, out, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err  # one message
    if code == 1:
        assert NAN_MESSAGE in err, err
    else:
        assert not os.path.exists(run_dir) or not os.listdir(run_dir), os.listdir(run_dir)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=argument_lists())
def test_any_flags_and_config_file_give_a_run_or_one_paragraph(offline_env, drawn):
    args, config = drawn
    folder = tempfile.mkdtemp()
    try:
        run_dir = os.path.join(folder, "run")
        argv = ["--output-dir", run_dir, *args]
        if config is not None:
            suffix, content = config
            path = os.path.join(folder, "settings" + suffix)
            with open(path, "wb") as f:
                f.write(content)
            argv += ["--config", path]
        code, out, err = train_in_process(argv)
        assert_run_or_one_paragraph(code, out, err, run_dir)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e309"])
@pytest.mark.parametrize("flag", ["--lr", "--momentum", "--weight-decay", "--dropout"])
def test_non_finite_and_negative_numbers_are_refused_naming_the_flag(offline_env, flag, value):
    code, _, err = train_in_process(["--dataset", "synthetic", f"{flag}={value}"])
    assert code == 2 and f"{flag} must be in" in err and "Traceback" not in err, err


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_config_file_nested_too_deeply_is_one_paragraph(offline_env, tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = train_in_process(["--dataset", "synthetic", "--config", str(path)])
    assert code == 2 and "nested too deeply" in err and "Traceback" not in err, err


def test_text_that_is_not_utf8_is_refused_naming_the_flag(offline_env, tmp_path):
    name = b"caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of such argv
    code, _, err = train_in_process(["--dataset", "synthetic", "--run-name", name])
    assert code == 2 and "--run-name holds bytes that are not UTF-8" in err, err


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


PEER_ERRORS = {
    "gloo": "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
    "[127.0.0.1]:4711",
    "nccl remote": "NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:77, remote "
    "process exited or there was a network error, NCCL version 2.27.5\nncclRemoteError: A call "
    "failed possibly due to a network error or a remote process exiting prematurely.",
    "nccl aborted": "NCCL communicator was aborted on rank 1.",
}


@pytest.mark.parametrize("backend", PEER_ERRORS)
def test_a_collective_failed_by_a_stopped_peer_is_one_paragraph_under_gloo_and_nccl(
    monkeypatch, backend
):
    import cifar.engine

    def fail(config):
        raise torch.distributed.DistBackendError(PEER_ERRORS[backend])

    monkeypatch.setattr(cifar.engine, "run_experiment", fail)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = train_in_process(["--dataset", "synthetic", "--tracker", "none"])
    assert code == 1 and "Traceback" not in err, err
    assert err == (
        "error: another process of this run stopped (its message is above); this one stops too.\n"
    )


def test_a_collective_that_timed_out_under_nccl_names_the_timeout_and_its_variable(monkeypatch):
    import cifar.engine

    def fail(config):
        raise torch.distributed.DistBackendError(
            "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, "
            "OpType=BROADCAST, NumelIn=1, NumelOut=1, Timeout(ms)=10800000) ran for 10800017 "
            "milliseconds before timing out."
        )

    monkeypatch.setattr(cifar.engine, "run_experiment", fail)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("CIFAR_COLLECTIVE_TIMEOUT_MINUTES", "240")
    code, _, err = train_in_process(["--dataset", "synthetic", "--tracker", "none"])
    assert code == 1 and "Traceback" not in err, err
    (line,) = err.splitlines()
    assert line.startswith("error: another process of this run did not reach a collective within "
                           "240 minutes"), line  # fmt: skip
    assert "set CIFAR_COLLECTIVE_TIMEOUT_MINUTES" in line


def test_other_runtime_errors_of_several_processes_keep_their_traceback(monkeypatch):
    import cifar.engine

    def fail(config):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(cifar.engine, "run_experiment", fail)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        train_in_process(["--dataset", "synthetic", "--tracker", "none"])
