"""What a run trains with: the Accelerator, the model's placement, the optimizer and the
schedule, from a Config."""

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs

from cifar.data.transforms import uses_channels_last
from cifar.errors import UserError
from cifar.processes import apply_tf32
from cifar.trackers import tracker_named

# How long a process waits in a collective for the others. The other processes wait in one
# while the main process alone downloads a dataset, decodes an image cache or checks images,
# which can take far longer than NCCL's default of 10 minutes (gloo's: 30).
COLLECTIVE_TIMEOUT_VARIABLE = "CIFAR_COLLECTIVE_TIMEOUT_MINUTES"
COLLECTIVE_TIMEOUT_MINUTES = 180
COLLECTIVE_TIMEOUT_LIMIT = 7 * 24 * 60


def collective_timeout() -> timedelta:
    """COLLECTIVE_TIMEOUT_MINUTES, or the environment's CIFAR_COLLECTIVE_TIMEOUT_MINUTES."""
    text = os.environ.get(COLLECTIVE_TIMEOUT_VARIABLE, str(COLLECTIVE_TIMEOUT_MINUTES))
    try:
        minutes = float(text)
    except ValueError:
        minutes = 0.0
    if not 1 <= minutes <= COLLECTIVE_TIMEOUT_LIMIT:  # NaN too; below a minute, nothing starts
        raise UserError(
            f"{COLLECTIVE_TIMEOUT_VARIABLE}={text!r} is not a number of minutes from 1 to "
            f"{COLLECTIVE_TIMEOUT_LIMIT} (a week); unset it for the default "
            f"({COLLECTIVE_TIMEOUT_MINUTES})."
        )
    return timedelta(minutes=minutes)


def make_accelerator(config, project_dir: str | None = None) -> Accelerator:
    """The one Accelerator of a run; precision and accumulation from flags or accelerate config.
    The process-wide settings come first, from processes.apply_process_settings."""
    kwargs = {
        "step_scheduler_with_optimizer": False,
        "project_dir": project_dir,
        "kwargs_handlers": [InitProcessGroupKwargs(timeout=collective_timeout())],
    }
    if config.mixed_precision:
        kwargs["mixed_precision"] = config.mixed_precision
    if config.gradient_accumulation_steps:
        kwargs["gradient_accumulation_plugin"] = GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation_steps
        )
    log_with = tracker_named(config.tracker).log_with  # None: it joins in start(), later
    if log_with:
        kwargs["log_with"] = log_with
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        kwargs["cpu"] = True  # several CPU processes (torchrun): Accelerate needs cpu=True for gloo
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError as error:  # e.g. bf16 asked of a device without it
        raise UserError(f"Accelerate refused the settings: {error}") from None
    # Accelerate turns TF32 matmuls on for a dynamo backend in fp32 on CUDA; --tf32 decides.
    apply_tf32(config.tf32)
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UserError(
            "fp16 mixed precision needs a GPU; on the CPU Accelerate would silently train in "
            "fp32. Use --mixed-precision bf16 (or `accelerate launch --mixed_precision bf16`), "
            "or no for fp32."
        )
    return accelerator


def place_model(config, model: torch.nn.Module, device) -> torch.nn.Module:
    """Memory format and kernel choices for the device; the weights stay on the CPU until
    accelerator.prepare moves them. channels_last speeds convolutions up on GPUs and CPUs
    alike (SimpleCNN on a 2-core CPU: 1.5x)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    if uses_channels_last(config, device):
        model = model.to(memory_format=torch.channels_last)
    return model


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
