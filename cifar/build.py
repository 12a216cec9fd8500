"""Assembling a run: the Accelerator, loaders, optimizer and schedule from a Config."""

import os
import sys
import time

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    GradientAccumulationPlugin,
    broadcast_object_list,
)
from torch.utils.data import DataLoader, Subset

from cifar.data import TensorImages
from cifar.errors import UserError
from cifar.imagefolder import find_unreadable, refuse_or_skip, stored_size
from cifar.loaders import (
    DeviceLoader,
    InputTransform,
    dataset_statistics,
    image_folder_transforms,
)
from cifar.models import IMAGENET_MEAN, IMAGENET_STD, model_spec


def make_accelerator(config, project_dir: str | None = None) -> Accelerator:
    """The one Accelerator of a run; precision and accumulation from flags or accelerate config."""
    from cifar.devices import check_gpus_usable

    check_gpus_usable(config.allow_cpu)  # before Accelerate quietly settles for the CPU
    kwargs = {
        "step_scheduler_with_optimizer": False,
        "project_dir": project_dir,
        # ImageFolder shuffling from the seed and epoch, so a resumed epoch replays its order.
        "dataloader_config": DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
    }
    if config.mixed_precision:
        kwargs["mixed_precision"] = config.mixed_precision
    if config.gradient_accumulation_steps:
        kwargs["gradient_accumulation_plugin"] = GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation_steps
        )
    if (
        config.tracker == "wandb"
    ):  # TensorBoard joins in start_tracker, once the run folder is known
        kwargs["log_with"] = config.tracker
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
        torch.use_deterministic_algorithms(True, warn_only=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        kwargs["cpu"] = True  # several CPU processes (torchrun): Accelerate needs cpu=True for gloo
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError as error:  # e.g. bf16 asked of a device without it
        raise UserError(f"Accelerate refused the settings: {error}") from None
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UserError(
            "fp16 mixed precision needs a GPU; on the CPU Accelerate would silently train in "
            "fp32. Use --mixed-precision bf16 (or `accelerate launch --mixed_precision bf16`), "
            "or no for fp32."
        )
    return accelerator


def run_on_main(accelerator: Accelerator, task):
    """task() on the main process only; a UserError it raises is raised on every process, so
    none waits forever. Returns task's result on the main process, None elsewhere."""
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = task()
        except UserError as raised:
            error = str(raised)
    error = broadcast(accelerator, error)
    if error:
        raise UserError(error)
    return result


def on_main_first(accelerator: Accelerator, build):
    """build() on the main process first (it may download or create files), then the others."""
    result = run_on_main(accelerator, build)
    if accelerator.is_main_process:
        return result
    try:
        return build()
    except UserError as error:  # this process alone failed (e.g. a node without the data)
        print(f"error (process {accelerator.process_index}): {error}", file=sys.stderr, flush=True)
        raise


def decide_on_main(accelerator: Accelerator, decide):
    """decide() on the main process only; its result reaches every process."""
    return broadcast(accelerator, run_on_main(accelerator, decide))


def broadcast(accelerator: Accelerator, value):
    """The main process's value, on every process."""
    if accelerator.num_processes == 1:
        return value
    return broadcast_object_list([value])[0]


def uses_channels_last(config, device) -> bool:
    return config.channels_last and device.type in ("cuda", "cpu")


def place_model(config, model: torch.nn.Module, device) -> torch.nn.Module:
    """Memory format and kernel choices for the device; the weights stay on the CPU until
    accelerator.prepare moves them. channels_last speeds convolutions up on GPUs and CPUs
    alike (SimpleCNN on a 2-core CPU: 1.5x)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    if uses_channels_last(config, device):
        model = model.to(memory_format=torch.channels_last)
    return model


def input_transform(config, train_images, device) -> InputTransform:
    """Normalisation as the model asks (its pretrained weights' mean and std, or the dataset's
    statistics) and a resize to its input size."""
    channels_last = uses_channels_last(config, device)
    spec = model_spec(config.model)
    size = spec.image_size(config)
    if spec.mean is not None:
        return InputTransform(spec.mean, spec.std, size, channels_last)
    if train_images is None:  # ImageFolder: statistics unknown up front, use ImageNet's
        return InputTransform(IMAGENET_MEAN, IMAGENET_STD, size, channels_last)
    mean, std = dataset_statistics(train_images)
    return InputTransform(mean, std, size, channels_last)


def build_loaders(config, accelerator: Accelerator, train, test):
    """(train_loader, test_loader) of device batches for this process."""
    if not isinstance(train, TensorImages):
        return image_folder_loaders(config, accelerator, train, test)
    shard = {"rank": accelerator.process_index, "world_size": accelerator.num_processes}
    steps = accelerator.gradient_accumulation_steps
    if len(train) < config.batch_size * accelerator.num_processes * steps:
        raise UserError(
            f"the training set has {len(train)} images, fewer than one optimizer step "
            f"needs ({config.batch_size} per process x {accelerator.num_processes} processes "
            f"x {steps} accumulation steps). Lower --batch-size or raise --train-subset."
        )
    train_loader = DeviceLoader(
        train.images,
        train.labels,
        batch_size=config.batch_size,
        device=accelerator.device,
        train=True,
        shuffle=config.shuffle,
        augment=config.augment,
        seed=config.seed,
        accumulation_steps=steps,
        **shard,
    )
    test_loader = DeviceLoader(
        test.images,
        test.labels,
        batch_size=config.batch_size,
        device=accelerator.device,
        train=False,
        **shard,
    )
    return train_loader, test_loader


def image_folder_loaders(config, accelerator: Accelerator, train, test):
    """DataLoaders that decode ImageFiles in workers, after the main process checked the files
    (a header read; a full decode with --skip-bad-images, whose failures every process drops)."""

    def check():
        samples = train.samples + test.samples
        failures = find_unreadable(samples, not config.skip_bad_images, config.num_workers)
        refuse_or_skip(failures, config.skip_bad_images)
        return [path for path, _ in failures]

    skipped = set(decide_on_main(accelerator, check))
    train, test = train.without(skipped), test.without(skipped)
    size = stored_size(config)
    train.transform = image_folder_transforms(size, config.augment)
    test.transform = image_folder_transforms(size, "none")
    if len(train) < config.batch_size * accelerator.num_processes:
        raise UserError(
            f"the training folder has {len(train)} images, fewer than one batch "
            f"({config.batch_size} x {accelerator.num_processes} processes). Lower --batch-size."
        )
    workers = {
        "num_workers": config.num_workers,
        "pin_memory": accelerator.device.type == "cuda",
        "persistent_workers": config.num_workers > 0,
    }
    train_loader = EpochLoader(
        accelerator,
        accelerator.prepare_data_loader(
            DataLoader(
                train,
                batch_size=config.batch_size,
                shuffle=config.shuffle,
                drop_last=True,
                **workers,
            )
        ),
        config.batch_size,
    )
    # Contiguous, uneven shards: each test image is evaluated exactly once.
    n, rank, world = len(test), accelerator.process_index, accelerator.num_processes
    lo, hi = rank * n // world, (rank + 1) * n // world
    test_loader = OnDevice(
        DataLoader(Subset(test, range(lo, hi)), batch_size=config.batch_size, **workers),
        accelerator.device,
    )
    return train_loader, test_loader


class EpochLoader:
    """Accelerate's prepared DataLoader behind the DeviceLoader interface (epochs, resuming)."""

    def __init__(self, accelerator: Accelerator, loader, batch_size: int):
        self.accelerator, self.loader, self.skip_batches = accelerator, loader, 0
        self.batch_size = batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.loader.set_epoch(epoch)
        self.skip_batches = skip_batches

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        """Images this process sees per epoch (whole batches only)."""
        return len(self.loader) * self.batch_size

    def __iter__(self):
        if not self.skip_batches:
            return iter(self.loader)
        return iter(self.accelerator.skip_first_batches(self.loader, self.skip_batches))


class OnDevice:
    """Wraps a DataLoader so its batches arrive on the device (non-blocking from pinned memory)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )


def build_optimizer(config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over trainable parameters only; no decay on biases and norms."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in trainable if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for _, p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        # Nesterov needs momentum; --momentum 0 is plain SGD.
        nesterov = config.momentum > 0
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=nesterov)
    return torch.optim.AdamW(groups, lr=config.lr)


def build_scheduler(config, optimizer, total_steps: int):
    """Per-optimizer-step schedule over the whole run (total_steps optimizer steps)."""
    if config.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps + 1,
            # A warm-up of at least one step: a run of a handful of steps would divide by zero.
            pct_start=max(0.25, 1.5 / (total_steps + 1)),
            anneal_strategy="linear",
            div_factor=10.0,
            final_div_factor=100.0,
        )
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def default_run_dir(config) -> str:
    job = os.environ.get("SLURM_JOB_ID")
    stamp = f"job{job}" if job else time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.model}-{config.dataset}-{stamp}")
