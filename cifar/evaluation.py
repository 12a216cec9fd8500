"""Scoring a model: eval_model counts every test image once on any number of processes, and
summarize turns a run's last evaluation into summary.json."""

import torch
import torch.nn.functional as F
from accelerate.utils import is_compiled_module
from torchmetrics.classification import MulticlassConfusionMatrix


def sum_dtype(device) -> torch.dtype:
    """float64 for running sums, where the device has it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def classify(model, inputs: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """The logits of model for a batch of network inputs (N x C x H x W); with tta the mean of
    the logits of each input and of its horizontal mirror image (--tta)."""
    logits = model(inputs)
    if not tta:
        return logits
    return (logits + model(inputs.flip(-1))) / 2


@torch.no_grad()
def eval_model(accelerator, model, loader, to_input, num_classes: int, tta: bool = False) -> dict:
    """Loss (plain cross-entropy) and accuracy over the whole test set, every image once; with
    tta each image is scored by classify's mean of it and its mirror image.

    Each process evaluates its own shard; the confusion matrix and loss sum are summed across
    processes. Returns test_loss, test_accuracy, confusion_matrix (rows: true class) and
    num_test_samples.
    """
    # The unwrapped model (autocast kept) runs no collective per batch, unlike DDP's forward, so
    # shards of different lengths (or an empty one) cannot deadlock; rank 0's BatchNorm
    # statistics are shared first so every shard is scored by the same model.
    model = accelerator.unwrap_model(model)
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    model.eval()
    # Its input checks read the device every batch (torch.unique); argmax and the loader's
    # labels are in range by construction.
    confusion = MulticlassConfusionMatrix(num_classes, validate_args=False).to(accelerator.device)
    loss_sum = torch.zeros((), dtype=sum_dtype(accelerator.device), device=accelerator.device)
    # A compiled model compiles again for each new batch size: the smaller last batch is scored
    # padded to the first one's size, and the padding's logits dropped.
    padded_size = None
    for images, labels in loader:
        inputs = to_input(images)
        if is_compiled_module(model):
            padded_size = padded_size or labels.shape[0]
            inputs = padded(inputs, padded_size)
        with accelerator.autocast():  # a model never prepared (an EMA) in the run's precision
            logits = classify(model, inputs, tta)[: labels.shape[0]]
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        confusion.update(logits.argmax(dim=1), labels)
    matrix = confusion.compute()  # torchmetrics sums the matrices of all processes
    total_loss = accelerator.reduce(loss_sum, reduction="sum").item()
    count = int(matrix.sum().item())
    return {
        "test_loss": total_loss / max(count, 1),
        "test_accuracy": matrix.diagonal().sum().item() / max(count, 1),
        "confusion_matrix": matrix.tolist(),
        "num_test_samples": count,
    }


def padded(inputs: torch.Tensor, size: int) -> torch.Tensor:
    """inputs with zeros after them up to size along the batch, in the same memory format (a
    compiled model guards on the strides too)."""
    if inputs.shape[0] >= size:
        return inputs
    out = inputs.new_zeros((size, *inputs.shape[1:]))
    if inputs.dim() == 4 and not inputs.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    out[: inputs.shape[0]] = inputs
    return out


def summarize(config, run, wall_seconds: float) -> dict:
    """summary.json: the final evaluation plus what the report needs. A class without a test
    image has no accuracy (None), not 0."""
    history, last = run.progress.history, run.progress.last_eval
    matrix = last["confusion_matrix"]
    per_class = {
        name: (row[i] / sum(row) if sum(row) else None)
        for i, (name, row) in enumerate(zip(run.classes, matrix, strict=True))
    }
    accelerator = run.accelerator
    return {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "best_test_accuracy": max(r["test_accuracy"] for r in history),
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix,
        "classes": list(run.classes),
        "num_test_samples": last["num_test_samples"],
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "wall_seconds": wall_seconds,
        "train_images_per_second": (
            sum(r["train_images_per_second"] for r in history) / len(history)
        ),
        "scored_weights": f"ema {config.ema:g}" if config.ema else "trained",
        "test_time_augmentation": "flip" if config.tta else "none",
    }
