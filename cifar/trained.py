"""Using a finished run: finding it (open_finished_run), its portable model (written when the run
finishes, or later from its last checkpoint), that model placed as the run placed its own for
evaluation, and the command-line frame evaluate, predict and export share.

The portable model is the pair model.safetensors + model.json: the weights summary.json's numbers
came from and everything needed to build and feed them (cifar.models.load_trained).
"""

import argparse
import contextlib
import hashlib
import io
import os
import sys
from dataclasses import dataclass, fields, replace

import torch
from accelerate.utils import set_seed
from safetensors.torch import save as save_weights

from cifar.build import place_model
from cifar.config import Config
from cifar.data import build_datasets, dataset_spec
from cifar.data.decode import UnreadableImage
from cifar.data.imagefolder import stored_size
from cifar.data.transforms import (
    InputTransform,
    dataset_statistics,
    fixed_normalisation,
    uses_channels_last,
)
from cifar.distributed import bare_module
from cifar.errors import (
    DISK_ERRORS,
    INTERRUPTED_EXIT_CODE,
    IO_ERROR_EXIT_CODE,
    USAGE_EXIT_CODE,
    UserError,
    report_user_error,
)
from cifar.models import TrainedClassifier, build_model, load_trained, model_spec
from cifar.processes import nondeterministic_operation
from cifar.record import (
    CHECKPOINTS,
    CONFIG_FILE,
    LOCK_FILE,
    MODEL_WEIGHTS,
    SUMMARY_FILE,
    read_finished_run,
)

# How summary.json's numbers were scored (weights, test-time augmentation).
SCORED_WITH = ("scored_weights", "test_time_augmentation")
# Prefixes a checkpoint's keys carry: DDP's wrapper (saved unwrapped=False), torch.compile's.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class FinishedRun:
    """A run folder train.py finished: its settings as a Config, config.json and summary.json."""

    dir: str
    config: Config
    recorded: dict  # config.json as written, with what the run resolved (world size, precision)
    summary: dict

    @property
    def classes(self) -> list:
        return self.summary["classes"]


def open_finished_run(path: str) -> FinishedRun:
    """The finished run at path; a UserError when path is not a run folder of ours, or its run
    has not finished, or its records are not what train.py writes."""
    run_dir = os.path.abspath(path)
    where = "Pass a run folder train.py wrote (its --output-dir; by default runs/<model>-<...>)."
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir} is not a folder. {where}")
    if not all(os.path.isfile(os.path.join(run_dir, n)) for n in (LOCK_FILE, CONFIG_FILE)):
        raise UserError(
            f"{run_dir} is not a run folder made by train.py (it has no {LOCK_FILE} and "
            f"{CONFIG_FILE}); nothing was read or changed. {where}"
        )
    if not os.path.isfile(os.path.join(run_dir, SUMMARY_FILE)):
        raise UserError(
            f"the run in {run_dir} is not finished: it has no {SUMMARY_FILE} yet. Finish it with "
            f"`python train.py --output-dir {run_dir} --resume auto` and the flags it began with "
            f"(its {CONFIG_FILE} lists them), then use it."
        )
    records = read_finished_run(run_dir, "Use a run folder as train.py writes it.")
    recorded, summary = records["config"], records["summary"]
    known = {f.name for f in fields(Config)}
    config = Config(**{k: v for k, v in recorded.items() if k in known})
    # As it ran: its own folder, its resolved precision, no tracker and nothing to resume.
    precision = recorded.get("mixed_precision_used") or summary["mixed_precision"]
    config = replace(config, output_dir=run_dir, mixed_precision=precision, tracker="none")
    return FinishedRun(run_dir, replace(config, resume=""), recorded, summary)


def load_portable(run: FinishedRun) -> TrainedClassifier:
    """The run's portable model, checked against its summary (same classes)."""
    trained = load_trained(run.dir)
    if trained.classes != run.classes:
        raise UserError(
            f"the portable model of {run.dir} has classes {trained.classes}, its "
            f"{SUMMARY_FILE} {run.classes}: they are not of the same run. Delete model.json and "
            f"{MODEL_WEIGHTS}, then write them again with `python -m cifar.export {run.dir}`."
        )
    return trained


def trained_network(config, num_classes: int, state: dict) -> torch.nn.Module:
    """The whole network, in eval mode on the CPU, from the state of the module a run trained:
    the model, or under --cache-features its head, on the pretrained backbone it was fed by."""
    for prefix in WRAPPER_PREFIXES * 2:  # DDP around a compiled model: module._orig_mod.
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    if config.cache_features:
        # The backbone is not in the state: its pretrained weights again, or without them the
        # random ones the run drew, drawn again as setup_run drew them (set_seed, then build).
        set_seed(config.seed)
        network = build_model(config, num_classes)
        network.head.load_state_dict(state)
    else:
        network = model_spec(config.model).build(config, num_classes, None)
        network.load_state_dict(state)
    return network.eval()


def image_side(config, test_images=None) -> int:
    """The side S of the run's test images as they reached the model (uint8 S x S): the stored
    size of an image folder, else the side of the set held in memory (read when not given)."""
    if dataset_spec(config.dataset).file_backed:
        return stored_size(config)
    if test_images is None or test_images.dtype != torch.uint8:  # or features, not images
        test_images = build_datasets(config)[1].images
    return test_images.shape[-1]


def portable_model(config, state: dict, normalisation, side: int, summary: dict):
    """(model.safetensors bytes, model.json) of the trained state: the network's weights, how to
    build it, its classes and its input contract."""
    classes = summary["classes"]
    network = trained_network(config, len(classes), state)
    weights = save_weights(
        {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    )
    spec = model_spec(config.model)
    size = spec.image_size(config)
    mean, std = normalisation
    card = {
        "model": config.model,
        "builder": {name: getattr(config, name) for name in spec.settings},
        "classes": list(classes),
        "image_size": side,
        "input_size": size,
        "mean": list(mean),
        "std": list(std),
        "weights": MODEL_WEIGHTS,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        # What load_trained's classifier and every exported file (ONNX, TorchScript, .pt2) take.
        "input": {
            "dtype": "uint8",
            "shape": ["batch", 3, side, side],
            "channels": "RGB, 0 to 255",
            "preprocessing": f"decode as RGB, resize to {side} x {side} (antialiased, the "
            "aspect ratio not kept), as the run's test images were",
        },
        # What the network in model.safetensors takes, made from the input as shown.
        "network_input": {
            "dtype": "float32",
            "shape": ["batch", 3, size, size],
            "from_input": "(input / 255 - mean) / std per channel"
            + ("" if size == side else f", then bilinear to {size} x {size} (no antialias)"),
        },
        "output": {"shape": ["batch", len(classes)], "values": "logits; softmax: probabilities"},
        "trained_on": {
            key: summary[key]
            for key in ("dataset", "epochs", "test_accuracy", "test_loss", *SCORED_WITH)
            if key in summary  # a summary of format 1 does not say how it was scored
        },
    }
    return weights, card


def write_portable_model(config, run, summary: dict) -> None:
    """model.safetensors + model.json of the run that just finished (on the main process), from
    the weights its last evaluation scored."""
    if not run.files.is_main:
        return
    model = bare_module(run.accelerator, run.scored_model)
    images = getattr(run.train_loader, "images", None)  # the uint8 set a device loader holds
    normalisation = fixed_normalisation(config) or dataset_statistics(images.cpu())
    side = image_side(config, getattr(run.test_loader, "images", None))
    run.files.write_model(*portable_model(config, model.state_dict(), normalisation, side, summary))


def evaluation_model(trained: TrainedClassifier, config, accelerator):
    """(model, to_input) as a run evaluates its own: its memory format, on the Accelerator's
    device in its precision, compiled if it was."""
    device = accelerator.device
    network = place_model(config, trained.network, device)
    if config.compile:
        network = torch.compile(network)
    network = accelerator.prepare_model(network, evaluation_mode=True)
    card = trained.card
    channels_last = uses_channels_last(config, device)
    to_input = InputTransform(card["mean"], card["std"], card["input_size"], channels_last)
    return network, to_input


def out_path(out: str | None, run_dir: str) -> str | None:
    """--out as an absolute path; refused where it would change the run's own records."""
    if not out:
        return None
    path = os.path.abspath(out)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise UserError(f"--out {out}: the folder {folder} does not exist. Create it first.")
    special = os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path))
    if os.path.islink(path) or special:
        # /dev/stdout (a link), a FIFO, a device: the atomic rename would replace it.
        raise UserError(
            f"--out {out} is not a regular file (a link, a device or a FIFO), which the file "
            f"written would replace. Name a file."
        )
    in_run = os.path.commonpath([path, run_dir]) == run_dir
    if os.path.isdir(path) or (in_run and (os.path.exists(path) or folder != run_dir)):
        raise UserError(
            f"--out {out} would replace a folder or a file of the run's own records"
            + (f" (or write under its {CHECKPOINTS}/ or tracker folders)" if in_run else "")
            + ". Name a new file, outside the run folder or directly in it."
        )
    return path


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes read like the project's other errors: one line, exit 2."""

    def error(self, message: str):
        self.exit(USAGE_EXIT_CODE, f"error: {message}. See `python -m {self.prog} --help`.\n")


def disk_failure(error: OSError) -> str:
    """The paragraph for a file (or stdout, an error without a file name) the disk refused."""
    from cifar.checkpoint import write_failure

    if error.filename is None:  # the output printed, to a file on a full disk
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            # What is still buffered for stdout would fail again, at exit, with a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        reason = f"{type(error).__name__}: {error.strerror}"
        return (
            f"could not write to stdout ({reason}): the output is incomplete. Free some space "
            f"where it goes, or send it elsewhere. The run folder was not changed."
        )
    path = os.fsdecode(error.filename)
    return (
        f"could not write {path} ({write_failure(path, error)}); nothing was left there. Free "
        f"some space, or name a file on another disk. The run folder was not changed."
    )


def run_command(task) -> int:
    """task() as a command: 0 when done; a UserError (or an image that does not decode) is one
    paragraph and exit 2; the process group, if any, is left cleanly."""
    try:
        task()
    except UserError as error:
        report_user_error(error)
        return USAGE_EXIT_CODE
    except UnreadableImage as error:  # maybe in this process's shard alone: say it here
        print(f"error: {error.reason}", file=sys.stderr, flush=True)
        return USAGE_EXIT_CODE
    except RuntimeError as error:  # a run trained with --deterministic, scored the same way
        refusal = nondeterministic_operation(error)
        if refusal is None:
            raise
        report_user_error(refusal)
        return USAGE_EXIT_CODE
    except OSError as error:  # --out or stdout on a full or failing disk
        if error.errno not in DISK_ERRORS:
            raise
        report_user_error(UserError(disk_failure(error)))
        return IO_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        report_user_error(UserError("interrupted; nothing was written."))
        return INTERRUPTED_EXIT_CODE
    finally:
        distributed = torch.distributed
        if distributed.is_available() and distributed.is_initialized():
            distributed.destroy_process_group()
    return 0
