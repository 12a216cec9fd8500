"""cifar/config.py: the settings, their flags, defaults and config files."""

import json

import pytest

from cifar.config import Config, build_parser, parse_config
from cifar.errors import UserError
from tests.helpers import SMOKE, read_json, run_train


def test_defaults_without_flags():
    assert parse_config([]) == Config(augment="crop-flip")


def test_auto_augmentation_follows_the_dataset():
    assert parse_config(["--dataset", "fashion-mnist"]).augment == "flip"
    assert parse_config(["--dataset", "cifar100"]).augment == "crop-flip"
    assert parse_config(["--dataset", "fashion-mnist", "--augment", "none"]).augment == "none"


def test_help_lists_every_flag_with_its_default():
    text = build_parser().format_help()
    for flag in (
        "--model",
        "--dataset",
        "--data-dir",
        "--epochs",
        "--batch-size",
        "--lr",
        "--optimizer",
        "--scheduler",
        "--weight-decay",
        "--label-smoothing",
        "--seed",
        "--output-dir",
        "--train-subset",
        "--image-size",
        "--freeze",
        "--pretrained",
        "--no-pretrained",
        "--num-workers",
        "--tracker",
        "--resume",
        "--config",
    ):
        assert flag in text, flag
    assert "(default: 5)" in text and "(default: 'cifar10')" in text


def test_yaml_config_is_read_and_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: resnet50\nepochs: 3\nbatch-size: 32\nlr: 1\npretrained: false\n")
    config = parse_config(["--config", str(path), "--epochs", "7"])
    assert (config.model, config.epochs, config.batch_size, config.pretrained) == (
        "resnet50",
        7,
        32,
        False,
    )
    assert config.lr == 1.0 and isinstance(config.lr, float)


def test_json_config(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"dataset": "synthetic", "tags": ["a", "b"], "seed": 3}))
    config = parse_config(["--config", str(path), "--no-shuffle"])
    assert (config.dataset, config.tags, config.seed, config.shuffle) == (
        "synthetic",
        ["a", "b"],
        3,
        False,
    )


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model: [unclosed", "is not valid YAML"),
        ("optimiser: sgd", "unknown setting 'optimiser'"),
        ("epochs: many", "should be an integer, got 'many'"),
        ("epochs: 1e3", "should be an integer"),
        ("lr: fast", "should be a number"),
        ("lr: true", "should be a number"),
        ("model: vgg", "unknown model 'vgg'"),
        ("- just\n- a list", "must hold a mapping"),
    ],
)
def test_bad_config_files_are_refused_clearly(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment.replace("[", r"\[")):
        parse_config(["--config", str(path)])


def test_cache_features_requires_a_fixed_backbone_input():
    with pytest.raises(UserError, match="--cache-features"):
        parse_config(["--model", "resnet50", "--cache-features"])
    config = parse_config(["--model", "resnet50", "--cache-features", "--augment", "none"])
    assert config.cache_features


def test_numbers_written_as_people_write_them_are_read_as_numbers(tmp_path):
    # PyYAML follows YAML 1.1, which reads 1e-3 and 1_000 as strings.
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\nsynthetic_train_size: 1_000\nmomentum: 1\n")
    config = parse_config(["--config", str(path)])
    assert (config.lr, config.weight_decay, config.synthetic_train_size, config.momentum) == (
        0.001,
        0.0005,
        1000,
        1.0,
    )
    assert isinstance(config.synthetic_train_size, int) and isinstance(config.momentum, float)


def test_a_yaml_learning_rate_of_1e_3_trains_with_0_001(tmp_path):
    run_dir = tmp_path / "run"
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\n")
    run_train([*SMOKE, "--config", path, "--output-dir", run_dir])
    settings = read_json(run_dir / "config.json")
    assert (settings["lr"], settings["weight_decay"]) == (0.001, 0.0005)
