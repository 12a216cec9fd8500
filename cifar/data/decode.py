"""Image files to uint8 RGB tensors: decoding (a large JPEG at a reduced DCT scale), resizing, and
naming a file that fails."""

import os
import warnings

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import to_dtype

JPEG_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class UnreadableImage(Exception):
    """An image that passed the listing failed to decode (truncated, corrupt)."""

    PREFIX = "cannot decode image "

    @property
    def reason(self) -> str:
        # Raised again in the main process by a DataLoader worker, the text carries the
        # worker's traceback; the message is its last line.
        text = str(self.args[0]) if self.args else ""
        line = text.strip().splitlines()[-1] if text.strip() else ""
        return line[line.find(self.PREFIX) :] if self.PREFIX in line else line


def shown(path: str) -> str:
    """A file's path as any terminal prints it: bytes that are not UTF-8 and control characters
    escaped (a strict UTF-8 stdout raises on the first; a newline would split a message)."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def unreadable_message(path: str, reason: str) -> str:
    return (
        f"{UnreadableImage.PREFIX}{shown(path)} ({reason}). Remove or replace the file (or pass "
        f"--skip-bad-images to leave it out), then continue with --resume auto."
    )


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def decode_rgb(path: str, min_side: int = 0) -> torch.Tensor:
    """The image file at path as uint8 3 x H x W RGB; raises what the decoder raises.

    min_side: the side the image will be resized to. A JPEG at least twice that on both sides
    is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling through PIL's draft), still no
    smaller than min_side: the inverse DCT of the dropped detail is skipped, and the scaling
    is itself a low-pass filter. Else torchvision.io decodes JPEG, PNG and WebP (faster than
    PIL at full size); PIL takes the rest (BMP, TIFF, PPM) and, for a broken file, says what
    is wrong in plainer words than libjpeg.
    """
    if min_side and path.lower().endswith(JPEG_SUFFIXES):
        reduced = decode_jpeg_reduced(path, min_side)
        if reduced is not None:
            return reduced
    try:
        image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        if image.ndim == 4:  # an animated GIF, frames first: its first frame, as PIL opens it
            image = image[0]
        return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)
    except RuntimeError:
        pass
    from PIL import Image

    with Image.open(path) as image:
        return pil_to_tensor(image)


def decode_jpeg_reduced(path: str, min_side: int) -> torch.Tensor | None:
    """The JPEG at path decoded at the smallest DCT scale that keeps both sides >= min_side;
    None when that scale is 1, the file is not a JPEG inside (MPO is: a camera JPEG with extra
    pictures), PIL does not know it, or it is over PIL's size limit (then torchvision.io
    decodes it at full size)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.UnidentifiedImageError):
            return None
    with image:
        full_size = image.size
        if image.format not in ("JPEG", "MPO"):
            return None
        image.draft("RGB", (min_side, min_side))
        if image.size == full_size:
            return None
        return pil_to_tensor(image)


def pil_to_tensor(image) -> torch.Tensor:
    array = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_rgb(path: str, min_side: int = 0) -> torch.Tensor:
    """decode_rgb, naming the file in an UnreadableImage when it cannot be decoded."""
    try:
        return decode_rgb(path, min_side)
    except Exception as error:  # PIL raises many types for bad files
        raise UnreadableImage(unreadable_message(path, describe(error))) from None


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """size x size (the aspect ratio is not kept, as torchvision's Resize((size, size)))."""
    return TF.resize(images, [size, size], antialias=True)
