"""The GPU tier (`pytest -m gpu`): the device paths against the CPU's, fp16 with the grad
scaler, compiled against eager steps, host syncs per training step, the feature cache. Without
CUDA every test is skipped, saying so; tests/test_gpu_check.py checks that it is."""

import glob
import math
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from bench.gpu_check import FEATURE_TOLERANCE, MAX_SYNCS_PER_STEP, task_features, task_step
from cifar.build import place_model
from cifar.config import Config
from cifar.data.loaders import DeviceTrainLoader
from cifar.data.plan import EpochPlan
from cifar.data.transforms import InputTransform
from cifar.models import build_model
from tests.helpers import SMOKE, read_json, read_metrics, tiny_run, train_in_process

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA: the GPU tier needs a GPU"),
]

# InputTransform on the GPU against the CPU: the same float32 arithmetic in other kernels
# (fused multiply-add, the bilinear resize's own accumulation order).
TRANSFORM_TOLERANCE = 1e-5
# A compiled step against an eager one from the same weights: inductor fuses and reorders
# float32 arithmetic, so they agree to rounding, not bit for bit.
COMPILE_TOLERANCE = 1e-3


def uint8_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("augment", ["crop-flip", "flip", "none"])
@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_device_loader_batches_on_the_gpu_equal_the_cpus(augment, rank, world_size):
    images, labels = uint8_images(300), torch.arange(300) % 10
    batches = {}
    for device in ("cpu", "cuda"):
        plan = EpochPlan(300, batch_size=32, rank=rank, world_size=world_size, augment=augment,
                         seed=3)  # fmt: skip
        loader = DeviceTrainLoader(images, labels, plan, torch.device(device))
        loader.set_epoch(2)
        batches[device] = [(x.cpu(), y.cpu()) for x, y in loader]
    assert len(batches["cuda"]) == len(batches["cpu"]) == 300 // (32 * world_size)
    for (x_gpu, y_gpu), (x_cpu, y_cpu) in zip(batches["cuda"], batches["cpu"], strict=True):
        assert x_gpu.dtype == torch.uint8
        assert torch.equal(x_gpu, x_cpu) and torch.equal(y_gpu, y_cpu)


@pytest.mark.parametrize("size, channels_last", [(None, False), (224, True), (64, False)])
def test_input_transform_on_the_gpu_is_close_to_the_cpus(size, channels_last):
    images = uint8_images(16)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cpu = InputTransform(mean, std, size, channels_last)(images)
    gpu = InputTransform(mean, std, size, channels_last)(images.cuda())
    assert gpu.shape == cpu.shape and gpu.dtype == torch.float32
    assert gpu.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert (gpu.cpu() - cpu).abs().max().item() <= TRANSFORM_TOLERANCE


def test_fp16_trains_with_the_grad_scaler(tmp_path):
    code, _, err = train_in_process([*SMOKE, "--mixed-precision", "fp16", "--output-dir",
                                     str(tmp_path)])  # fmt: skip
    assert code == 0, err
    assert read_json(tmp_path / "summary.json")["mixed_precision"] == "fp16"
    for epoch in read_metrics(tmp_path):
        assert math.isfinite(epoch["train_loss"]) and math.isfinite(epoch["test_loss"])
    scaler = sorted(glob.glob(f"{tmp_path}/checkpoints/step-*/scaler.pt"))
    assert scaler, "the checkpoint holds no grad scaler"
    scale = torch.load(scaler[-1], weights_only=True)["scale"]
    assert math.isfinite(float(scale)) and float(scale) > 0


def has_compiler() -> bool:
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return any(map(shutil.which, ("cc", "gcc", "clang"))) and headers.exists()


def test_compiled_and_eager_steps_agree():
    if not has_compiler():
        pytest.skip("no C compiler or no Python headers: torch.compile's inductor needs both")
    device = torch.device("cuda")
    config = Config(model="cnn")
    torch.manual_seed(0)
    eager = place_model(config, build_model(config, 10), device).to(device)
    compiled_model = place_model(config, build_model(config, 10), device).to(device)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model)
    to_input = InputTransform((0.5,) * 3, (0.25,) * 3, None, channels_last=True)
    images, labels = to_input(uint8_images(64).cuda()), torch.arange(64, device=device) % 10
    results = []
    for model, parameters in ((eager, eager.parameters()), (compiled, compiled_model.parameters())):
        optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
        model.train()
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        results.append((logits.detach(), loss.detach()))
    (eager_logits, eager_loss), (compiled_logits, compiled_loss) = results
    scale = eager_logits.abs().max().item()
    assert (compiled_logits - eager_logits).abs().max().item() <= COMPILE_TOLERANCE * scale
    assert abs(compiled_loss.item() - eager_loss.item()) <= COMPILE_TOLERANCE * eager_loss.item()
    for name, weight in eager.state_dict().items():
        other = compiled_model.state_dict()[name]
        if weight.is_floating_point():
            bound = COMPILE_TOLERANCE * max(weight.abs().max().item(), 1e-6)
            assert (other - weight).abs().max().item() <= bound, name


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_host_syncs_per_training_step_are_bounded(tmp_path, precision):
    argv = [*tiny_run(train=2048, batch=64), "--mixed-precision", precision,
            "--output-dir", str(tmp_path)]  # fmt: skip
    figures = task_step({"argv": argv, "warm": 3, "steps": 10})
    assert figures["device"] == "cuda" and figures["loss_finite"]
    assert figures["syncs_per_step"] <= MAX_SYNCS_PER_STEP[precision], figures["sync_sites"]
    if precision == "fp16":
        assert figures["grad_scaler_scale"] > 0


def test_the_feature_cache_equals_the_frozen_backbone(tmp_path):
    argv = [*tiny_run("--model", "resnet50", "--no-pretrained", "--freeze", "backbone",
                      "--cache-features", "--augment", "none", "--image-size", "64",
                      "--mixed-precision", "no", train=96, test=32, batch=16)]  # fmt: skip
    figures = task_features({"argv": argv})
    assert "error" not in figures, figures
    assert figures["device"] == "cuda" and figures["images"] == 96
    assert figures["relative_difference"] <= FEATURE_TOLERANCE["cuda"], figures
    assert figures["labels_in_order"]
