"""cifar/config.py: the settings, their flags, defaults and config files."""

import dataclasses
import json

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cifar.config import Config, build_parser, flag_name, parse_config
from cifar.errors import UserError
from tests.helpers import EXAMPLES, SMOKE, read_json, run_train, train_in_process


def test_defaults_without_flags():
    assert parse_config([]) == Config(augment="crop-flip", freeze="backbone", tta=False)


def test_auto_augmentation_follows_the_dataset():
    assert parse_config(["--dataset", "fashion-mnist"]).augment == "flip"
    assert parse_config(["--dataset", "cifar100"]).augment == "crop-flip"
    assert parse_config(["--dataset", "fashion-mnist", "--augment", "none"]).augment == "none"


def help_entries(text: str) -> dict[str, str]:
    """{flag: its entry, white space folded} of each option of an argparse help text."""
    entries, flag = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):  # an option's first line: its flags, perhaps its help
            flag = line.split()[0].rstrip(",")
            entries[flag] = ""
        if flag is not None and line.strip():
            entries[flag] = f"{entries[flag]} {line.strip()}".strip()
    return entries


def test_help_lists_every_flag_with_its_default():
    """Every field of Config, in `python train.py --help` (run in this process), with its
    default."""
    code, text, err = train_in_process(["--help"])
    assert code == 0, err
    entries = help_entries(text.split("\noptions:\n", 1)[1])
    for f in dataclasses.fields(Config):
        flag = flag_name(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert flag in entries, flag
        own = "default:" in f.metadata["help"]  # a help that explains its default, once
        shown = f"(default: {default!r})" in entries[flag]
        assert (entries[flag].count("default:") == 1) if own else shown, (flag, entries[flag])
    assert len(entries) == len(dataclasses.fields(Config)) + 1  # and -h
    assert "(default: 5)" in entries["--epochs"] and "(default: 'cifar10')" in entries["--dataset"]


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
        ("config: other.yaml", "names another config file .config: 'other.yaml'.; one does not"),
    ],
)
def test_bad_config_files_are_refused_clearly(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment.replace("[", r"\[")):
        parse_config(["--config", str(path)])


def test_a_config_path_that_is_not_a_file_is_named_for_what_it_is(tmp_path):
    for path, what in [(tmp_path, "is a folder"), ("/dev/null", "is not a regular file"),
                       (tmp_path / "gone.yaml", "does not exist")]:  # fmt: skip
        with pytest.raises(UserError, match=f"config file '{path}' {what}. Pass an existing"):
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


def test_no_pretrained_trains_from_scratch_and_a_frozen_random_backbone_warns(capsys):
    assert parse_config(["--model", "resnet50", "--no-pretrained"]).freeze == "none"
    assert parse_config(["--model", "resnet50"]).freeze == "backbone"
    assert "warning" not in capsys.readouterr().err
    config = parse_config(["--model", "resnet50", "--no-pretrained", "--freeze", "backbone"])
    assert config.freeze == "backbone"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--freeze none" in err


def test_tags_in_a_config_file_are_text_and_yaml_no_is_the_word_no(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("tags: [2024, baseline, 1.5]\nmixed_precision: no\n")
    config = parse_config(["--config", str(path)])
    assert config.tags == ["2024", "baseline", "1.5"] and config.mixed_precision == "no"
    path.write_text("tags: [[1, 2]]\n")
    with pytest.raises(UserError, match="'tags'.*should be a list of text"):
        parse_config(["--config", str(path)])


@pytest.mark.parametrize("name", ["bad/name?", "a:b", "x#y", "p%q", "b\\c", "n" * 129])
def test_a_name_w_and_b_refuses_is_one_paragraph(name):
    for flag in ("--wandb-project", "--wandb-entity"):
        with pytest.raises(UserError, match="is not a W&B name"):
            parse_config([flag, name])


def test_help_shows_each_default_once_and_the_exit_codes():
    text = " ".join(build_parser().format_help().split())
    assert "(default: '')" not in text.split("--output-dir", 1)[1].split("--resume")[0]
    for code in ("0 ", "1 ", "2 ", "74 ", "75 ", "130 "):
        assert f" {code}" in text.split("exit codes:", 1)[1]


def test_a_runs_own_config_json_is_a_config_file_for_a_new_run(tmp_path):
    record = {
        **Config(width=16, epochs=3, augment="flip", freeze="backbone").to_dict(),
        "format_version": 1,
        "output_dir": "/somewhere/runs/old",
        "resume": "auto",
        "world_size": 2,
        "mixed_precision_used": "no",
        "gradient_accumulation_steps_used": 1,
        "device": "cpu",
        "device_name": "a CPU",
        "process_settings": {"malloc_reuses_freed_memory": True},
        "versions": {"torch": "2.14.1"},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(record))
    config = parse_config(["--config", str(path)])
    assert (config.width, config.epochs, config.augment) == (16, 3, "flip")
    assert config.output_dir == "" and config.resume == ""  # a new run, in a new folder


def test_an_image_size_a_model_does_not_use_is_refused_in_one_paragraph(tmp_path):
    with pytest.raises(UserError) as error:
        parse_config(["--model", "cnn", "--image-size", "1024"])
    message = str(error.value)
    assert "--image-size 1024: --model cnn takes 32 x 32 images and does not use" in message
    assert "resnet50 and resnet18" in message and "Drop --image-size" in message
    assert parse_config(["--image-size", "32"]).image_size == 32  # the size it uses
    assert parse_config(["--model", "resnet50", "--image-size", "1024"]).image_size == 1024
    # A SimpleCNN run's own config.json records the default, and starts a run as it is.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**Config().to_dict(), "format_version": 1, "world_size": 1}))
    assert parse_config(["--config", str(path)]).image_size == 224
    path.write_text(json.dumps({"image_size": 64}))
    with pytest.raises(UserError, match="--image-size 64: --model cnn"):
        parse_config(["--config", str(path)])

    out = tmp_path / "run"
    code, _, err = train_in_process([*SMOKE, "--image-size", "1024", "--output-dir", str(out)])
    assert code == 2 and err.startswith("error: --image-size 1024") and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()


# Any value of any setting in a config file: a Config whose every setting has its declared type,
# or one paragraph (UserError); the file is left as it was. parse_config runs in this process.

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**63, 2**64 + 1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["nan", "inf", "1e-3", "1_000", "yes", "no", "~", "", "cnn", "auto"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
# What YAML alone spells: its own words for booleans, nulls and special numbers, dates, tags,
# anchors, sets, binary, and Python object tags that safe_load refuses.
YAML_WORDS = [
    "yes", "no", "on", "off", "~", "null", ".nan", ".inf", "-.inf", "0x1F", "0o17", "1_000",
    "1e-3", "2024-01-01", "2024-01-01T10:00:00", "!!binary aGVsbG8=", "!!set {a, b}",
    "&anchor [1, 2]", "*nothing", "!!python/object/apply:os.system ['true']", "[1, [2, [3]]]",
    "{a: {b: {c: 1}}}", "'quoted'", '"\\u00e9"', "|\n  two\n  lines",
    "123456789012345678901234567890", "!!float 1", "!!int '7'", "!!str 5", "? complex key",
    "- a\n- b",
]  # fmt: skip


def own_type_values(field):
    """Values of the setting's own type, near what it takes: most of them make a Config."""
    choices = field.metadata.get("choices")
    if choices:
        return st.sampled_from(list(choices))
    return {
        bool: st.booleans(),
        int: st.integers(-2, 10**6),
        float: st.floats(-1, 2),
        str: st.text(max_size=8),
        list: st.lists(st.text(max_size=5) | st.integers(), max_size=3),
    }[field.type]


@st.composite
def settings_and_values(draw):
    field = draw(st.sampled_from(dataclasses.fields(Config)))
    value = draw(
        st.one_of(
            own_type_values(field).map(lambda v: ("json", v)),
            JSON_VALUES.map(lambda v: ("json", v)),
            st.sampled_from(YAML_WORDS).map(lambda v: ("yaml", v)),
        )
    )
    return field.name, value


@settings(max_examples=EXAMPLES * 10, deadline=None)
@given(drawn=settings_and_values(), dashes=st.booleans())
def test_any_value_of_any_setting_in_a_config_file_is_a_config_or_one_paragraph(
    tmp_path_factory, drawn, dashes
):
    name, (kind, raw) = drawn
    field = {f.name: f for f in dataclasses.fields(Config)}[name]
    key = name.replace("_", "-") if dashes else name
    folder = tmp_path_factory.mktemp("config")
    if kind == "json":
        path = folder / "settings.json"
        path.write_text(json.dumps({key: raw}))
    else:
        path = folder / "settings.yaml"
        path.write_text(
            f"{key}: {raw}\n"
            if "\n" not in raw
            else f"{key}:\n  {raw.replace(chr(10), chr(10) + '  ')}\n"
        )
    before = path.read_bytes()
    try:
        config = parse_config(["--config", str(path)])
    except UserError as error:
        assert str(error).strip()
        event("refused")
    else:
        event("a config")
        got = getattr(config, name)
        assert isinstance(got, field.type) and (field.type is bool or not isinstance(got, bool)), (
            name,
            got,
        )
        if field.type is list:
            assert all(isinstance(item, str) for item in got), got
        json.dumps(config.to_dict(), allow_nan=False)  # config.json can record it
    assert path.read_bytes() == before


@pytest.mark.parametrize("where", ["file", "flag"])
def test_an_integer_beyond_a_floats_range_for_an_integer_setting_is_one_paragraph(tmp_path, where):
    huge = "1" + "0" * 400
    path = tmp_path / "settings.json"
    path.write_text(f'{{"train_subset": {huge}}}')
    argv = ["--config", str(path)] if where == "file" else ["--train-subset", huge]
    with pytest.raises(UserError, match="--train-subset must be in"):
        parse_config(argv)


def test_tta_is_on_by_default_only_where_the_study_showed_it_gains():
    from cifar.config import SETTING_DEFAULTS

    def tta(*flags):
        return parse_config([*flags, "--tracker", "none"]).tta

    assert tta("--dataset", "fashion-mnist") is True
    assert tta("--dataset", "fashion-mnist", "--no-tta") is False
    assert tta("--dataset", "cifar10") is False and tta("--dataset", "cifar10", "--tta") is True
    cached = ("--dataset", "fashion-mnist", "--model", "resnet50", "--cache-features")
    assert tta(*cached, "--augment", "none") is False  # features of the unflipped images
    assert SETTING_DEFAULTS["tta"] is False  # a run from before --tta was scored without it


@pytest.mark.parametrize(
    "name, text, key",
    [
        ("run.yaml", "epochs: 1\nlr: 0.1\nepochs: 50\n", "epochs"),
        ("run.json", '{"epochs": 1, "lr": 0.1, "epochs": 50}', "epochs"),
        ("run.yaml", "batch-size: 1\nbatch_size: 64\n", "batch_size"),  # one setting, two spellings
    ],
)
def test_a_setting_given_twice_in_a_config_file_is_refused_naming_it(tmp_path, name, text, key):
    """Which of the two values a run used would be the parser's choice (the last one),
    recorded in config.json as if the file had said it once."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=f"'{key}'.*twice") as refused:
        parse_config(["--config", str(path)])
    assert str(path) in str(refused.value) and path.read_text() == text


def test_a_yaml_merge_key_may_be_overridden_once(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("<<: {epochs: 1, lr: 0.1}\nepochs: 3\n")  # a merge, then the value that wins
    config = parse_config(["--config", str(path)])
    assert (config.epochs, config.lr) == (3, 0.1)
