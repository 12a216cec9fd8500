"""Where a run stands: the progress.json of a checkpoint, typed and checked before it is trusted.

A progress file that is not what train.py writes (edited, foreign, from other data) is refused
with the reason, and its checkpoint is skipped like a torn one.
"""

import math
from dataclasses import asdict, dataclass, field

from cifar.record.schema import (
    RecordError,
    check_epoch_record,
    is_count,
    is_number,
    record_version,
    versioned,
)


class InvalidProgress(RecordError):
    """progress.json does not describe a state this run can continue from."""


PARTIAL_KEYS = {"loss_sum", "correct", "seen", "seconds"}


@dataclass
class Shape:
    """What a valid progress must agree with: the run's length and the data's."""

    epochs: int
    batches_per_epoch: int  # per process
    accumulation_steps: int
    num_classes: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accumulation_steps)


@dataclass
class Progress:
    """Epoch and step reached, metrics so far, and the settings that produced them."""

    settings: dict
    epoch: int = 0  # finished epochs
    step_in_epoch: int = 0  # batches done in the current epoch, at an optimizer step
    global_step: int = 0  # optimizer steps done
    history: list = field(default_factory=list)  # metrics.jsonl lines of finished epochs
    partial: dict = field(default_factory=lambda: {"loss_sum": 0.0, "correct": 0, "seen": 0})
    wall_seconds: float = 0.0
    last_eval: dict | None = None

    def to_json(self) -> dict:
        return versioned(asdict(self))

    def finished(self, epochs: int) -> bool:
        return self.epoch >= epochs

    @classmethod
    def from_json(cls, data, shape: Shape, step: int | None = None) -> "Progress":
        """Progress from a parsed progress.json, checked against the run's shape and the step
        in the checkpoint's name; raises InvalidProgress naming the first problem."""
        try:
            record_version(data)
        except RecordError as error:
            raise InvalidProgress(str(error)) from None
        types = {
            "settings": dict,
            "epoch": int,
            "step_in_epoch": int,
            "global_step": int,
            "history": list,
            "partial": dict,
            "wall_seconds": (int, float),
            "last_eval": (dict, type(None)),
        }
        for key, kind in types.items():
            if key not in data:
                raise InvalidProgress(f"'{key}' is missing")
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                raise InvalidProgress(f"'{key}' has the wrong type ({type(data[key]).__name__})")
        progress = cls(**{key: data[key] for key in types})
        progress.check(shape, step)
        return progress

    def check(self, shape: Shape, step: int | None) -> None:
        if not 0 <= self.epoch <= shape.epochs:
            raise InvalidProgress(f"epoch {self.epoch} is outside 0..{shape.epochs}")
        # A stop on an epoch's last step leaves step_in_epoch at its end; an epoch whose
        # batches do not divide into accumulation groups steps on its last batch too.
        within, batches = self.step_in_epoch, shape.batches_per_epoch
        if not 0 <= within <= batches or (within % shape.accumulation_steps and within != batches):
            raise InvalidProgress(
                f"step_in_epoch {within} is not an optimizer step of an epoch of "
                f"{shape.batches_per_epoch} batches"
            )
        if self.epoch == shape.epochs and within:
            raise InvalidProgress("a finished run cannot be inside an epoch")
        expected = self.epoch * shape.steps_per_epoch + math.ceil(within / shape.accumulation_steps)
        if self.global_step != expected:
            raise InvalidProgress(
                f"global_step {self.global_step} does not match epoch {self.epoch} and "
                f"step_in_epoch {within} (expected {expected})"
            )
        if step is not None and step != self.global_step:
            raise InvalidProgress(f"global_step {self.global_step} but the folder says {step}")
        self.check_history()
        self.check_partial()
        if not (is_number(self.wall_seconds) and self.wall_seconds >= 0):
            raise InvalidProgress(f"wall_seconds {self.wall_seconds!r} is not a duration")
        self.check_last_eval(shape.num_classes)

    def check_history(self) -> None:
        if len(self.history) != self.epoch:
            raise InvalidProgress(f"{len(self.history)} epochs of history for epoch {self.epoch}")
        for number, record in enumerate(self.history, start=1):
            try:
                check_epoch_record(record, number)
            except RecordError as error:
                raise InvalidProgress(f"history: {error}") from None

    def check_partial(self) -> None:
        partial = self.partial
        # "seconds" (training time of the epoch so far) came with format 1.
        if not {"loss_sum", "correct", "seen"} <= set(partial) <= PARTIAL_KEYS:
            raise InvalidProgress("'partial' must hold loss_sum, correct, seen (and seconds)")
        loss_sum, correct, seen = partial["loss_sum"], partial["correct"], partial["seen"]
        seconds = partial.get("seconds", 0.0)
        if not (is_number(loss_sum) and loss_sum >= 0 and is_count(correct) and is_count(seen)):
            raise InvalidProgress("'partial' holds a bad value")
        if not (is_number(seconds) and seconds >= 0):
            raise InvalidProgress("'partial' holds a bad value")
        if correct > seen or (self.step_in_epoch == 0 and seen):
            raise InvalidProgress("'partial' does not match the position in the epoch")

    def check_last_eval(self, num_classes: int) -> None:
        last = self.last_eval
        if (last is None) != (self.epoch == 0):
            raise InvalidProgress("'last_eval' must be present exactly when an epoch finished")
        if last is None:
            return
        matrix = last.get("confusion_matrix")
        square = (
            isinstance(matrix, list)
            and len(matrix) == num_classes
            and all(isinstance(row, list) and len(row) == num_classes for row in matrix)
            and all(is_count(cell) for row in matrix for cell in row)
        )
        if not square:
            raise InvalidProgress(f"'last_eval' needs a {num_classes}x{num_classes} count matrix")
        total = sum(sum(row) for row in matrix)
        if last.get("num_test_samples") != total or not all(
            is_number(last.get(key)) for key in ("test_loss", "test_accuracy")
        ):
            raise InvalidProgress("'last_eval' holds a bad value")
