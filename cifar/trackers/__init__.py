"""The experiment trackers (W&B, TensorBoard, none), one adapter class each, in a registry.

An adapter owns everything a run asks of its tracker: whether its package is installed and its
credentials are usable (`check`), its settings (`prepare`), how it joins the Accelerator
(`log_with`, `start`), the end-of-run entries (`log_run_end`) and the upload hint
(`sync_hint`). The live tracker is Accelerate's GeneralTracker; only the main process logs.

Modules: base.py (the interface, --tracker none, what every adapter shares), tensorboard.py,
weights_and_biases.py.
"""

from cifar.trackers.base import (
    SAMPLE_IMAGES,
    TRACKER_FILE,
    NoTracker,
    Tracker,
    per_class_rows,
    predict_samples,
    summary_scalars,
    tracker_run_id,
)
from cifar.trackers.tensorboard import ConfigTensorBoardTracker, TensorBoard
from cifar.trackers.weights_and_biases import (
    WANDB_PROBE_SECONDS,
    WandB,
    wandb_base_url,
    wandb_has_credentials,
    wandb_reachable,
)

__all__ = [
    "REGISTRY",
    "SAMPLE_IMAGES",
    "TRACKER_FILE",
    "WANDB",
    "WANDB_PROBE_SECONDS",
    "ConfigTensorBoardTracker",
    "NoTracker",
    "TensorBoard",
    "Tracker",
    "WandB",
    "check_trackers",
    "per_class_rows",
    "predict_samples",
    "summarizes_studies",
    "summary_scalars",
    "tracker_named",
    "tracker_run_id",
    "wandb_base_url",
    "wandb_has_credentials",
    "wandb_reachable",
]

WANDB = WandB()


# --tracker's choices, the default first.
REGISTRY: dict[str, Tracker] = {t.name: t for t in (WANDB, TensorBoard(), NoTracker())}


def tracker_named(name: str) -> Tracker:
    """The adapter of --tracker NAME (config.py limits the names to the registry's)."""
    return REGISTRY[name]


def summarizes_studies(name) -> bool:
    """Whether a study whose runs logged with --tracker NAME logs its results there too (a
    name from a run's config.json, which may be anything)."""
    tracker = REGISTRY.get(name)
    return tracker is not None and tracker.summarizes_studies


def check_trackers(names) -> None:
    """check() every named tracker once: a UserError before any run starts."""
    for name in dict.fromkeys(names):
        tracker_named(name).check()
