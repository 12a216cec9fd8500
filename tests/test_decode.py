"""cifar/data/decode.py: image files to uint8 RGB tensors, a large JPEG decoded at a reduced DCT
scale close to the full decode."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cifar.data.decode import load_rgb, resize
from tests.helpers import EXAMPLES, smooth_image


@pytest.mark.parametrize("suffix", ["png", "bmp"])
def test_images_decode_to_the_pixels_pil_reads(tmp_path, suffix):
    path = tmp_path / f"image.{suffix}"
    Image.effect_noise((21, 13), 70).convert("RGB").save(path)
    with Image.open(path) as image:
        expected = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    decoded = load_rgb(str(path))
    assert decoded.shape == (3, 13, 21)
    assert torch.equal(decoded.permute(1, 2, 0), expected)


def test_a_large_jpeg_decodes_at_a_reduced_scale_close_to_the_full_decode(tmp_path):
    path = tmp_path / "photo.jpg"
    smooth_image(500, 375).save(path, quality=90)
    full, reduced = load_rgb(str(path)), load_rgb(str(path), 32)
    assert full.shape == (3, 375, 500)
    assert reduced.shape == (3, 47, 63)  # 1/8 scale: the smallest with both sides >= 32
    assert load_rgb(str(path), 100).shape == (3, 188, 250)  # 1/2: 1/4 would be 94 high
    as_trained = [resize(image, 32).float() for image in (full, reduced)]
    difference = (as_trained[0] - as_trained[1]).abs()
    assert difference.mean() < 2 and difference.max() < 24, (difference.mean(), difference.max())


def test_camera_jpegs_and_jpegs_over_pils_size_limit_decode_too(tmp_path, monkeypatch):
    photo = smooth_image(500, 375)
    mpo = tmp_path / "camera.jpg"  # a JPEG with a second picture, as phones write
    photo.save(mpo, format="MPO", save_all=True, append_images=[photo.resize((50, 37))])
    with Image.open(mpo) as image:
        assert image.format == "MPO"
    assert load_rgb(str(mpo), 32).shape == (3, 47, 63)
    large = tmp_path / "large.jpg"
    photo.save(large, quality=90)
    full = load_rgb(str(large))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # over it: PIL would warn
        assert load_rgb(str(large), 32).shape == (3, 47, 63)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over twice: PIL refuses
        assert torch.equal(load_rgb(str(large), 32), full)  # torchvision's full decode


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    width=st.integers(1, 700),
    height=st.integers(1, 700),
    min_side=st.integers(1, 300),
    mode=st.sampled_from(["RGB", "L", "CMYK"]),
)
def test_any_jpeg_decodes_to_rgb_no_smaller_than_it_will_be_resized_to(
    tmp_path_factory, width, height, min_side, mode
):
    path = tmp_path_factory.mktemp("jpeg") / "image.jpg"
    smooth_image(width, height, mode).save(path, quality=85)
    image = load_rgb(str(path), min_side)
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    h, w = image.shape[1:]
    scales = [s for s in (1, 2, 4, 8) if (-(-height // s), -(-width // s)) == (h, w)]
    assert scales, (h, w)  # the full size, or a DCT scale of it
    assert scales[0] == 1 or min(h, w) >= min_side


@pytest.mark.parametrize("suffix", ["gif", "png"])  # a GIF, and one named like a PNG
def test_an_animated_gif_decodes_to_its_first_frame_as_pil_reads_it(tmp_path, suffix):
    path = tmp_path / f"animated.{suffix}"
    first, second = (Image.effect_noise((21, 13), sigma).convert("RGB") for sigma in (70, 20))
    first.save(path, format="GIF", save_all=True, append_images=[second])
    with Image.open(path) as image:  # PIL opens an animated GIF at its first frame
        expected = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    decoded = load_rgb(str(path))
    assert decoded.shape == (3, 13, 21)
    assert torch.equal(decoded.permute(1, 2, 0), expected)
