"""Every knob of a run in one dataclass, its command line and its checks (config files are
read by config_file.py).

Precedence: dataclass defaults < ``--config FILE`` (YAML or JSON) < flags on the command line.
"""

import argparse
import math
import os
import re
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields

from cifar.config_file import read_config_file
from cifar.data import DATASETS, auto_augment, dataset_spec, default_tta
from cifar.errors import UserError
from cifar.models import REGISTRY, model_spec
from cifar.trackers import REGISTRY as TRACKER_REGISTRY

MODELS = tuple(REGISTRY)
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("none", "cosine", "onecycle")
FREEZE_MODES = ("auto", "backbone", "layer4", "none")
AUGMENTATIONS = ("auto", "crop-flip", "flip", "none")
TRACKERS = tuple(TRACKER_REGISTRY)  # the default first
PRECISIONS = ("no", "fp16", "bf16")
CACHE_MODES = ("auto", "always", "never")


def default_workers() -> int:
    """This process's share of the CPUs it may use (LOCAL_WORLD_SIZE processes share them)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = (cpus or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, share))


def knob(default, help, choices=None, metavar=None):
    """A Config field with the help text and choices its command-line flag shows."""
    meta = {"help": help, "choices": choices, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # What to train on what.
    model: str = knob("cnn", "model to train", MODELS)
    dataset: str = knob("cifar10", "dataset", DATASETS)
    data_dir: str = knob("data", "dataset folder (downloads land here for cifar10/100)")
    train_subset: int = knob(0, "train on the first N training images only (0: all)", None, "N")
    test_subset: int = knob(0, "evaluate on the first N test images only (0: all)", None, "N")
    synthetic_train_size: int = knob(10000, "training images of --dataset synthetic")
    synthetic_test_size: int = knob(2000, "test images of --dataset synthetic")
    # Model.
    image_size: int = knob(224, "ResNet input size; images are resized on the device")
    freeze: str = knob(
        "auto",
        "ResNet parameters kept frozen. auto: backbone with pretrained weights, none without "
        "(--no-pretrained trains from scratch)",
        FREEZE_MODES,
    )
    pretrained: bool = knob(True, "ResNets start from torchvision's ImageNet weights")
    width: int = knob(32, "SimpleCNN channels of the first conv (doubled per layer)")
    batch_norm: bool = knob(True, "SimpleCNN: BatchNorm after each conv")
    dropout: float = knob(0.0, "dropout before the last layer of the classifier head")
    head_hidden: int = knob(512, "hidden units of the classifier head")
    # Optimisation; batch size and learning rate are per process / for the global batch.
    epochs: int = knob(5, "training epochs")
    batch_size: int = knob(128, "images per process per step")
    lr: float = knob(0.05, "peak learning rate")
    optimizer: str = knob("sgd", "optimizer (sgd: Nesterov momentum)", OPTIMIZERS)
    momentum: float = knob(0.9, "SGD momentum")
    weight_decay: float = knob(5e-4, "weight decay (not applied to biases and norms)")
    scheduler: str = knob("onecycle", "learning-rate schedule (per optimizer step)", SCHEDULERS)
    label_smoothing: float = knob(0.1, "label smoothing of the cross-entropy loss")
    augment: str = knob(
        "auto",
        f"training augmentation (crop: padding 4). auto: {auto_augment()}",
        AUGMENTATIONS,
    )
    shuffle: bool = knob(True, "shuffle the training set each epoch (seeded)")
    ema: float = knob(
        0.0,
        "keep an exponential moving average of the weights (BatchNorm statistics too), updated "
        "every optimizer step with this decay, e.g. 0.999; it is evaluated, saved and exported "
        "instead of the trained weights (0: off)",
        None,
        "DECAY",
    )
    tta: bool = knob(
        None,
        "test-time augmentation: score each test image by the mean of its logits and its "
        f"horizontal mirror's (default: on for {default_tta()}, where it gains, else off)",
    )
    gradient_accumulation_steps: int = knob(
        0, "batches per optimizer step (0: from the accelerate config, else 1)"
    )
    mixed_precision: str = knob(
        "", "no/fp16/bf16 (empty: from accelerate launch --mixed_precision or its config)", None
    )
    seed: int = knob(0, "random seed: same seed and process count give the same run")
    deterministic: bool = knob(
        False,
        "deterministic algorithms only (slower); an operation without one stops the run, naming it",
    )
    tf32: bool = knob(
        True,
        "fp32 matmuls and convolutions in TF32 on GPUs that have it (Ampere and newer): "
        "faster, 10-bit mantissa inputs; --no-tf32 for full fp32",
    )
    # Speed.
    num_workers: int = knob(
        default_workers(),
        "DataLoader workers (imagefolder; the others live on the device). Default: this "
        "process's share of the CPUs it may use, at most 8",
    )
    cache_images: str = knob(
        "auto",
        "imagefolder: decode and resize every image once into a uint8 set cached on disk and "
        "kept on the device, then train like CIFAR. auto: when train + test decoded fit 2 GiB",
        CACHE_MODES,
    )
    skip_bad_images: bool = knob(
        False, "imagefolder: leave out images that fail to decode, listing them, and train on"
    )
    cache_features: bool = knob(
        False,
        "ResNet-50 with a frozen backbone: compute backbone features once, then train the "
        "head on them. Much faster per epoch, but disables augmentation (needs --augment none "
        "and --freeze backbone) and holds N x 2048 floats in memory",
    )
    compile: bool = knob(False, "torch.compile the model (slow start, faster steps on GPUs)")
    channels_last: bool = knob(True, "channels_last memory format (GPUs and CPUs)")
    allow_cpu: bool = knob(
        False,
        "train on the CPU even though this process was given GPUs (SLURM, CUDA_VISIBLE_DEVICES, "
        "nvidia-smi) that torch cannot use; without it that case stops with exit code 2",
    )
    # Output, checkpoints and tracking.
    output_dir: str = knob("", "run folder (default: runs/<model>-<dataset>-<timestamp>)")
    resume: str = knob("", "'auto': newest checkpoint in the run folder if any; or a PATH")
    checkpoint_every: int = knob(0, "also checkpoint every N optimizer steps (0: per epoch only)")
    keep_checkpoints: int = knob(2, "checkpoints kept (oldest deleted first)")
    log_every: int = knob(50, "optimizer steps between step-level tracker logs")
    tracker: str = knob("wandb", "experiment tracker", TRACKERS)
    wandb_project: str = knob("cifar-accelerate", "W&B project")
    wandb_entity: str = knob("", "W&B entity (team or user); empty: your default")
    wandb_group: str = knob("", "W&B group (default: <dataset>-<comparison study>)")
    run_name: str = knob("", "run name in the tracker (default: the run folder's name)")
    tags: list = knob([], "tracker tags", None, "TAG")
    prepare_only: bool = knob(
        False, "download the dataset and weights, then exit (run on a login node with network)"
    )
    config: str = knob("", "YAML or JSON file of settings; command-line flags win", None, "FILE")

    def to_dict(self) -> dict:
        return asdict(self)


# The only settings a resumed run may change: where things are, how often to save or log, and
# how to look at the run. Anything else could change its results, so resuming refuses it.
RESUME_MAY_CHANGE = frozenset(
    {
        "data_dir",
        "num_workers",
        "output_dir",
        "resume",
        "config",
        "prepare_only",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "tracker",
        "wandb_project",
        "wandb_entity",
        "wandb_group",
        "run_name",
        "tags",
        "allow_cpu",
    }
)
# What a run recorded before a setting existed is read as that setting's default; runs from
# before --tta were scored without it.
SETTING_DEFAULTS = {
    f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(Config)
} | {"tta": False}

# Inclusive bounds of the numeric settings; beyond them a run cannot work or fit in memory.
LIMITS = {
    "train_subset": (0, 10**9),
    "test_subset": (0, 10**9),
    "synthetic_train_size": (1, 2_000_000),
    "synthetic_test_size": (1, 2_000_000),
    "image_size": (32, 1024),
    "width": (1, 512),
    "head_hidden": (1, 65536),
    "epochs": (1, 100_000),
    "batch_size": (1, 1_000_000),
    "gradient_accumulation_steps": (0, 100_000),
    "seed": (0, 2**32 - 1),
    "num_workers": (0, 256),
    "checkpoint_every": (0, 10**9),
    "keep_checkpoints": (1, 1000),
    "log_every": (0, 10**9),
    "lr": (0, 1e6),
    "momentum": (0, 1),
    "weight_decay": (0, 1e3),
    "dropout": (0, 1),
    "label_smoothing": (0, 1),
    "ema": (0, 1),
}
EXCLUSIVE = {"lr": "low", "dropout": "high", "label_smoothing": "high", "ema": "high"}


W_AND_B_FORBIDDEN = re.compile(r"[/\\#?%:]")  # what W&B refuses in project and entity names
EXIT_CODES = """exit codes:
  0    done, or the run in --output-dir was already finished
  1    anything else (e.g. the loss became NaN; the message says which)
  2    a mistake in the input: the message says what and how to fix it
  74   a checkpoint or result file could not be written (disk full, I/O error)
  75   stopped by SIGTERM, SIGUSR1 or Ctrl-C after saving a checkpoint: --resume auto
  130  stopped by a second Ctrl-C, without a checkpoint
under `accelerate launch` the launcher reports 1 for any of these but 0 (see docs/training.md)"""


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes read like the project's other errors: one line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}. See `python train.py --help` for every flag.\n")


def build_parser() -> argparse.ArgumentParser:
    """Flags for every Config field; defaults are SUPPRESSed so we know what was given."""
    parser = ArgumentParser(
        prog="train.py",
        description="Train SimpleCNN or ResNet-50 on CIFAR-10 and friends with Accelerate.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    for f in fields(Config):
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text = f.metadata["help"]
        if "default:" not in help_text:  # a help that explains its default keeps it
            help_text += f" (default: {default!r})"
        kwargs = {"help": help_text, "dest": f.name}
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata["metavar"]:
            kwargs["metavar"] = f.metadata["metavar"]
        if f.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.type is list:
            kwargs["nargs"] = "*"
        else:
            kwargs["type"] = f.type
        parser.add_argument(flag_name(f.name), **kwargs)
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """Config from defaults, then the --config file, then the command line; validated."""
    given = vars(build_parser().parse_args(argv))
    settings = read_config_file(given["config"], fields(Config)) if given.get("config") else {}
    settings.update(given)
    config = Config(**settings)
    if config.augment == "auto" and config.dataset in DATASETS:
        config.augment = dataset_spec(config.dataset).augment
    if config.tta is None:  # cached features are of the unflipped images: no flips then
        spec = dataset_spec(config.dataset) if config.dataset in DATASETS else None
        config.tta = bool(spec and spec.tta and not config.cache_features)
    if config.freeze == "auto":  # cached features are of a fixed backbone, random or not
        config.freeze = "backbone" if config.pretrained or config.cache_features else "none"
    elif config.freeze != "none" and not config.pretrained and model_spec(config.model).weights:
        print(
            f"warning: --freeze {config.freeze} with --no-pretrained keeps random weights "
            f"frozen; train from scratch with --freeze none (the default without weights).",
            file=sys.stderr,
        )
    validate(config)
    return config


def validate(config: Config) -> None:
    for f in fields(Config):
        choices = f.metadata["choices"]
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise UserError(
                f"unknown {f.name.replace('_', ' ')} {value!r}. "
                f"Choose one of: {', '.join(choices)} ({flag_name(f.name)})."
            )
    if config.mixed_precision and config.mixed_precision not in PRECISIONS:
        raise UserError(
            f"unknown mixed precision {config.mixed_precision!r}. Choose one of: no, fp16, bf16."
        )
    for name, (low, high) in LIMITS.items():
        check_range(name, getattr(config, name), low, high, EXCLUSIVE.get(name, ""))
    for name in ("wandb_project", "wandb_entity"):
        value = getattr(config, name)
        if len(value) > 128 or W_AND_B_FORBIDDEN.search(value):
            raise UserError(
                f"{flag_name(name)} {value!r} is not a W&B name: at most 128 characters, none of "
                f"/ \\ # ? % : (e.g. {flag_name(name)} cifar-accelerate)."
            )
    for f in fields(Config):
        texts = getattr(config, f.name) if f.type is list else [getattr(config, f.name)]
        for text in texts:
            try:
                str(text).encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(
                    f"{flag_name(f.name)} holds bytes that are not UTF-8 text ({text!r}); run "
                    f"folders, trackers and reports need text. Give it in UTF-8."
                ) from None
    if config.cache_features and dataset_spec(config.dataset).file_backed:
        in_memory = [name for name in DATASETS if not dataset_spec(name).file_backed]
        raise UserError(
            f"--cache-features works with the datasets held in memory ({', '.join(in_memory)}), "
            f"not with --dataset {config.dataset}, read from files. Drop --cache-features."
        )
    if config.cache_features and config.tta:
        raise UserError(
            "--tta scores each test image and its mirror image, and --cache-features keeps the "
            "backbone features of the images alone. Drop one of them."
        )
    check_image_size(config)
    with_features = [name for name, spec in REGISTRY.items() if spec.num_features]
    if config.cache_features and (
        config.model not in with_features or config.freeze != "backbone" or config.augment != "none"
    ):
        raise UserError(
            f"--cache-features needs a fixed backbone input: use it with --model "
            f"{' or '.join(with_features)}, --freeze backbone and --augment none."
        )


def check_image_size(config: Config) -> None:
    """--image-size only for a model it resizes the images for: a model of a fixed input size
    accepts the default (what its config.json records) and its own size, and refuses the rest
    rather than record a size it never used."""
    fixed = model_spec(config.model).input_size
    if fixed is None or config.image_size in (SETTING_DEFAULTS["image_size"], fixed):
        return
    resized = [name for name, spec in REGISTRY.items() if spec.input_size is None]
    raise UserError(
        f"--image-size {config.image_size}: --model {config.model} takes {fixed} x {fixed} "
        f"images and does not use --image-size (it sets the input size of "
        f"{' and '.join(resized)}). Drop --image-size, or train one of those models; a run "
        f"begun with it resumes without it."
    )


def check_range(name: str, value, low, high, exclusive: str) -> None:
    """Refuse a value outside [low, high] (an end marked exclusive is left out), NaN and inf."""
    # An int beyond a float's range is compared exactly: math.isfinite would overflow on it.
    inside = (isinstance(value, int) or math.isfinite(value)) and low <= value <= high
    inside = inside and not (exclusive == "low" and value == low)
    inside = inside and not (exclusive == "high" and value == high)
    if not inside:
        left = "(" if exclusive == "low" else "["
        right = ")" if exclusive == "high" else "]"
        raise UserError(
            f"{flag_name(name)} must be in {left}{number(low)}, {number(high)}{right}, "
            f"got {value!r}."
        )


def number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"
