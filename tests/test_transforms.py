"""cifar/data/transforms.py: the batched crop and flip, and the model's input."""

import torch
import torch.nn.functional as F

from cifar.data.transforms import InputTransform, crop_flip


def reference_crop_flip(image, dy, dx, flip):
    padded = F.pad(image, (4, 4, 4, 4))
    crop = padded[:, dy : dy + 32, dx : dx + 32]
    return crop.flip(-1) if flip else crop


def test_batched_crop_flip_equals_per_image_crop_then_flip():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=generator)
    shifts = torch.randint(0, 9, (64, 2), generator=generator)
    flips = torch.randint(0, 2, (64,), generator=generator).bool()
    out = crop_flip(images, shifts, flips)
    for i in range(64):
        expected = reference_crop_flip(images[i], *shifts[i].tolist(), bool(flips[i]))
        assert torch.equal(out[i], expected)


def test_input_transform_normalises_and_resizes():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    out = InputTransform(mean, std, size=None)(images)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-5)
    assert InputTransform(mean, std, size=64)(images).shape == (4, 3, 64, 64)
