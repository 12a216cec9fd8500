"""cifar/models.py: the models, their parameters and what is frozen, and their pretrained weights
read from the torch hub cache (safely)."""

import os
import pickle

import pytest
import torch
from torchvision.models import resnet18, resnet50

from cifar.build import build_optimizer
from cifar.config import Config
from cifar.errors import UserError
from cifar.models import ResNetTransfer, SimpleCNN, build_model, model_spec, pretrained_weights_path
from tests.helpers import SMOKE, Payload, read_json, run_train

RESNET50_BACKBONE_PARAMS = 23_508_032  # torchvision resnet50 without its fc layer


def count(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def test_simple_cnn_shapes_and_parameter_count():
    model = SimpleCNN(num_classes=10, width=32, batch_norm=True, hidden=512)
    assert model(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3
    convs_params = 3 * 9 * 32 + 32 * 9 * 64 + 64 * 9 * 128  # no bias before BatchNorm
    norms = 2 * (32 + 64 + 128)
    head = 128 * 4 * 4 * 512 + 512 + 512 * 10 + 10
    assert count(model) == convs_params + norms + head


def test_simple_cnn_without_batch_norm_has_conv_biases():
    model = SimpleCNN(batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_resnet_transfer_shapes_and_parameter_count():
    model = ResNetTransfer(num_classes=10, freeze="backbone", hidden=512)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert model.features(torch.randn(2, 3, 64, 64)).shape == (2, 2048)
    head = 2048 * 512 + 512 + 512 * 10 + 10
    assert isinstance(model.net.fc, torch.nn.Sequential)
    assert count(model) == RESNET50_BACKBONE_PARAMS + head
    assert count(model, trainable_only=True) == head


@pytest.mark.parametrize("freeze", ["backbone", "layer4", "none"])
def test_frozen_parameters_get_no_gradient_and_no_optimizer_state(freeze):
    model = ResNetTransfer(freeze=freeze)
    trainable_prefixes = {
        "backbone": ("net.fc.",),
        "layer4": ("net.fc.", "net.layer4."),
        "none": ("net.",),
    }[freeze]
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == name.startswith(trainable_prefixes), name
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name
    optimizer = build_optimizer(Config(model="resnet50", freeze=freeze), model)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    optimizer.step()
    assert all(id(p) in trainable for p in optimizer.state)


def test_frozen_batch_norm_keeps_running_statistics():
    model = ResNetTransfer(freeze="backbone").train()
    before = model.net.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) * 5 + 3)
    assert torch.equal(model.net.bn1.running_mean, before)
    assert not model.net.bn1.training and model.net.fc.training


@pytest.mark.parametrize(
    "name, architecture, filename, buffer",
    [
        ("resnet50", resnet50, "resnet50-11ad3fa6.pth", "layer4.2.bn3.running_var"),
        ("resnet18", resnet18, "resnet18-f37072fd.pth", "layer4.1.bn2.running_mean"),
    ],
)
def test_pretrained_weights_load_from_the_torch_hub_cache(
    tmp_path, monkeypatch, name, architecture, filename, buffer
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CIFAR_OFFLINE", "1")
    torch.manual_seed(123)
    state = architecture(weights=None).state_dict()
    path = pretrained_weights_path(model_spec(name).weights)
    assert path.startswith(str(tmp_path)) and path.endswith(filename)
    os.makedirs(os.path.dirname(path))
    torch.save(state, path)
    model = build_model(Config(model=name), num_classes=10)
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.state_dict()[f"net.{buffer}"], state[buffer])


def test_missing_weights_name_the_cache_file_and_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CIFAR_OFFLINE", "1")
    with pytest.raises(UserError) as error:
        build_model(Config(model="resnet50"), num_classes=10)
    message = str(error.value)
    assert pretrained_weights_path(model_spec("resnet50").weights) in message
    assert "weights='IMAGENET1K_V2'" in message and "--no-pretrained" in message


RESNET18_BACKBONE_PARAMS = 11_176_512  # torchvision resnet18 without its fc layer


def test_resnet18_is_a_registered_model_with_its_own_contract():
    spec = model_spec("resnet18")
    assert (spec.num_features, spec.weights.name) == (512, "IMAGENET1K_V1")
    config = Config(model="resnet18", pretrained=False, head_hidden=64, freeze="backbone")
    model = build_model(config, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    head = 512 * 64 + 64 + 64 * 7 + 7
    assert count(model) == RESNET18_BACKBONE_PARAMS + head
    assert count(model, trainable_only=True) == head
    # --freeze auto without pretrained weights: from scratch, every parameter trains.
    scratch = build_model(Config(model="resnet18", pretrained=False, head_hidden=64), num_classes=7)
    assert count(scratch, trainable_only=True) == count(scratch) == count(model)


def test_resnet18_trains_end_to_end_from_cached_weights(tmp_path):
    torch_home = tmp_path / "torch"
    path = pretrained_weights_path(model_spec("resnet18").weights)
    cached = torch_home / "hub" / "checkpoints" / os.path.basename(path)
    cached.parent.mkdir(parents=True)
    torch.save(resnet18(weights=None).state_dict(), cached)
    run_dir = tmp_path / "run"
    resnet = ["--model", "resnet18", "--image-size", "32", "--freeze", "layer4"]
    run_train([*SMOKE, *resnet, "--output-dir", run_dir], env={"TORCH_HOME": str(torch_home)})
    summary = read_json(run_dir / "summary.json")
    assert summary["model"] == "resnet18" and summary["num_test_samples"] == 256
    assert read_json(run_dir / "config.json")["model"] == "resnet18"


def test_a_pickle_payload_in_the_weights_cache_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    with open(cache / "resnet50-11ad3fa6.pth", "wb") as f:
        pickle.dump({"conv1.weight": Payload(str(marker))}, f)
    result = run_train(
        [*SMOKE, "--model", "resnet50", "--output-dir", tmp_path / "run"],
        env={"TORCH_HOME": str(tmp_path / "torch")},
        check=False,
    )
    assert not marker.exists()
    assert result.returncode == 2 and "could not be loaded" in result.stderr
