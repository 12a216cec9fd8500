"""From stored uint8 images to the model's input, on the device: the training augmentation (crop
and flip as the epoch plan draws them) and InputTransform (normalisation as the model's or the
dataset's spec asks, resize, memory format)."""

import torch
import torch.nn.functional as F

from cifar.data import dataset_spec
from cifar.models import model_spec

CROP_PADDING = 4


def crop_padding(size: int) -> int:
    """Zero padding of the random crop: 4 at CIFAR's 32 pixels, the same share at other sizes."""
    return max(1, size // 8)


def crop_flip(
    images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, padding: int = CROP_PADDING
) -> torch.Tensor:
    """Random crops (zero padding) and horizontal flips of a uint8 batch in one gather.

    shifts: N x 2 offsets in [0, 2 x padding] into the padded image; flips: N bools.
    """
    n, channels, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = shifts[:, :1] + torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device).expand(n, width)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + shifts[:, 1:]
    return padded[
        torch.arange(n, device=images.device)[:, None, None, None],
        torch.arange(channels, device=images.device)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


class InputTransform:
    """uint8 batch -> normalised float model input, resized for ResNet-50: one fused step."""

    def __init__(self, mean, std, size: int | None, channels_last: bool = False):
        self.scale = torch.tensor([1 / (255 * s) for s in std]).view(1, -1, 1, 1)
        shift = [-m / s for m, s in zip(mean, std, strict=True)]
        self.shift = torch.tensor(shift).view(1, -1, 1, 1)
        self.size, self.channels_last = size, channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale.device != images.device:
            self.scale, self.shift = self.scale.to(images.device), self.shift.to(images.device)
        x = torch.addcmul(self.shift, images.float(), self.scale)
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(
                x,
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
                antialias=False,
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def dataset_statistics(images: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and std (in [0, 1] units) of a uint8 image tensor."""
    sample = images[:10_000].double() / 255
    # A channel that never changes (solid colours, a blank channel) must not divide by zero.
    std = sample.std(dim=(0, 2, 3)).clamp_min(1 / 255)
    return tuple(sample.mean(dim=(0, 2, 3)).tolist()), tuple(std.tolist())


def uses_channels_last(config, device) -> bool:
    return config.channels_last and device.type in ("cuda", "cpu")


def fixed_normalisation(config) -> tuple[tuple, tuple] | None:
    """(mean, std) as the model asks (its pretrained weights'), else as the dataset's spec fixes
    them; None when the training set's statistics are used (dataset_statistics)."""
    spec = model_spec(config.model)
    if spec.mean is not None:
        return spec.mean, spec.std
    data = dataset_spec(config.dataset)
    return (data.mean, data.std) if data.mean is not None else None


def input_transform(config, train_images, device) -> InputTransform:
    """Normalisation by fixed_normalisation, else by the training set's statistics, and a resize
    to the model's input size."""
    mean, std = fixed_normalisation(config) or dataset_statistics(train_images)
    size = model_spec(config.model).image_size(config)
    return InputTransform(mean, std, size, uses_channels_last(config, device))
