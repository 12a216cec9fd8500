"""The loop both models share: train_epoch, and run_experiment, which trains a run epoch by
epoch and says how it ended (Outcome)."""

import contextlib
import math
import sys
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from cifar.assemble import setup_run
from cifar.checkpoint import save_checkpoint
from cifar.errors import say
from cifar.evaluation import eval_model, sum_dtype, summarize
from cifar.processes import StopRequest
from cifar.record import metric_values, versioned
from cifar.trackers import tracker_named
from cifar.trained import write_portable_model


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


@contextlib.contextmanager
def accumulating(accelerator, model, sync: bool):
    """accelerator.accumulate with the step boundary given: the optimizer, its zero_grad and
    DDP's gradient reduction act only when sync. Accelerate's own counter runs across epochs
    and knows the end of an epoch only for DataLoaders it prepared; the position in the epoch
    decides here, so a resume inside an epoch continues its very groups."""
    accelerator.sync_gradients = sync
    with contextlib.nullcontext() if sync else accelerator.no_sync(model):
        yield


PROGRESS_SECONDS = 30.0  # the longest a log goes without a line inside an epoch
PROGRESS_PARTS = 10  # and a line at each tenth of the epoch's batches


class ProgressLines:
    """Progress inside an epoch for a log (stderr not a terminal, where tqdm's bar would be
    one unreadable line): a line at each tenth of the epoch's batches and whenever
    PROGRESS_SECONDS passed since the last, whichever comes first; none at the epoch's end,
    whose own line follows. The loss is read (a device sync) only for a line, on this process
    alone: no collective, so only the main process writes them."""

    def __init__(self, epoch: int, epochs: int, batches: int, start_step: int = 0,
                 seconds: float = PROGRESS_SECONDS, clock=time.perf_counter):  # fmt: skip
        self.epoch, self.epochs, self.batches, self.start_step = epoch, epochs, batches, start_step
        self.seconds, self.clock = seconds, clock
        self.started = self.last = clock()

    def due(self, done: int) -> bool:
        """Whether a line is due after `done` batches of the epoch."""
        if done >= self.batches:
            return False
        parts, batches = PROGRESS_PARTS, self.batches
        return done * parts // batches > (done - 1) * parts // batches or (
            self.clock() - self.last >= self.seconds
        )

    def line(self, done: int, images: int, loss: float) -> str:
        """After `done` batches, `images` trained since this part of the epoch began (every
        process's), at a mean loss so far of `loss`."""
        self.last = now = self.clock()
        elapsed = max(now - self.started, 1e-9)
        left = (self.batches - done) * elapsed / max(done - self.start_step, 1)
        return (
            f"epoch {self.epoch}/{self.epochs}  batch {done}/{self.batches}  "
            f"{images / elapsed:,.0f} img/s  loss {loss:.4f}  ETA {clock_time(left)}"
        )


def clock_time(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def train_epoch(
    run, totals: Totals, *, start_step=0, after_step=None, show_progress=False, lines=None
) -> bool:
    """Train over this process's batches of one epoch of run.train_loader, adding to totals.

    Uses run's accelerator, model, optimizer, scheduler, loss_fn and to_input. An optimizer
    step takes gradient_accumulation_steps batches; when the epoch's batches do not divide into
    such groups, its last step takes the batches left, averaged over them (as one smaller
    batch would be). after_step(batches_done, loss) runs after each optimizer step; when it
    returns True the epoch stops there. Returns True if the epoch was stopped early.
    show_progress draws tqdm's bar; lines, a ProgressLines, writes its lines to stderr.
    """
    accelerator, model, loader = run.accelerator, run.model, run.train_loader
    accumulation, batches = accelerator.gradient_accumulation_steps, len(loader)
    tail = batches % accumulation  # batches of the smaller last group (0: none)
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
        sync = (step + 1) % accumulation == 0 or step + 1 == batches
        with accumulating(accelerator, model, sync):
            logits = model(run.to_input(images))
            loss = run.loss_fn(logits, labels)
            # backward divides by the accumulation steps; the last group by its own size.
            in_tail = step >= batches - tail
            accelerator.backward(loss * (accumulation / tail) if in_tail else loss)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        batch = labels.shape[0]
        totals.loss_sum += loss.detach() * batch
        totals.correct += (logits.detach().argmax(dim=1) == labels).sum()
        totals.seen += batch
        images_done += batch
        bar.update(1)
        if lines is not None and lines.due(step + 1):
            loss_so_far = (totals.loss_sum / totals.seen).item()
            images = images_done * accelerator.num_processes
            print(lines.line(step + 1, images, loss_so_far), file=sys.stderr, flush=True)
        if show_progress and step % 20 == 0:
            rate = images_done * accelerator.num_processes / (time.perf_counter() - started)
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                acc=f"{(totals.correct / totals.seen).item():.1%}",
                img_s=f"{rate:,.0f}",
            )
        if sync:
            if run.ema is not None:
                run.ema.update()
            run.scheduler.step()
            if after_step is not None and after_step(step + 1, loss):
                stopped = True
                break
    bar.close()
    return stopped


@dataclass
class Outcome:
    """How a run ended: finished (summary written), or stopped on request with a checkpoint to
    resume from (train.py exits REQUEUE_EXIT_CODE for the job script to requeue)."""

    finished: bool
    summary: dict | None = None


def run_experiment(config) -> Outcome:
    """Train and evaluate as config says; write the run folder; say how it ended.

    Resumes from a checkpoint when config.resume names one; a stop signal ends the run with a
    checkpoint, at the next optimizer step."""
    stop = StopRequest().install()  # a time-limit warning during setup is not lost
    try:
        run = setup_run(config)
    except BaseException:
        stop.uninstall()
        raise
    try:
        stop.attach(run.accelerator)
        if stop.requested:
            say(
                run.accelerator,
                f"{stop.signal_name} during setup: the run stops at its first check, with a "
                f"checkpoint",
            )
        return RunLoop(config, run, stop).run_epochs()
    finally:
        stop.uninstall()
        run.accelerator.end_training()
        if run.folder is not None:
            run.folder.release()


class RunLoop:
    """The epochs of one run, from where its progress stands: each optimizer step counted,
    logged and checkpointed as config says, each epoch evaluated and recorded."""

    def __init__(self, config, run, stop: StopRequest):
        self.config, self.run, self.stop = config, run, stop
        self.progress = run.progress
        self.totals = Totals.zeros(run.accelerator.device)
        if run.accelerator.is_main_process:  # sums of the interrupted epoch, already reduced
            partial = self.progress.partial
            self.totals.loss_sum += partial["loss_sum"]
            self.totals.correct += partial["correct"]
            self.totals.seen += partial["seen"]
        self.started = time.perf_counter() - self.progress.wall_seconds
        self.epoch_started = time.perf_counter()
        # Training time the current epoch had before it was interrupted (0 at an epoch's start).
        # A checkpoint of a version that did not record it: the epoch's rate is then measured
        # on the images trained since the resume.
        partial = self.progress.partial
        self.epoch_seconds_before = partial.get("seconds", 0.0)
        untimed = self.progress.step_in_epoch and "seconds" not in partial
        self.untimed_images = partial["seen"] if untimed else 0

    def say(self, message: str) -> None:
        say(self.run.accelerator, message)

    def epoch_seconds(self) -> float:
        return self.epoch_seconds_before + time.perf_counter() - self.epoch_started

    def checkpoint(self, partial: dict) -> None:
        run, progress = self.run, self.progress
        if not weights_finite(run.model):
            raise NonFiniteLoss(progress.global_step, what="weights")
        progress.partial = partial
        progress.wall_seconds = time.perf_counter() - self.started
        save_checkpoint(
            run.accelerator, run.checkpoints_dir, progress, self.config.keep_checkpoints, run.ema
        )

    def after_step(self, batches_done: int, loss) -> bool:
        """Count the step; log, checkpoint or stop where config and signals say. True: stop."""
        config, run, progress = self.config, self.run, self.progress
        progress.global_step += 1
        progress.step_in_epoch = batches_done
        step = progress.global_step
        stop_now = self.stop.should_stop(step)
        epoch_end = batches_done == len(run.train_loader)  # saved after the evaluation anyway
        periodic = config.checkpoint_every and step % config.checkpoint_every == 0
        save_now = stop_now or (periodic and not epoch_end)
        if save_now or (config.log_every and step % config.log_every == 0):
            # The mean over processes, so all of them take the same path; a device sync, so
            # only at log and checkpoint steps (the same steps on every process).
            accelerator = run.accelerator
            loss_value = accelerator.reduce(loss.detach().float(), reduction="mean").item()
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(step)
            accelerator.log(
                {"train/step_loss": loss_value, "lr": run.scheduler.get_last_lr()[0]}, step=step
            )
        if save_now:
            self.checkpoint(
                {**self.totals.reduced(run.accelerator), "seconds": self.epoch_seconds()}
            )
        return stop_now

    def run_epochs(self) -> Outcome:
        config, run, progress = self.config, self.run, self.progress
        main, terminal = run.accelerator.is_main_process, sys.stderr.isatty()
        for epoch in range(progress.epoch, config.epochs):
            run.train_loader.set_epoch(epoch, skip_batches=progress.step_in_epoch)
            self.epoch_started = time.perf_counter()
            batches, start = len(run.train_loader), progress.step_in_epoch
            lines = ProgressLines(epoch + 1, config.epochs, batches, start)
            stopped = train_epoch(
                run,
                self.totals,
                start_step=start,
                after_step=self.after_step,
                show_progress=main and terminal,
                lines=lines if main and not terminal else None,
            )
            if stopped:
                self.say(
                    f"{self.stop.signal_name or 'stop request'}: checkpoint saved at step "
                    f"{progress.global_step}; resume with --resume auto"
                )
                return Outcome(finished=False)
            self.finish_epoch(epoch)
            if epoch + 1 < config.epochs and self.stop.should_stop(0, force_check=True):
                self.say(
                    f"{self.stop.signal_name or 'stop request'}: stopped after epoch {epoch + 1}; "
                    f"resume with --resume auto"
                )
                return Outcome(finished=False)
        summary = summarize(config, run, time.perf_counter() - self.started)
        write_portable_model(config, run, summary)  # first: a finished run always has its model
        run.files.write_summary(summary)
        tracker = tracker_named(config.tracker)
        tracker.log_run_end(run.accelerator, run, summary)
        tracker.log_model(run.accelerator, run.files.run_dir)
        hint = tracker.sync_hint(run.accelerator)
        if hint:
            self.say(hint)
        return Outcome(finished=True, summary=summary)

    def finish_epoch(self, epoch: int) -> None:
        """Evaluate, record the epoch (metrics.jsonl, the tracker) and checkpoint it."""
        run, progress = self.run, self.progress
        train = self.totals.reduced(run.accelerator)
        if not math.isfinite(train["loss_sum"]):
            raise NonFiniteLoss(progress.global_step)
        seconds = self.epoch_seconds()  # training only, over every part of an interrupted epoch
        rate = (train["seen"] - self.untimed_images) / max(seconds, 1e-9)
        test = eval_model(
            run.accelerator,
            run.scored_model,
            run.test_loader,
            run.to_input,
            run.num_classes,
            tta=self.config.tta,
        )
        record = epoch_record(epoch, train, test, run.scheduler.get_last_lr()[0], seconds, rate)
        progress.history.append(record)
        progress.epoch, progress.step_in_epoch, progress.last_eval = epoch + 1, 0, test
        self.totals = Totals.zeros(run.accelerator.device)
        self.epoch_seconds_before, self.untimed_images = 0.0, 0
        self.checkpoint({"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0})
        run.files.write_metrics(progress.history)
        run.accelerator.log(
            {f"epoch/{k}": v for k, v in metric_values(record).items()}, step=progress.global_step
        )
        self.say(format_epoch(record, self.config.epochs))


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite, read from the device once (not once per parameter)."""
    checks = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(checks).all().item()) if checks else True


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
