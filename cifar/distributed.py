"""Collectives: the few decisions the main process makes for all, and agreement between them.

With one process each is a plain call; with several, a UserError raised on the main process is
raised on every process, so none waits forever for the others.
"""

import sys

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from cifar.errors import UserError


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


def all_processes_agree(accelerator, flag: float) -> bool:
    if accelerator.num_processes == 1:
        return bool(flag)
    value = torch.tensor([flag], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() == accelerator.num_processes)


def bare_module(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The module a run trains, out of DDP's wrapper and torch.compile's: under DDP
    unwrap_model(keep_torch_compile=False) leaves the compiled module it wraps as it is."""
    model = accelerator.unwrap_model(model, keep_torch_compile=False)
    return getattr(model, "_orig_mod", model)
