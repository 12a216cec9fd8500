import os

import pytest
import torch
from torchvision.models import resnet50

from cifar.build import build_optimizer
from cifar.config import Config
from cifar.errors import UserError
from cifar.models import ResNetTransfer, SimpleCNN, build_model, model_spec, pretrained_weights_path

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


def test_pretrained_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CIFAR_OFFLINE", "1")
    torch.manual_seed(123)
    state = resnet50(weights=None).state_dict()
    path = pretrained_weights_path(model_spec("resnet50").weights)
    assert path.startswith(str(tmp_path)) and path.endswith("resnet50-11ad3fa6.pth")
    os.makedirs(os.path.dirname(path))
    torch.save(state, path)
    model = build_model(Config(model="resnet50"), num_classes=10)
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.net.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])


def test_missing_weights_name_the_cache_file_and_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CIFAR_OFFLINE", "1")
    with pytest.raises(UserError) as error:
        build_model(Config(model="resnet50"), num_classes=10)
    message = str(error.value)
    assert pretrained_weights_path(model_spec("resnet50").weights) in message
    assert "weights='IMAGENET1K_V2'" in message and "--no-pretrained" in message
