"""An exponential moving average of a model's weights (--ema DECAY), kept beside the trained
model, updated after every optimizer step, scored instead of it, and checkpointed with it.

torch's AveragedModel holds the average (its copy of the network and its n_averaged counter,
the state saved). The update is get_ema_multi_avg_fn's arithmetic, one fused lerp, written
here: AveragedModel.update_parameters copies its CPU counter to each device and dtype group on
every step, which on a GPU is a blocking copy that drains the stream twice a step (floats and
BatchNorm's int64 step count). BatchNorm running statistics are averaged too, as timm's
ModelEma does: statistics copied from the trained model belong to the trained weights, not to
their average; its num_batches_tracked, a count, is copied. It is saved in the checkpoint as
ema.safetensors, not through Accelerate's register_for_checkpointing, which pickles custom
state and loads it with weights_only=False: every file of a checkpoint is loaded without
running pickled code.
"""

import os

import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel

from cifar.record import EMA_WEIGHTS


class WeightAverage:
    """The EMA of `model`'s parameters and buffers (model: the module the optimizer trains,
    unwrapped, on its device). On several processes each keeps its own: the parameters are
    equal on all of them (DDP), and evaluation shares rank 0's BatchNorm statistics first, so
    the results are those of rank 0's average, which is the one saved."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.averaged = AveragedModel(model, use_buffers=True)
        self.averaged.eval()  # never trained; evaluation sets eval mode anyway
        # The tensors each update reads and writes, paired once: optimizer steps and
        # load_state_dict change them in place, so the pairs hold for the whole run.
        pairs = list(
            zip(
                [*self.module.parameters(), *self.module.buffers()],
                [t.detach() for t in (*model.parameters(), *model.buffers())],
                strict=True,
            )
        )
        self.floats = ([a for a, _ in pairs if a.is_floating_point()],
                       [c for a, c in pairs if a.is_floating_point()])  # fmt: skip
        self.counts = ([a for a, _ in pairs if not a.is_floating_point()],
                       [c for a, c in pairs if not a.is_floating_point()])  # fmt: skip

    @property
    def module(self) -> torch.nn.Module:
        """The averaged network, for evaluation and the portable model."""
        return self.averaged.module

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step: the first copies the weights, each later one moves the
        average (1 - decay) of the way to them. No host sync: the counter stays on the CPU."""
        if int(self.averaged.n_averaged) == 0:
            torch._foreach_copy_(*self.floats)
        else:
            torch._foreach_lerp_(*self.floats, 1.0 - self.decay)
        if self.counts[0]:
            torch._foreach_copy_(*self.counts)
        self.averaged.n_averaged += 1

    def save(self, folder: str) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.averaged.state_dict().items()}
        save_file(state, os.path.join(folder, EMA_WEIGHTS))

    def load(self, folder: str) -> None:
        """The average as the checkpoint in folder saved it; OSError or the safetensors error
        when the file is missing or torn, RuntimeError when it is of another network."""
        path = os.path.join(folder, EMA_WEIGHTS)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{EMA_WEIGHTS} is missing (the checkpoint has no --ema)")
        self.averaged.load_state_dict(load_file(path, device=str(self.averaged.n_averaged.device)))


def weight_average(config, model: torch.nn.Module) -> WeightAverage | None:
    """The run's EMA, or None without --ema."""
    return WeightAverage(model, config.ema) if config.ema else None
