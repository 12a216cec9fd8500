"""Setting up one run: folder, Accelerator, data, model, optimizer, resume state."""

import math
import os
import platform
from dataclasses import dataclass

import accelerate
import torch
import torchvision
from accelerate.utils import pad_across_processes, set_seed
from torch import nn

from cifar.build import (
    broadcast,
    build_loaders,
    build_optimizer,
    build_scheduler,
    decide_on_main,
    default_run_dir,
    input_transform,
    make_accelerator,
    on_main_first,
    place_model,
)
from cifar.checkpoint import list_checkpoints, load_checkpoint, resolve_resume, run_identity
from cifar.data import build_datasets
from cifar.errors import UserError, say
from cifar.loaders import DeviceLoader
from cifar.models import build_model, load_pretrained_state
from cifar.tracking import RunFiles, check_tracker_installed, prepare_tracker, start_tracker


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
    checkpoints_dir: str
    progress: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def fresh_progress(config, accelerator) -> dict:
    """What a checkpoint's progress.json holds, at the start of a run."""
    return {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "history": [],
        "partial": {"loss_sum": 0.0, "correct": 0, "seen": 0},
        "wall_seconds": 0.0,
        "last_eval": None,
        "identity": run_identity(config, accelerator),
    }


def claim_run_dir(config, run_dir: str) -> None:
    """Create the run folder; refuse to overwrite another run unless resuming it."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise UserError(
            f"cannot write to the run folder {os.path.abspath(run_dir)} ({error.strerror}). "
            f"Choose a writable --output-dir."
        ) from None
    has_run = os.path.exists(os.path.join(run_dir, "metrics.jsonl")) or list_checkpoints(
        os.path.join(run_dir, "checkpoints")
    )
    if has_run and not config.resume:
        raise UserError(
            f"the run folder {os.path.abspath(run_dir)} already holds a run. Continue it with "
            f"--resume auto, or choose another --output-dir."
        )


def setup_run(config) -> Run:
    check_tracker_installed(config)
    accelerator = make_accelerator(config)
    run_dir = broadcast(accelerator, config.output_dir or default_run_dir(config))
    decide_on_main(accelerator, lambda: claim_run_dir(config, run_dir))
    accelerator.project_configuration.set_directories(run_dir)
    tracker_kwargs = prepare_tracker(config, run_dir, accelerator.is_main_process)

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
        model = torch.compile(model)
    optimizer = build_optimizer(config, model)
    # Accelerate's own DataLoader (ImageFolder) steps at its end, hence ceil.
    steps = config.epochs * math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
    scheduler = build_scheduler(config, optimizer, steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    set_seed(config.seed, device_specific=True)

    checkpoints_dir = os.path.join(run_dir, "checkpoints")
    candidates = decide_on_main(accelerator, lambda: resolve_resume(config, checkpoints_dir))
    progress = load_checkpoint(accelerator, config, candidates) or fresh_progress(
        config, accelerator
    )
    files = RunFiles(run_dir, accelerator.is_main_process)
    files.write_config(describe_run(config, accelerator, run_dir))
    files.write_metrics(progress["history"])
    start_tracker(accelerator, config, run_dir, tracker_kwargs, config.to_dict())
    say(
        accelerator,
        f"{config.model} on {config.dataset}: {accelerator.num_processes} process(es), "
        f"{accelerator.device.type}, precision {accelerator.mixed_precision}, "
        f"{len(train_loader)} batches/epoch/process, run folder {run_dir}"
        + (
            f", resuming at epoch {progress['epoch'] + 1} step {progress['global_step']}"
            if progress["global_step"]
            else ""
        ),
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
        checkpoints_dir,
        progress,
    )


def describe_run(config, accelerator, run_dir: str) -> dict:
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


@torch.no_grad()
def backbone_features(accelerator, model, loader: DeviceLoader, to_input) -> torch.Tensor:
    """Backbone features of the whole set in order: each process computes its shard."""
    model.to(accelerator.device).eval()
    chunks = []
    with accelerator.autocast():
        for images, _ in loader:
            chunks.append(model.features(to_input(images)).float())
    local = torch.cat(chunks) if chunks else torch.zeros(0, 2048, device=accelerator.device)
    if accelerator.num_processes == 1:
        return local
    counts = accelerator.gather(torch.tensor([len(local)], device=accelerator.device)).tolist()
    gathered = accelerator.gather(pad_across_processes(local, dim=0))
    width = max(counts)
    return torch.cat([gathered[i * width : i * width + n] for i, n in enumerate(counts)])


def feature_loaders(config, accelerator, model, to_input, train_loader, test_loader):
    """Loaders over cached backbone features instead of images (frozen backbone, no aug)."""
    shard = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "device": accelerator.device,
    }
    in_order = DeviceLoader(
        train_loader.images, train_loader.labels, batch_size=config.batch_size, train=False, **shard
    )
    train_features = backbone_features(accelerator, model, in_order, to_input)
    test_features = backbone_features(accelerator, model, test_loader, to_input)
    train_loader = DeviceLoader(
        train_features,
        train_loader.labels,
        batch_size=config.batch_size,
        train=True,
        shuffle=config.shuffle,
        seed=config.seed,
        accumulation_steps=train_loader.accumulation_steps,
        **shard,
    )
    test_loader = DeviceLoader(
        test_features, test_loader.labels, batch_size=config.batch_size, train=False, **shard
    )
    return train_loader, test_loader


def prepare_only(config) -> None:
    """Fetch the dataset (and ResNet-50 weights) into their caches, for offline compute nodes."""
    train, test = build_datasets(config)
    print(
        f"dataset {config.dataset} ready in {config.data_dir}: {len(train)} train, "
        f"{len(test)} test images"
    )
    if config.model == "resnet50" and config.pretrained:
        load_pretrained_state()
        print("ResNet-50 IMAGENET1K_V2 weights ready in the torch hub cache")
