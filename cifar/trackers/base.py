"""What every tracker adapter shares: the Tracker interface, --tracker none, the run's tracker
id, and the end-of-run entries (summary scalars, per-class rows, sample predictions).
"""

import importlib.util
import json
import os
import uuid

import torch

from cifar.distributed import bare_module
from cifar.errors import UserError
from cifar.evaluation import classify
from cifar.record import write_json

TRACKER_FILE = "tracker.json"


SAMPLE_IMAGES = 32  # test images in the end-of-run predictions table


class Tracker:
    """The tracker `--tracker NAME` picks; subclasses override what their tracker does."""

    name = ""
    package = ""  # the module `--tracker NAME` needs installed
    log_with = None  # Accelerator(log_with=...), for a tracker that joins as it is made
    summarizes_studies = False  # whether a study logs its results as a run of this tracker

    def check(self) -> None:
        """A UserError, before any work, when the tracker cannot log: its package is missing."""
        if importlib.util.find_spec(self.package) is None:
            raise UserError(
                f"--tracker {self.name} needs the {self.package} package, which is not "
                f"installed. Run `pip install {self.package}`, or train without a tracker: "
                f"--tracker none."
            )

    def prepare(self, config, run_dir: str, is_main: bool) -> dict:
        """Accelerate's init_kwargs for this tracker, once the run folder is known."""
        return {}

    def start(self, accelerator, config, run_dir: str, init_kwargs: dict, flat_config: dict):
        """Start the tracker's run on the main process, resuming it when there is one."""

    def log_run_end(self, accelerator, run, summary: dict) -> None:
        """Final tracker entries, from the main process: the summary values (equal to
        summary.json), per-class accuracy, the confusion matrix and sample test predictions.

        Nothing here is collective: only the main process runs the model, on its own first
        test images, outside any DDP wrapper.
        """
        if not accelerator.is_main_process:
            return
        tta = summary.get("test_time_augmentation") == "flip"
        samples = predict_samples(accelerator, run, SAMPLE_IMAGES, tta)
        tracker = accelerator.get_tracker(self.name, unwrap=True)
        self.log_end(tracker, summary, samples, run.progress.global_step)

    def log_end(self, tracker, summary: dict, samples: dict | None, step: int) -> None:
        """log_run_end's entries, written with the tracker's own object."""

    def sync_hint(self, accelerator) -> str:
        """What to run to upload a run logged offline; empty when there is nothing to do."""
        return ""

    def log_model(self, accelerator, run_dir: str) -> None:
        """Log the run's portable model (model.safetensors + model.json) where the tracker keeps
        files; nothing for a tracker without them."""


class NoTracker(Tracker):
    """--tracker none: the run folder only; nothing to install, start or log."""

    name = "none"

    def check(self) -> None:
        pass

    def log_run_end(self, accelerator, run, summary: dict) -> None:
        pass


def tracker_run_id(run_dir: str) -> str:
    """The tracker run id of this run folder: made once, reused on resume."""
    path = os.path.join(run_dir, TRACKER_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)["run_id"]
    run_id = uuid.uuid4().hex[:8]
    write_json(path, {"run_id": run_id})
    return run_id


def summary_scalars(summary: dict) -> dict:
    """summary/<key> for every number of summary.json, per-class accuracy included."""
    scalars = {
        f"summary/{k}": v
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for name, accuracy in per_class_rows(summary):
        scalars[f"summary/per_class_accuracy/{name}"] = accuracy
    return scalars


def per_class_rows(summary: dict) -> list[list]:
    """[class, accuracy] of each class the run had a test image of: a class with none has no
    accuracy (null in summary.json), and a tracker logs nothing for it rather than a 0."""
    accuracy = summary["per_class_accuracy"]
    return [[c, accuracy[c]] for c in summary["classes"] if accuracy.get(c) is not None]


@torch.no_grad()
def predict_samples(accelerator, run, count: int, tta: bool = False) -> dict | None:
    """The first `count` images of this process's test shard with label, prediction and its
    softmax probability, scored as the summary is (the EMA's weights with --ema, flips with
    --tta); None when the loader yields cached features instead of images."""
    model = bare_module(accelerator, run.scored_model)  # eager: compiled, it would compile again
    was_training = model.training
    model.eval()
    images, labels, predictions, confidences = [], [], [], []
    seen = 0
    for batch, batch_labels in run.test_loader:
        if batch.dtype != torch.uint8 or batch.dim() != 4:
            return None
        batch, batch_labels = batch[: count - seen], batch_labels[: count - seen]
        with accelerator.autocast():
            logits = classify(model, run.to_input(batch), tta)
        confidence, prediction = logits.float().softmax(dim=1).max(dim=1)
        images.append(batch.permute(0, 2, 3, 1).cpu())  # N x H x W x C, as image libraries want
        labels += batch_labels.tolist()
        predictions += prediction.tolist()
        confidences += confidence.tolist()
        seen += len(batch)
        if seen >= count:
            break
    model.train(was_training)
    if not seen:
        return None
    return {
        "images": torch.cat(images).numpy(),
        "labels": [run.classes[i] for i in labels],
        "predictions": [run.classes[i] for i in predictions],
        "confidences": confidences,
    }
