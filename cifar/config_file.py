"""A run's settings from a YAML or JSON config file: each key a setting, given once, its value
of the setting's type (numbers as people write them); a run's own config.json reads as the
settings it was run with. Refusals are one paragraph naming the file and the key."""

import json
import os

import yaml

from cifar.errors import UserError
from cifar.record.schema import CONFIG_RECORD_KEYS


class SettingTwice(Exception):
    """A config file gives one key twice."""


def unique_pairs(pairs: list) -> dict:
    """json's object_pairs_hook: the object, refusing a key given twice."""
    keys = [key for key, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise SettingTwice(twice)
    return dict(pairs)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping key given twice (it keeps the last one); a key
    after a merge (<<) overrides the merged one, as YAML means it."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # a list or a map as a key: refused later as no setting
                if key in seen:
                    raise SettingTwice(key)
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_config_file(path: str, settings_fields) -> dict:
    """Settings from a YAML or JSON file, as {name: value} of settings_fields (the Config
    dataclass's fields); keys may use dashes or underscores."""
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "is not a regular file"
        raise UserError(
            f"config file {path!r} {what if os.path.exists(path) else 'does not exist'}. Pass "
            f"an existing YAML or JSON file."
        )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else f"not UTF-8 text: {error}"
        raise UserError(
            f"cannot read the config file {path!r} ({reason}). Save it as UTF-8 text, or pass "
            f"the settings as flags."
        ) from None
    try:
        if path.endswith(".json"):
            data = json.loads(text, object_pairs_hook=unique_pairs)
        else:
            data = yaml.load(text, Loader=UniqueKeyLoader)  # safe_load, refusing keys twice
    except SettingTwice as twice:
        raise UserError(
            f"config file {path!r} gives {twice.args[0]!r} twice. Keep the value you mean and "
            f"delete the other."
        ) from None
    except RecursionError:
        raise UserError(
            f"config file {path!r} is nested too deeply to read. A config file is a flat "
            f"mapping of setting: value; fix the file or pass the settings as flags."
        ) from None
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise UserError(
            f"config file {path!r} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
            f"{' '.join(str(error).split())}. Fix the file or pass the settings as flags."
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path!r} must hold a mapping of setting: value.")
    known = {f.name: f for f in settings_fields}
    if any(key in data for key in CONFIG_RECORD_KEYS):
        # A run's own config.json: its settings, without what it recorded about that run
        # (where it ran, with what, in which folder): re-running it starts a new run.
        data = {
            k: v
            for k, v in data.items()
            if k not in (*CONFIG_RECORD_KEYS, "output_dir", "resume", "config", "prepare_only")
        }
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UserError(
                f"config file {path!r} has an unknown setting {key!r}. "
                f"Known settings are the flags of `python train.py --help`."
            )
        if name in settings or (name in known and name != key and name in data):
            raise UserError(
                f"config file {path!r} gives {name!r} twice ({key!r} is the same setting). "
                f"Keep the value you mean and delete the other."
            )
        if name == "config":
            raise UserError(
                f"config file {path!r} names another config file ({key}: {value!r}); one does "
                f"not include another. Copy its settings in, or pass them as flags."
            )
        if value is None and known[name].default is None:  # null: as the dataset says (--tta)
            continue
        settings[name] = coerce(name, value, known[name].type, path)
    return settings


# How messages name the type a setting wants.
TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
TYPE_NAMES[list] = "a list"


def coerce(name: str, value, kind, source: str):
    """value as the setting's type. Numbers may be strings: YAML 1.1 (PyYAML) reads `1e-3` and
    `1_000` as text, and people write them so; bools are never numbers."""
    if kind in (int, float) and isinstance(value, str):
        value = parse_number(value, kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise UserError(
                f"setting {name!r} in {source!r} is too large for a number: {value}."
            ) from None
    if kind is list and isinstance(value, str):
        return [value]
    scalars = isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)
    if kind is list and isinstance(value, list):
        if not scalars:
            raise UserError(
                f"setting {name!r} in {source!r} should be a list of text, got {value!r}."
            )
        return [str(v) for v in value]  # YAML reads `tags: [2024, baseline]` as an int and a str
    if kind is str and isinstance(value, bool):
        # YAML 1.1 reads `mixed_precision: no` as false: the word the setting takes.
        return "yes" if value else "no"
    expected = {bool: (bool,), int: (int,), float: (float,), str: (str,), list: (list,)}[kind]
    if not isinstance(value, expected) or (kind is int and isinstance(value, bool)):
        raise UserError(
            f"setting {name!r} in {source!r} should be {TYPE_NAMES[kind]}, got {value!r}."
        )
    return value


def parse_number(text: str, kind):
    """The int or float a number literal spells ('5e-4', '1_000', '-3'); text unchanged when it
    is not one (the caller reports it)."""
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        return text
