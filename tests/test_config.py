import json

import pytest

from cifar.config import Config, build_parser, parse_config
from cifar.errors import UserError


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
        ("epochs: many", "should be a int"),
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
