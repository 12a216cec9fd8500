"""Every input a user can type or have ends in a run or in one paragraph with exit 2.

Hypothesis draws flag combinations (numeric edges, NaN, inf, junk), tiny data sizes and config
files (any bytes, YAML and JSON as people write them) and runs train.py's main() in this process:
an exception escaping main() is a traceback a user would have seen. CIFAR_HYPOTHESIS_EXAMPLES
raises the number of examples (CI runs the default).
"""

import json
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import tiny_run, train_in_process

pytestmark = pytest.mark.fast  # in-process: part of `make test-fast`

EXAMPLES = int(os.environ.get("CIFAR_HYPOTHESIS_EXAMPLES", "30"))
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
