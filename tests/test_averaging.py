"""cifar/averaging.py (--ema) and test-time augmentation (--tta): the average's arithmetic, its
checkpoint, its exact resume, its equality across process counts; TTA on mirror images."""

import glob

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cifar.averaging import WeightAverage
from cifar.evaluation import classify, eval_model
from cifar.models import SimpleCNN
from tests.helpers import (
    comparable_metrics,
    devices_for,
    final_weights,
    kill_run,
    max_difference,
    read_json,
    read_metrics,
    run_train,
    start_train,
    tiny_run,
    wait_for_checkpoint,
)


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return SimpleCNN(num_classes=3, width=4, hidden=8)


def test_the_average_copies_the_first_weights_then_moves_by_one_minus_decay():
    model = small_cnn()
    average = WeightAverage(model, decay=0.75)
    average.update()  # the first update copies
    first = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(average.module.state_dict()[k], v) for k, v in first.items())
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(1.0)
    average.update()
    for name, value in average.module.state_dict().items():
        if value.is_floating_point():  # parameters and BatchNorm statistics alike
            expected = torch.lerp(first[name], first[name] + 1.0, 0.25)
            assert torch.allclose(value, expected, rtol=0, atol=1e-6), name


def test_the_average_is_torchs_ema_arithmetic_bit_for_bit_and_copies_step_counts():
    model = small_cnn()
    ours = WeightAverage(model, decay=0.9)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1).add_(0.01 * step)
            model(torch.randn(2, 3, 32, 32))  # BatchNorm statistics and step counts move
        ours.update()
        torchs.update_parameters(model)
    mine, theirs = ours.averaged.state_dict(), torchs.state_dict()
    floats = [k for k, v in mine.items() if v.is_floating_point()]
    assert floats and all(torch.equal(mine[k], theirs[k]) for k in floats)
    counts = [k for k in mine if k.endswith("num_batches_tracked")]
    model_state = model.state_dict()
    assert counts and all(
        torch.equal(mine[k], model_state[k.removeprefix("module.")]) for k in counts
    )
    assert int(mine["n_averaged"]) == int(theirs["n_averaged"]) == 4


def test_the_average_saved_and_loaded_is_the_same_bit_for_bit(tmp_path):
    model = small_cnn()
    average = WeightAverage(model, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1)
        average.update()
    average.save(str(tmp_path))
    restored = WeightAverage(small_cnn(), decay=0.9)
    restored.load(str(tmp_path))
    saved, loaded = average.averaged.state_dict(), restored.averaged.state_dict()
    assert saved.keys() == loaded.keys() and "n_averaged" in saved
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_a_checkpoint_without_the_average_is_not_loaded_as_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="ema.safetensors is missing"):
        WeightAverage(small_cnn(), decay=0.9).load(str(tmp_path))


def mirror_symmetric(images: torch.Tensor) -> torch.Tensor:
    return torch.cat([images, images.flip(-1)], dim=-1)


def test_tta_on_inputs_that_are_their_own_mirror_image_gives_the_plain_logits():
    model = small_cnn().eval()
    torch.manual_seed(1)
    inputs = mirror_symmetric(torch.randn(5, 3, 32, 16))
    assert torch.equal(inputs, inputs.flip(-1))
    with torch.no_grad():
        assert torch.equal(classify(model, inputs, tta=True), classify(model, inputs))
        ordinary = torch.randn(5, 3, 32, 32)  # and on others, the mean of the two views
        both = (model(ordinary) + model(ordinary.flip(-1))) / 2
        assert torch.equal(classify(model, ordinary, tta=True), both)
        assert not torch.allclose(classify(model, ordinary, tta=True), model(ordinary))


def test_evaluation_with_tta_of_mirror_symmetric_test_images_equals_the_plain_one():
    accelerator = Accelerator(cpu=True)
    model = small_cnn()
    torch.manual_seed(2)
    images = mirror_symmetric(torch.randn(20, 3, 32, 16))
    labels = torch.randint(0, 3, (20,))
    batches = [(images[i : i + 8], labels[i : i + 8]) for i in range(0, 20, 8)]
    plain = eval_model(accelerator, model, batches, torch.nn.Identity(), 3)
    flipped = eval_model(accelerator, model, batches, torch.nn.Identity(), 3, tta=True)
    assert plain == flipped and plain["num_test_samples"] == 20


RUN = tiny_run("--no-shuffle", train=512, test=128, epochs=2)  # 8 steps an epoch


def test_ema_0_is_the_plain_run_and_an_ema_leaves_the_training_untouched(tmp_path):
    plain, zero, averaged = tmp_path / "plain", tmp_path / "zero", tmp_path / "ema"
    run_train([*RUN, "--output-dir", plain])
    run_train([*RUN, "--ema", "0", "--output-dir", zero])
    run_train([*RUN, "--ema", "0.9", "--output-dir", averaged])

    assert max_difference(final_weights(plain), final_weights(zero)) == 0.0
    assert comparable_metrics(plain) == comparable_metrics(zero)
    assert read_json(zero / "summary.json")["scored_weights"] == "trained"
    assert not glob.glob(f"{zero}/checkpoints/*/ema.safetensors")

    # The trained weights are those of the plain run; the average is what is scored and kept.
    assert max_difference(final_weights(plain), final_weights(averaged)) == 0.0
    summary = read_json(averaged / "summary.json")
    assert summary["scored_weights"] == "ema 0.9"
    assert read_json(averaged / "config.json")["ema"] == 0.9
    assert summary["test_accuracy"] != read_json(plain / "summary.json")["test_accuracy"]
    ema = load_file(sorted(glob.glob(f"{averaged}/checkpoints/*/ema.safetensors"))[-1])
    assert ema["n_averaged"].item() == 16  # one update per optimizer step
    portable = load_file(averaged / "model.safetensors")
    assert all(torch.equal(portable[k], ema["module." + k]) for k in portable)
    assert read_json(averaged / "model.json")["trained_on"]["scored_weights"] == "ema 0.9"


def test_an_ema_run_killed_mid_epoch_and_resumed_ends_bit_equal_to_an_uninterrupted_one(
    tmp_path,
):
    args = tiny_run("--ema", "0.8", "--checkpoint-every", "5", "--deterministic", epochs=2)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_train([*args, "--output-dir", whole])
    process = start_train([*args, "--output-dir", killed])
    wait_for_checkpoint(killed, after_step=16, process=process)  # inside epoch 2 (steps 17-32)
    kill_run(process, killed)
    assert len(read_metrics(killed)) == 1
    run_train([*args, "--output-dir", killed, "--resume", "auto"])

    assert max_difference(final_weights(whole), final_weights(killed)) == 0.0
    ema_whole, ema_killed = (
        load_file(sorted(glob.glob(f"{run}/checkpoints/*/ema.safetensors"))[-1])
        for run in (whole, killed)
    )
    assert max_difference(ema_whole, ema_killed) == 0.0
    for a, b in zip(comparable_metrics(whole), comparable_metrics(killed), strict=True):
        assert a == pytest.approx(b, rel=1e-12, abs=0)


def test_two_processes_keep_the_average_of_one_process_with_the_doubled_batch(tmp_path):
    exact = tiny_run("--no-batch-norm", "--no-shuffle", "--ema", "0.9", test=257, batch=None)
    one, two = tmp_path / "one", tmp_path / "two"
    run_train([*exact, "--batch-size", "64", "--output-dir", one], env=devices_for(2))
    run_train([*exact, "--batch-size", "32", "--output-dir", two], kind="torchrun", processes=2)
    ema_one, ema_two = (
        load_file(sorted(glob.glob(f"{run}/checkpoints/*/ema.safetensors"))[-1])
        for run in (one, two)
    )
    assert max_difference(ema_one, ema_two) < 1e-5
    summary_one, summary_two = read_json(one / "summary.json"), read_json(two / "summary.json")
    assert summary_one["test_accuracy"] == summary_two["test_accuracy"]
    assert summary_one["test_loss"] == pytest.approx(summary_two["test_loss"], rel=1e-5)
