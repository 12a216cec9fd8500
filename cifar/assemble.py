"""Assembling one run from a Config: the process settings, the Accelerator, the run folder, the
data and loaders, the model, optimizer and schedule, and where the run resumes (a Run)."""

import os
import platform
from dataclasses import dataclass

import accelerate
import torch
import torchvision
from accelerate.utils import set_seed
from torch import nn

from cifar.averaging import WeightAverage, weight_average
from cifar.build import build_optimizer, build_scheduler, make_accelerator, place_model
from cifar.checkpoint import (
    ACCUMULATION_TAIL,
    DATA_FILE_SETTINGS,
    UNRECORDED_BEFORE,
    load_checkpoint,
    refuse_other_settings,
    resolve_resume,
    settings_differences,
)
from cifar.data import build_datasets, dataset_spec
from cifar.data.loaders import build_loaders, feature_loaders
from cifar.data.manifest import MANIFEST_SETTING, up_to_date
from cifar.data.transforms import input_transform
from cifar.distributed import (
    bare_module,
    broadcast,
    decide_on_main,
    on_main_first,
    run_on_main,
)
from cifar.errors import UserError, say
from cifar.models import build_model, load_pretrained_state, model_spec
from cifar.processes import apply_process_settings
from cifar.record import (
    CONFIG_FILE,
    METRICS_FILE,
    PROGRESS_FILE,
    SUMMARY_FILE,
    Progress,
    RecordError,
    RunFiles,
    RunFolder,
    Shape,
    checkpoints_dir,
    default_run_dir,
    holds_a_run,
    log_resume,
    new_folder_each_start,
    read_json,
)
from cifar.record.schema import check_epoch_records
from cifar.trackers import tracker_named


@dataclass
class Run:
    accelerator: accelerate.Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: nn.Module
    to_input: object
    train_loader: object
    test_loader: object
    classes: list
    files: RunFiles
    folder: RunFolder | None  # the main process's claim on the run folder
    checkpoints_dir: str
    progress: Progress
    ema: WeightAverage | None = None  # --ema: the average that is scored, saved and exported

    @property
    def scored_model(self) -> nn.Module:
        """The weights the run evaluates: the EMA's with --ema, else the trained model."""
        return self.model if self.ema is None else self.ema.module

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class RunFinished(Exception):
    """The run folder holds this run, finished: nothing to do, nothing changed."""


def run_settings(config, accelerator, train=None, test=None) -> dict:
    """Every setting that shapes the run's results, as resolved (precision and accumulation from
    the launcher too), with the data sizes once the data is known and what the dataset's files
    are (an image folder's manifest digest: without train, of the files as they are now)."""
    settings = {
        **config.to_dict(),
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "world_size": accelerator.num_processes,
    }
    if model_spec(config.model).input_size is not None:
        del settings["image_size"]  # unused: runs recorded any value before it was refused
    spec = dataset_spec(config.dataset)
    settings.update(spec.settings(config))
    settings.update(spec.data_settings(config, train))
    if train is not None:
        settings.update(train_images=len(train), test_images=len(test))
    return settings


def refuse_another_runs_checkpoint(config, run_dir: str, candidates: list[str]) -> None:
    """--resume PATH may continue another run into a new folder, never over a folder that
    holds a run of its own."""
    home = os.path.realpath(run_dir) + os.sep
    foreign = [c for c in candidates if not os.path.realpath(c).startswith(home)]
    if foreign and holds_a_run(run_dir):
        source = os.path.dirname(os.path.dirname(os.path.realpath(foreign[0])))
        raise UserError(
            f"the run folder {run_dir} already holds a run, and --resume {config.resume} is "
            f"another run's checkpoint: continuing it here would overwrite this one. Continue "
            f"that run in its own folder (--output-dir {source} --resume auto) or in a new, "
            f"empty --output-dir."
        )


def refuse_changed_files_early(config, accelerator, candidates: list[str]) -> None:
    """A dataset's files that changed since the newest checkpoint (an image folder's manifest),
    refused before they are decoded, with every other difference then known. The full check,
    on every process once the data is read, follows and names the rest."""
    if not candidates:
        return
    try:
        saved = read_json(os.path.join(candidates[0], PROGRESS_FILE))
    except (OSError, ValueError):
        return  # the full check says what is wrong with it
    if isinstance(saved, dict) and isinstance(saved.get("settings"), dict):
        differences = settings_differences(saved["settings"], run_settings(config, accelerator))
        if DATA_FILE_SETTINGS & differences.keys():
            refuse_other_settings(differences, candidates[0])


def finished_message(config, accelerator, run_dir: str, candidates: list[str]) -> str:
    """What to say when the folder holds this very run, finished (checked before any data is
    read); empty otherwise. A finished run asked for under other settings is refused."""
    if not candidates or not os.path.isfile(os.path.join(run_dir, SUMMARY_FILE)):
        return ""
    try:
        saved = read_json(os.path.join(candidates[0], PROGRESS_FILE))
    except (OSError, ValueError):
        return ""  # the full check, after the data is read, says what is wrong with it
    if not isinstance(saved, dict) or saved.get("epoch") != config.epochs:
        return ""
    settings = saved.get("settings") if isinstance(saved.get("settings"), dict) else {}
    current = run_settings(config, accelerator)
    refuse_other_settings(settings_differences(settings, current), run_dir)
    results = f"Its results are in {os.path.join(run_dir, SUMMARY_FILE)}"
    if not os.path.isfile(os.path.join(run_dir, METRICS_FILE)):
        try:
            check_epoch_records(saved.get("history"))
        except RecordError:
            return ""  # the full check says what is wrong with the checkpoint
        RunFiles(run_dir, is_main=True).write_metrics(saved["history"])
        return (
            f"the run in {run_dir} is finished ({config.epochs} epochs); its {METRICS_FILE} was "
            f"missing and was written again from the checkpoint {candidates[0]}. {results}."
        )
    return (
        f"the run in {run_dir} is finished ({config.epochs} epochs); nothing to do, no file "
        f"changed. {results}."
    )


def setup_run(config) -> Run:
    """The Run config describes, its folder claimed; RunFinished when it is already done."""
    tracker_named(config.tracker).check()
    process_settings = apply_process_settings(config)
    accelerator = make_accelerator(config)
    run_dir = broadcast(accelerator, os.path.abspath(config.output_dir or default_run_dir(config)))
    fresh = new_folder_each_start(config)  # another run may have taken this second's name
    folder = run_on_main(accelerator, lambda: RunFolder.claim(run_dir, bool(config.resume), fresh))
    run_dir = broadcast(accelerator, folder.path if folder is not None else run_dir)
    try:
        return assemble_run(config, accelerator, run_dir, folder, process_settings)
    except BaseException:
        if folder is not None:
            folder.abandon()
        raise


def assemble_run(config, accelerator, run_dir: str, folder, process_settings: dict) -> Run:
    """The rest of setup_run, once the run folder is ours."""
    checkpoints = checkpoints_dir(run_dir)
    candidates = decide_on_main(accelerator, lambda: resolve_resume(config, checkpoints))
    run_on_main(accelerator, lambda: refuse_another_runs_checkpoint(config, run_dir, candidates))
    run_on_main(accelerator, lambda: refuse_changed_files_early(config, accelerator, candidates))
    finished = decide_on_main(
        accelerator, lambda: finished_message(config, accelerator, run_dir, candidates)
    )
    if finished:
        raise RunFinished(finished)
    accelerator.project_configuration.set_directories(run_dir)
    tracker = tracker_named(config.tracker)
    tracker_kwargs = tracker.prepare(config, run_dir, accelerator.is_main_process)

    set_seed(config.seed)
    train, test = on_main_first(accelerator, lambda: build_datasets(config))
    classes = list(train.classes)
    model = on_main_first(accelerator, lambda: build_model(config, len(classes)))
    model = place_model(config, model, accelerator.device)
    train_loader, test_loader = build_loaders(config, accelerator, train, test)
    to_input = input_transform(config, getattr(train, "images", None), accelerator.device)
    if config.cache_features:
        train_loader, test_loader = feature_loaders(
            config, accelerator, model, to_input, train_loader, test_loader
        )
        to_input = nn.Identity()  # the loaders now yield backbone features
        model = model.head
    if config.compile:
        # Before prepare, as PyTorch advises (compile the module DDP wraps): its first call runs
        # inside DDP's forward, where Dynamo splits the graph at DDP's gradient buckets, so the
        # all-reduce still overlaps the backward. Accelerate compiles after wrapping, but its
        # unwrap_model (each evaluation) then puts the bare module into the compiled one, which
        # would go on training without DDP.
        model = torch.compile(model)
    optimizer = build_optimizer(config, model)
    accumulation = accelerator.gradient_accumulation_steps
    shape = Shape(config.epochs, len(train_loader), accumulation, len(classes))
    scheduler = build_scheduler(config, optimizer, config.epochs * shape.steps_per_epoch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ema = weight_average(config, bare_module(accelerator, model))
    # Per process, as device_specific would seed, but wrapped into the range every rank accepts.
    set_seed((config.seed + accelerator.process_index) % 2**32)

    settings = run_settings(config, accelerator, train, test)
    if shape.batches_per_epoch % accumulation:
        # The batches of the smaller last step, which versions before it left out of every
        # epoch: a checkpoint of such a version records none, and is refused, not continued
        # differently.
        settings[ACCUMULATION_TAIL] = shape.batches_per_epoch % accumulation
    resumed_from, progress = load_checkpoint(accelerator, candidates, settings, shape, ema)
    if folder is not None:
        folder.announce()
    files = RunFiles(run_dir, accelerator.is_main_process)
    record = describe_run(config, accelerator, run_dir, process_settings, settings)
    manifest = getattr(train, "manifest", None)  # written only now that no resume is refused
    if manifest is not None and files.is_main and not up_to_date(run_dir, manifest.digest):
        files.write_manifest(manifest.text(os.path.realpath(config.data_dir)))
    if progress is None:
        progress = Progress(settings)
        files.write_config(record)
    else:
        if not os.path.exists(files.path(CONFIG_FILE)):
            files.write_config(record)
        run_on_main(accelerator, lambda: log_resume(run_dir, resumed_from, progress, settings))
        for name in UNRECORDED_BEFORE:  # a checkpoint from before they were recorded: from now on
            if name in settings:
                progress.settings.setdefault(name, settings[name])
    files.write_metrics(progress.history)
    tracker.start(accelerator, config, run_dir, tracker_kwargs, config.to_dict())
    say(
        accelerator,
        f"{config.model} on {config.dataset}: {accelerator.num_processes} process(es), "
        f"{accelerator.device.type}, precision {accelerator.mixed_precision}, "
        f"{len(train_loader)} batches/epoch/process, run folder {run_dir}"
        + resume_note(config, progress),
    )
    return Run(
        accelerator,
        model,
        optimizer,
        scheduler,
        nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        to_input,
        train_loader,
        test_loader,
        classes,
        files,
        folder,
        checkpoints,
        progress,
        ema,
    )


def resume_note(config, progress) -> str:
    """Where the run goes on from, for its first line: nothing for a new run; for one whose
    epochs are all trained (its summary was lost), that only its results are written."""
    if not progress.global_step:
        return ""
    if progress.epoch >= config.epochs:
        return (
            f", all {config.epochs} epochs trained: writing its results again from the "
            f"checkpoint of step {progress.global_step}"
        )
    return f", resuming at epoch {progress.epoch + 1} step {progress.global_step}"


def describe_run(config, accelerator, run_dir: str, process_settings: dict, settings: dict) -> dict:
    """config.json: the resolved Config plus where and with what it ran."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        **config.to_dict(),
        "output_dir": run_dir,
        "world_size": accelerator.num_processes,
        "mixed_precision_used": accelerator.mixed_precision,
        "gradient_accumulation_steps_used": accelerator.gradient_accumulation_steps,
        "device": device.type,
        "device_name": name,
        "process_settings": process_settings,
        "train_images": settings["train_images"],  # the data as trained on, subsets applied
        "test_images": settings["test_images"],
        **({MANIFEST_SETTING: settings[MANIFEST_SETTING]} if MANIFEST_SETTING in settings else {}),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "accelerate": accelerate.__version__,
        },
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prepare_only(config) -> None:
    """Fetch the dataset (and ResNet-50 weights) into their caches, for offline compute nodes."""
    train, test = build_datasets(config)
    print(
        f"dataset {config.dataset} ready in {config.data_dir}: {len(train)} train, "
        f"{len(test)} test images"
    )
    weights = model_spec(config.model).weights
    if weights is not None and config.pretrained:
        load_pretrained_state(config.model)
        print(f"{config.model} {weights.name} weights ready in the torch hub cache")
