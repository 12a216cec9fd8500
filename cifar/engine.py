"""The loop both models share: train_epoch, eval_model and run_experiment."""

import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassConfusionMatrix
from tqdm.auto import tqdm

from cifar.checkpoint import save_checkpoint
from cifar.errors import REQUEUE_EXIT_CODE, say
from cifar.experiment import setup_run
from cifar.processes import StopRequest
from cifar.record import metric_values, versioned
from cifar.trackers import tracker_named


def sum_dtype(device) -> torch.dtype:
    """float64 for running sums, where the device has it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass
class Totals:
    """Running sums of one epoch's training on this process."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: torch.Tensor

    @classmethod
    def zeros(cls, device) -> "Totals":
        return cls(
            torch.zeros((), dtype=sum_dtype(device), device=device),
            torch.zeros((), dtype=torch.long, device=device),
            torch.zeros((), dtype=torch.long, device=device),
        )

    def reduced(self, accelerator) -> dict:
        """Sums over all processes, as plain numbers."""
        dtype = self.loss_sum.dtype
        stacked = torch.stack([self.loss_sum, self.correct.to(dtype), self.seen.to(dtype)])
        loss_sum, correct, seen = accelerator.reduce(stacked, reduction="sum").tolist()
        return {"loss_sum": loss_sum, "correct": int(correct), "seen": int(seen)}


def train_epoch(
    accelerator,
    model,
    loader,
    optimizer,
    scheduler,
    loss_fn,
    to_input,
    totals,
    *,
    start_step: int = 0,
    after_step=None,
    show_progress: bool = False,
) -> bool:
    """Train over this process's batches of one epoch, adding to totals.

    after_step(batches_done, loss) runs after each optimizer step; when it returns True the
    epoch stops there. Returns True if the epoch was stopped early.
    """
    model.train()
    bar = tqdm(
        total=len(loader),
        initial=start_step,
        disable=not show_progress,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    started, images_done = time.perf_counter(), 0
    stopped = False
    for step, (images, labels) in enumerate(loader, start=start_step):
        with accelerator.accumulate(model):
            logits = model(to_input(images))
            loss = loss_fn(logits, labels)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        batch = labels.shape[0]
        totals.loss_sum += loss.detach() * batch
        totals.correct += (logits.detach().argmax(dim=1) == labels).sum()
        totals.seen += batch
        images_done += batch
        bar.update(1)
        if show_progress and step % 20 == 0:
            rate = images_done * accelerator.num_processes / (time.perf_counter() - started)
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                acc=f"{(totals.correct / totals.seen).item():.1%}",
                img_s=f"{rate:,.0f}",
            )
        if accelerator.sync_gradients:
            scheduler.step()
            if after_step is not None and after_step(step + 1, loss):
                stopped = True
                break
    bar.close()
    return stopped


@torch.no_grad()
def eval_model(accelerator, model, loader, to_input, num_classes: int) -> dict:
    """Loss (plain cross-entropy) and accuracy over the whole test set, every image once.

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
    confusion = MulticlassConfusionMatrix(num_classes).to(accelerator.device)
    loss_sum = torch.zeros((), dtype=sum_dtype(accelerator.device), device=accelerator.device)
    for images, labels in loader:
        logits = model(to_input(images))
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


def run_experiment(config) -> dict:
    """Train and evaluate as config says; write the run folder; return the summary.

    Resumes from a checkpoint when config.resume names one; a stop signal ends the run with a
    checkpoint and REQUEUE_EXIT_CODE (raised as SystemExit) for the job script to requeue.
    """
    run = setup_run(config)
    accelerator, progress = run.accelerator, run.progress
    stop = StopRequest(accelerator).install()
    totals = Totals.zeros(accelerator.device)
    if accelerator.is_main_process:  # sums of the interrupted epoch, already reduced
        totals.loss_sum += progress.partial["loss_sum"]
        totals.correct += progress.partial["correct"]
        totals.seen += progress.partial["seen"]
    started = time.perf_counter() - progress.wall_seconds
    show_progress = accelerator.is_main_process and sys.stderr.isatty()

    def checkpoint(partial: dict) -> None:
        if not all(torch.isfinite(p).all() for p in run.model.parameters()):
            raise NonFiniteLoss(progress.global_step, what="weights")
        progress.partial = partial
        progress.wall_seconds = time.perf_counter() - started
        save_checkpoint(accelerator, run.checkpoints_dir, progress, config.keep_checkpoints)

    def after_step(batches_done: int, loss) -> bool:
        progress.global_step += 1
        progress.step_in_epoch = batches_done
        step = progress.global_step
        stop_now = stop.should_stop(step)
        epoch_end = batches_done == len(run.train_loader)  # saved after the evaluation anyway
        periodic = config.checkpoint_every and step % config.checkpoint_every == 0
        save_now = stop_now or (periodic and not epoch_end)
        if save_now or (config.log_every and step % config.log_every == 0):
            # The mean over processes, so all of them take the same path; a device sync, so
            # only at log and checkpoint steps (the same steps on every process).
            loss_value = accelerator.reduce(loss.detach().float(), reduction="mean").item()
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(step)
            accelerator.log(
                {"train/step_loss": loss_value, "lr": run.scheduler.get_last_lr()[0]}, step=step
            )
        if save_now:
            checkpoint(totals.reduced(accelerator))
        return stop_now

    try:
        for epoch in range(progress.epoch, config.epochs):
            run.train_loader.set_epoch(epoch, skip_batches=progress.step_in_epoch)
            epoch_start = time.perf_counter()
            seen_before = progress.partial["seen"] if progress.step_in_epoch else 0
            stopped = train_epoch(
                accelerator,
                run.model,
                run.train_loader,
                run.optimizer,
                run.scheduler,
                run.loss_fn,
                run.to_input,
                totals,
                start_step=progress.step_in_epoch,
                after_step=after_step,
                show_progress=show_progress,
            )
            if stopped:
                say(
                    accelerator,
                    f"{stop.signal_name or 'stop request'}: checkpoint saved at step "
                    f"{progress.global_step}; resume with --resume auto",
                )
                raise SystemExit(REQUEUE_EXIT_CODE)
            train = totals.reduced(accelerator)
            if not math.isfinite(train["loss_sum"]):
                raise NonFiniteLoss(progress.global_step)
            seconds = time.perf_counter() - epoch_start
            test = eval_model(
                accelerator, run.model, run.test_loader, run.to_input, run.num_classes
            )
            rate = (train["seen"] - seen_before) / max(seconds, 1e-9)
            record = epoch_record(epoch, train, test, run.scheduler.get_last_lr()[0], seconds, rate)
            progress.history.append(record)
            progress.epoch, progress.step_in_epoch, progress.last_eval = epoch + 1, 0, test
            totals = Totals.zeros(accelerator.device)
            checkpoint({"loss_sum": 0.0, "correct": 0, "seen": 0})
            run.files.write_metrics(progress.history)
            accelerator.log(
                {f"epoch/{k}": v for k, v in metric_values(record).items()},
                step=progress.global_step,
            )
            say(accelerator, format_epoch(record, config.epochs))
            if epoch + 1 < config.epochs and stop.should_stop(0, force_check=True):
                say(
                    accelerator,
                    f"{stop.signal_name or 'stop request'}: stopped after epoch {epoch + 1}; "
                    f"resume with --resume auto",
                )
                raise SystemExit(REQUEUE_EXIT_CODE)
        summary = summarize(
            config, accelerator, progress, time.perf_counter() - started, run.classes
        )
        run.files.write_summary(summary)
        tracker = tracker_named(config.tracker)
        tracker.log_run_end(accelerator, run, summary)
        hint = tracker.sync_hint(accelerator)
        if hint:
            say(accelerator, hint)
        return summary
    finally:
        stop.uninstall()
        accelerator.end_training()
        if run.folder is not None:
            run.folder.release()


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite; the last checkpoint is still the good one."""

    def __init__(self, step: int, what: str = "loss"):
        super().__init__(f"the training {what} became NaN or infinite at optimizer step {step}")
        self.step = step


def epoch_record(
    epoch: int, train: dict, test: dict, lr: float, seconds: float, images_per_second: float
) -> dict:
    """One line of metrics.jsonl (its fields: cifar.record.schema.EPOCH_FIELDS)."""
    return versioned(
        {
            "epoch": epoch + 1,
            "train_loss": train["loss_sum"] / max(train["seen"], 1),
            "train_accuracy": train["correct"] / max(train["seen"], 1),
            "test_loss": test["test_loss"],
            "test_accuracy": test["test_accuracy"],
            "lr": lr,
            "epoch_seconds": seconds,
            "train_images_per_second": images_per_second,
        }
    )


def format_epoch(record: dict, epochs: int) -> str:
    return (
        f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f} "
        f"acc {record['train_accuracy']:.2%}  test loss {record['test_loss']:.4f} "
        f"acc {record['test_accuracy']:.2%}  {record['epoch_seconds']:.1f}s "
        f"{record['train_images_per_second']:,.0f} img/s"
    )


def summarize(config, accelerator, progress, wall_seconds: float, classes) -> dict:
    """summary.json: the final evaluation plus what the report needs."""
    history = progress.history
    last = progress.last_eval
    if last is None:  # resumed after the last epoch had finished
        raise RuntimeError("no evaluation to summarise")
    matrix = last["confusion_matrix"]
    per_class = {
        name: (row[i] / sum(row) if sum(row) else 0.0)
        for i, (name, row) in enumerate(zip(classes, matrix, strict=True))
    }
    return {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "best_test_accuracy": max(r["test_accuracy"] for r in history),
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix,
        "classes": list(classes),
        "num_test_samples": last["num_test_samples"],
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "wall_seconds": wall_seconds,
        "train_images_per_second": (
            sum(r["train_images_per_second"] for r in history) / len(history)
        ),
    }
