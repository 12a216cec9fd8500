"""cifar/engine.py: what the loop records about each epoch and the run, and how it stops when the
loss is no longer finite."""

import glob
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import (
    SMALL,
    SMOKE,
    HostReads,
    comparable_metrics,
    final_weights,
    folder_hashes,
    max_difference,
    read_json,
    read_metrics,
    require,
    require_package,
    run_train,
    tiny_run,
    train_in_process,
    train_to_log,
)


@pytest.fixture
def accelerator_of():
    """accelerator_of(steps): an Accelerator on the CPU accumulating `steps` batches; the
    process-wide state it sets up is reset afterwards."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import GradientAccumulationPlugin

    def make(steps: int) -> Accelerator:
        plugin = GradientAccumulationPlugin(num_steps=steps)
        return Accelerator(cpu=True, gradient_accumulation_plugin=plugin)

    yield make
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


class Batches:
    """A training loader over fixed batches."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_accumulation_steps_on_every_batch_with_a_smaller_last_group(accelerator_of):
    """8 batches, 3 per optimizer step: steps after batches 3, 6 and 8, the last one the mean
    over its 2 batches, as plain SGD over the groups' images gives."""
    from cifar.engine import Totals, train_epoch

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 4, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (8, 4), generator=generator)
    start = torch.nn.Linear(6, 3).double()
    reference = torch.nn.Linear(6, 3).double()
    reference.load_state_dict(start.state_dict())
    loss_fn = torch.nn.CrossEntropyLoss()

    accelerator = accelerator_of(3)
    optimizer = torch.optim.SGD(start.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(start, optimizer, scheduler)
    run = SimpleNamespace(accelerator=accelerator, model=model, optimizer=optimizer,
                          scheduler=scheduler, loss_fn=loss_fn, to_input=lambda x: x, ema=None,
                          train_loader=Batches(list(zip(images, labels, strict=True))))  # fmt: skip
    steps = []
    totals = Totals.zeros(accelerator.device)
    train_epoch(run, totals, after_step=lambda done, loss: steps.append(done))

    assert steps == [3, 6, 8]
    assert int(totals.seen) == 32  # every image of the epoch
    for group in (slice(0, 3), slice(3, 6), slice(6, 8)):
        reference.zero_grad()
        loss_fn(reference(images[group].flatten(0, 1)), labels[group].flatten()).backward()
        with torch.no_grad():
            for parameter in reference.parameters():
                parameter -= 0.5 * parameter.grad
    trained = accelerator.unwrap_model(model).state_dict()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-12, atol=1e-12)


# 256 images in batches of 32: 8 batches an epoch, 3 optimizer steps with accumulation 3.
UNEVEN = tiny_run("--width", "8", "--head-hidden", "32", "--gradient-accumulation-steps", "3",
                  train=256, test=64, batch=32, epochs=2)  # fmt: skip


def test_an_uneven_accumulation_trains_on_every_image_and_resumes_exactly_inside_it(tmp_path):
    """Step 5 is epoch 2's second step (6 of its 8 batches): resumed from there, the run
    trains the 2 batches of the smaller last step and ends as the uninterrupted run does."""
    full = tmp_path / "full"
    run_train([*UNEVEN, "--checkpoint-every", "5", "--keep-checkpoints", "3", "--output-dir",
               full])  # fmt: skip
    steps = sorted(read_json(p)["global_step"] for p in full.glob("checkpoints/*/progress.json"))
    assert steps == [3, 5, 6]  # 3 optimizer steps an epoch
    for epoch in read_metrics(full):
        images = epoch["train_images_per_second"] * epoch["epoch_seconds"]
        assert images == pytest.approx(256, rel=1e-9)
    inside = read_json(full / "checkpoints" / "step-000000005" / "progress.json")
    assert inside["step_in_epoch"] == 6 and inside["partial"]["seen"] == 192
    assert inside["settings"]["accumulation_tail_batches"] == 2

    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for name in ("summary.json", "metrics.jsonl"):
        (resumed / name).unlink()
    shutil.rmtree(resumed / "checkpoints" / "step-000000006")
    run_train([*UNEVEN, "--output-dir", resumed, "--resume", "auto"])
    assert max_difference(final_weights(full), final_weights(resumed)) == 0.0
    assert comparable_metrics(full) == comparable_metrics(resumed)


def test_a_resumed_epoch_reports_the_time_and_rate_of_the_whole_epoch(tmp_path):
    """A run stopped inside epoch 2 (here: a checkpoint kept from step 6 of 8, the state a stop
    there leaves) and resumed: epoch 2's time covers both parts, and its rate is the epoch's
    images over that time, not the tail's images alone."""
    full = tmp_path / "full"
    run_train([*SMALL, "--epochs", "2", "--checkpoint-every", "6", "--keep-checkpoints", "3",
               "--output-dir", full])  # fmt: skip
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for name in ("summary.json", "metrics.jsonl"):
        (resumed / name).unlink()
    for step in ("step-000000008",):
        shutil.rmtree(resumed / "checkpoints" / step)
    before = read_json(resumed / "checkpoints" / "step-000000006" / "progress.json")["partial"]
    assert before["seen"] == 128 and before["seconds"] > 0  # 2 of epoch 2's 4 steps
    run_train([*SMALL, "--epochs", "2", "--output-dir", resumed, "--resume", "auto"])
    epoch = read_metrics(resumed)[1]
    assert epoch["epoch_seconds"] > before["seconds"]
    images = epoch["train_images_per_second"] * epoch["epoch_seconds"]
    assert images == pytest.approx(256, rel=1e-9)  # the whole epoch's images
    summary = read_json(resumed / "summary.json")
    rates = [r["train_images_per_second"] for r in read_metrics(resumed)]
    assert summary["train_images_per_second"] == pytest.approx(sum(rates) / 2)


def test_a_finished_run_whose_metrics_jsonl_was_deleted_gets_it_back_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*SMALL, "--epochs", "2", "--output-dir", run_dir])
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    (run_dir / "metrics.jsonl").unlink()
    before = folder_hashes(run_dir)
    result = run_train([*SMALL, "--epochs", "2", "--output-dir", run_dir, "--resume", "auto"])
    assert "metrics.jsonl was missing and was written again from the checkpoint" in result.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    after = folder_hashes(run_dir)
    assert after.pop("metrics.jsonl") and after == before  # nothing else changed
    report = run_train([*SMALL, "--epochs", "2", "--output-dir", run_dir, "--resume", "auto"])
    assert "nothing to do, no file changed" in report.stderr


def test_non_finite_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path):
    result = run_train(
        [
            *SMOKE,
            "--epochs",
            3,
            "--lr",
            "1e6",
            "--scheduler",
            "none",
            "--log-every",
            "1",
            "--checkpoint-every",
            "1",
            "--output-dir",
            tmp_path,
        ],
        check=False,
    )
    assert result.returncode == 1
    assert "became NaN or infinite at optimizer step" in result.stderr
    assert "Traceback" not in result.stderr
    folders = glob.glob(f"{tmp_path}/checkpoints/step-*")
    assert folders  # the steps before the divergence were saved
    for folder in folders:
        weights = load_file(f"{folder}/model.safetensors")
        assert all(t.isfinite().all() for t in weights.values()), folder


class Clock:
    """A clock the test moves."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_come_at_each_tenth_of_an_epoch_and_at_least_every_30_seconds():
    from cifar.engine import ProgressLines

    clock = Clock()
    lines = ProgressLines(2, 5, 24, clock=clock)
    assert [done for done in range(1, 25) if lines.due(done)] == [3, 5, 8, 10, 12, 15, 17, 20, 22]
    clock.now += 12.0
    assert lines.line(6, 6 * 64, 1.23456) == (
        "epoch 2/5  batch 6/24  32 img/s  loss 1.2346  ETA 0:36"
    )
    clock.now += 29.9
    assert not lines.due(7)
    clock.now += 0.1
    assert lines.due(7) and not lines.due(24)  # 30 s since the last line; the epoch line follows
    resumed = ProgressLines(1, 1, 1000, start_step=400, clock=clock)
    clock.now += 3600.0
    assert resumed.line(500, 6400, 0.5).endswith("2 img/s  loss 0.5000  ETA 5:00:00")


@pytest.mark.parametrize("processes", [1, 2])
def test_a_training_log_in_a_file_shows_progress_inside_each_epoch_from_the_main_process(
    tmp_path, processes
):
    """24 batches an epoch, written to a file (no terminal): a line at each tenth of it, from
    one process only, before the epoch's own line."""
    args = tiny_run(train=1536, test=64, batch=64 // processes, epochs=2)
    kind = "python" if processes == 1 else "torchrun"
    text = train_to_log([*args, "--output-dir", tmp_path / "run"], tmp_path / "train.log",
                        kind=kind, processes=processes)  # fmt: skip
    line = re.compile(
        r"^epoch (\d)/2  batch (\d+)/24  [\d,]+ img/s  loss \d+\.\d{4}  ETA \d+:\d\d$"
    )
    for epoch in (1, 2):
        before_its_end = text.split(f"epoch {epoch}/2  train loss")[0]
        block = before_its_end.split(f"epoch {epoch - 1}/2  train loss")[-1]
        found = [m.groups() for m in map(line.match, block.splitlines()) if m]
        done = [int(b) for e, b in found if int(e) == epoch]
        assert {3, 5, 8, 10, 12, 15, 17, 20, 22} <= set(done), text
        assert done == sorted(set(done)), text  # once each: the main process alone
    assert "Traceback" not in text


def test_the_finite_weights_check_of_a_checkpoint_reads_the_device_once(monkeypatch):
    from cifar.engine import weights_finite

    model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(8)))  # 16 parameters
    reads = HostReads(monkeypatch)
    assert weights_finite(model)
    assert reads.count == 1
    with torch.no_grad():
        model[5].bias[2] = float("nan")
    assert not weights_finite(model)
    assert reads.count == 2


@pytest.mark.slow  # about a minute of compiling on a 2-core CPU
def test_a_compiled_run_compiles_once_for_training_and_once_for_scoring(tmp_path):
    import torch._dynamo
    from torch._dynamo.utils import counters

    require(shutil.which("cc") is not None, "torch.compile needs a C compiler")
    require_package("tensorboard")  # a tracker, so that the run's sample predictions are made
    torch._dynamo.reset()
    counters.clear()
    # 4 steps an epoch; 80 test images: a batch of 64 and a smaller last one of 16.
    args = tiny_run("--width", "8", "--head-hidden", "32", "--compile", train=256, test=80,
                    epochs=2, tracker="tensorboard")  # fmt: skip
    code, _, err = train_in_process([*args, "--output-dir", str(tmp_path / "run")])
    assert code == 0, err
    assert read_json(tmp_path / "run" / "summary.json")["num_test_samples"] == 80
    # Training; scoring (no gradients). Not the smaller last batch, nor the sample predictions.
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    torch._dynamo.reset()
