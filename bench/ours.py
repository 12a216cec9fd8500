"""Our side of a measurement: the model as setup_run places it, and train_epoch timed."""

from types import SimpleNamespace

import torch
from torch import nn

from bench.timing import timed_epochs
from cifar.build import build_optimizer, build_scheduler, place_model
from cifar.engine import Totals, train_epoch
from cifar.models import build_model


def settings(accelerator, compiled: bool) -> str:
    """Our precision (and compilation), as the labels and the section heading show it."""
    precision = {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)
    return precision + (", compiled" if compiled else "")


def prepare_model(config, accelerator):
    """The model as setup_run places it (memory format for the device)."""
    torch.manual_seed(config.seed)
    return place_model(config, build_model(config, 10), accelerator.device)


def train_on(config, accelerator, model, loader, to_input, args) -> tuple[float, float]:
    """Warm up, then time train_epoch over loader; returns (images/s, epoch seconds)."""
    if config.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, 1)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    device = accelerator.device
    # What train_epoch reads of a Run.
    run = SimpleNamespace(
        accelerator=accelerator,
        model=model,
        train_loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn,
        to_input=to_input,
        ema=None,
    )

    def run_epoch(epoch: int, limit: int | None = None) -> None:
        loader.set_epoch(epoch)
        stop = None if limit is None else (lambda done, loss: done >= limit)
        train_epoch(run, Totals.zeros(device), after_step=stop)

    run_epoch(0, limit=max(1, args.warmup))
    seconds = timed_epochs(run_epoch, device, args)
    accelerator.free_memory()
    return loader.num_samples / seconds, seconds
