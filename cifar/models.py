"""The models and their registry. Plain nn.Modules: no devices, precision or processes here.

Each registered model carries its input contract (ModelSpec): the input size, the normalisation
(its pretrained weights' mean and std, or the dataset's statistics), the width of its pooled
features, and its pretrained weights. Code that feeds a model asks its spec, never its name.
"""

import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, WeightsEnum, resnet18, resnet50

from cifar.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classifier_head(in_features: int, hidden: int, num_classes: int, dropout: float):
    """The small MLP both models end with."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class SimpleCNN(nn.Module):
    """Three conv layers (conv, optional BatchNorm, ReLU, 2x2 max pool), then an MLP head.

    Input: N x 3 x 32 x 32. Channels: width, 2 x width, 4 x width.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 32,
        batch_norm: bool = True,
        hidden: int = 512,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers = []
        in_channels = 3
        for out_channels in (width, 2 * width, 4 * width):
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), classifier_head(in_channels * 4 * 4, hidden, num_classes, dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResNetTransfer(nn.Module):
    """A torchvision ResNet with its fc layer replaced by an MLP head.

    freeze: "backbone" trains the head only, "layer4" also the last stage, "none" everything.
    Frozen parameters get requires_grad=False and their BatchNorm layers stay in eval mode, so
    the frozen part computes the same features in training and evaluation.
    """

    def __init__(
        self,
        architecture: Callable[..., nn.Module] = resnet50,
        num_classes: int = 10,
        freeze: str = "backbone",
        hidden: int = 512,
        dropout: float = 0.0,
        backbone_state: dict | None = None,
    ):
        super().__init__()
        self.net = architecture(weights=None)
        if backbone_state is not None:
            self.net.load_state_dict(backbone_state)
        self.num_features = self.net.fc.in_features
        self.net.fc = classifier_head(self.num_features, hidden, num_classes, dropout)
        trainable = {"backbone": ("fc",), "layer4": ("fc", "layer4"), "none": None}[freeze]
        self.frozen = (
            []
            if trainable is None
            else [module for name, module in self.net.named_children() if name not in trainable]
        )
        for module in self.frozen:
            module.requires_grad_(False)

    @property
    def head(self) -> nn.Sequential:
        return self.net.fc

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, N x num_features (everything but the head)."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and what it expects as input."""

    build: Callable[..., nn.Module]  # (config, num_classes, backbone_state or None) -> model
    input_size: int | None  # a fixed side in pixels, or None: --image-size
    mean: tuple | None  # normalisation of its pretrained weights; None: the dataset's statistics
    std: tuple | None
    num_features: int | None = None  # pooled feature width of .features(), for --cache-features
    weights: WeightsEnum | None = None  # torchvision's pretrained weights
    settings: tuple = ()  # the Config fields build reads: model.json's builder settings

    def image_size(self, config) -> int:
        return self.input_size or config.image_size


def build_simple_cnn(config, num_classes: int, state=None) -> nn.Module:
    return SimpleCNN(
        num_classes, config.width, config.batch_norm, config.head_hidden, config.dropout
    )


def resolved_freeze(freeze: str, state) -> str:
    """--freeze auto: the backbone frozen with pretrained weights, nothing frozen without."""
    if freeze != "auto":
        return freeze
    return "backbone" if state is not None else "none"


def imagenet_resnet(architecture, num_features: int, weights: WeightsEnum) -> ModelSpec:
    """A torchvision ResNet for transfer: any input size (--image-size), ImageNet's
    normalisation, a new head."""

    def build(config, num_classes: int, state=None) -> nn.Module:
        return ResNetTransfer(
            architecture,
            num_classes,
            resolved_freeze(config.freeze, state),
            config.head_hidden,
            config.dropout,
            state,
        )

    settings = ("freeze", "head_hidden", "dropout")
    return ModelSpec(build, None, IMAGENET_MEAN, IMAGENET_STD, num_features, weights, settings)


REGISTRY = {
    "cnn": ModelSpec(
        build_simple_cnn,
        input_size=32,
        mean=None,
        std=None,
        settings=("width", "batch_norm", "head_hidden", "dropout"),
    ),
    "resnet50": imagenet_resnet(resnet50, 2048, ResNet50_Weights.IMAGENET1K_V2),
    "resnet18": imagenet_resnet(resnet18, 512, ResNet18_Weights.IMAGENET1K_V1),
}


def model_spec(name: str) -> ModelSpec:
    return REGISTRY[name]


def pretrained_weights_path(weights: WeightsEnum) -> str:
    """Where torchvision's weights API caches these weights (under TORCH_HOME)."""
    filename = os.path.basename(weights.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def offline() -> bool:
    return any(os.environ.get(v, "") in ("1", "true") for v in ("CIFAR_OFFLINE", "HF_HUB_OFFLINE"))


def load_pretrained_state(name: str) -> dict:
    """The ImageNet weights of a registered model through torchvision's weights API: cache
    first, else download. Loaded with weights_only=True, so a tampered file cannot run code."""
    weights = model_spec(name).weights
    path = pretrained_weights_path(weights)
    title = f"{name} {weights.name}"
    fetch = (
        f'python -c "import torchvision; torchvision.models.get_model({name!r}, '
        f'weights={weights.name!r})"'
    )
    if not os.path.exists(path) and offline():
        raise UserError(
            f"the {title} weights are not cached at {path} and downloads are off "
            f"(CIFAR_OFFLINE/HF_HUB_OFFLINE). On a machine with network run {fetch} (or "
            f"`python train.py --model {name} --prepare-only`) and copy the file there, or "
            f"train from scratch with --no-pretrained."
        )
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        return weights.get_state_dict(progress=False, weights_only=True)
    except Exception as error:  # network errors, torn files, refused pickles alike
        if os.path.exists(path):
            raise UserError(
                f"the cached {title} weights at {path} could not be loaded "
                f"({type(error).__name__}; only plain tensors are accepted). "
                f"Delete the file and fetch it again with {fetch}."
            ) from None
        raise UserError(
            f"the {title} weights are not cached at {path} and could not be "
            f"downloaded ({type(error).__name__}). On a machine with network run {fetch} (or "
            f"`python train.py --model {name} --prepare-only`) and copy the file there (set "
            f"TORCH_HOME to move the cache), or train from scratch with --no-pretrained."
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def build_model(config, num_classes: int) -> nn.Module:
    """The model the config names, on the CPU in float32."""
    spec = model_spec(config.model)
    pretrained = spec.weights is not None and config.pretrained
    return spec.build(
        config, num_classes, load_pretrained_state(config.model) if pretrained else None
    )


class TrainedClassifier(nn.Module):
    """A trained network behind the input contract of its model.json: uint8 RGB images
    N x 3 x S x S (S: image_size) in, logits N x classes out, by the card's own formula
    ((x / 255 - mean) / std, then bilinear to input_size). What every exported file computes."""

    def __init__(self, network: nn.Module, card: dict):
        super().__init__()
        self.network, self.card = network, card
        self.register_buffer("mean", torch.tensor(card["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(card["std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def classes(self) -> list:
        return self.card["classes"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255 - self.mean) / self.std
        size = self.card["input_size"]
        if size != self.card["image_size"]:
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=False)
        return self.network(x)


def load_trained(run_dir: str) -> TrainedClassifier:
    """The classifier a finished run trained, from its model.json and model.safetensors alone
    (torch, torchvision and safetensors; Accelerate is not imported), on the CPU in float32 and
    in eval mode. A UserError names a missing, damaged or mismatched file and the fix."""
    from safetensors.torch import load as load_weights

    from cifar.record import MODEL_CARD, MODEL_WEIGHTS, read_record

    card_path, weights_path = (os.path.join(run_dir, n) for n in (MODEL_CARD, MODEL_WEIGHTS))
    export = f"python -m cifar.export {run_dir}"
    if not os.path.isfile(card_path):
        raise UserError(
            f"{run_dir} has no portable model ({MODEL_CARD} and {MODEL_WEIGHTS}): the run was "
            f"trained before runs wrote one, or they were removed. Write them from its last "
            f"checkpoint with `{export}`."
        )
    fix = f"Delete {card_path} and {weights_path}, then write them again with `{export}`."
    card = read_record(run_dir, MODEL_CARD, fix)
    if card["model"] not in REGISTRY:
        raise UserError(
            f"{card_path} names model {card['model']!r}, which this version does not know "
            f"({', '.join(REGISTRY)}). Load it with the version that trained it."
        )
    try:
        with open(weights_path, "rb") as f:
            weights = f.read()
        if hashlib.sha256(weights).hexdigest() != card["weights_sha256"]:
            raise ValueError(f"{MODEL_WEIGHTS} is not the file {MODEL_CARD} names (its sha256)")
        builder = SimpleNamespace(**card["builder"])
        network = REGISTRY[card["model"]].build(builder, len(card["classes"]), None)
        network.load_state_dict(load_weights(weights))
    except Exception as error:  # OSError, SafetensorError, a missing setting, a shape mismatch
        reason = " ".join(str(error).split())[:300]
        raise UserError(
            f"the portable model of {run_dir} cannot be loaded ({type(error).__name__}: "
            f"{reason}). {fix}"
        ) from None
    return TrainedClassifier(network, card).eval()
