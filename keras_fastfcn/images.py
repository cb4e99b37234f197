"""Reading image and label files: one decoding policy for every path of the package.

Images are read as an image viewer shows them, the same way for training, evaluation,
prediction and the TF Serving client:

- the EXIF orientation is applied (a phone photo stored sideways comes out upright,
  matching labels drawn on the upright photo);
- 16-bit and 32-bit grayscale (`I;16`, `I`) is scaled to 8 bits (`/ 257`), float
  grayscale (`F`, e.g. TIFF) is taken as 0-255 (above 255: as 16-bit); NaN or
  infinite pixels are refused;
- grayscale, palette and RGBA/LA images become RGB (alpha dropped), with a note.

Labels are single-channel class-index PNGs (mode L, P, 1 or I;16), with the same EXIF
rule. Every problem raises `ImageError` (a `ValueError`) naming the file. This module
imports NumPy and Pillow only (no TensorFlow), so the serving client can use it.

Example:
>>> from PIL import Image
>>> Image.new("L", (48, 32)).save("gray.png")
>>> image, note = read_image("gray.png")
>>> image.dtype, image.shape, note
(dtype('uint8'), (32, 48, 3), 'grayscale image (mode L) converted to RGB')
"""

import os
import warnings

import numpy as np

__all__ = ["ImageError", "read_image", "read_label", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_WIDE_GRAY = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ImageError(ValueError):
    """An image or label file that is missing, unreadable or not usable; names the file."""


def _open(path, what):
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise ImageError(f"{what} {path} is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            # 89-179 megapixels: Pillow warns of a "decompression bomb"; predict bounds
            # its memory itself (--max-pixels). Above 179 MP Pillow refuses (an
            # ImageError below).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now: truncated or corrupt files fail here
                return ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise ImageError(f"cannot read {what} {path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot read {what} {path}: {err}") from None


def read_image(path):
    """An image file as uint8 RGB `(H, W, 3)`, as an image viewer shows it.

    Args:
        path: image file (JPEG, PNG, BMP, WebP, TIFF, ...).

    Returns:
        `(array, note)`: `note` is None, or a sentence saying how the image was
        converted to 8-bit RGB (grayscale, alpha dropped, 16-bit scaled, ...).

    Raises:
        ImageError: missing, unreadable or truncated file, or NaN/inf pixels.
    """
    img = _open(path, "image")
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, np.uint8), None
    if mode in _WIDE_GRAY:
        gray = np.asarray(img, np.float64)
        if not np.isfinite(gray).all():
            raise ImageError(f"image {path} has NaN or infinite pixel values")
        if gray.max(initial=0) > 255:
            gray = gray / 257.0
        rgb = np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, -1)
        return rgb, f"{mode} grayscale image converted to 8-bit RGB"
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode == "P" and "transparency" in img.info)
    rgb = np.asarray(img.convert("RGB"), np.uint8)
    if mode in ("1", "L", "LA"):
        note = f"grayscale image (mode {mode}) converted to RGB"
        return rgb, note + (", alpha channel dropped" if has_alpha else "")
    if has_alpha:
        return rgb, f"image with transparency (mode {mode}) converted to RGB, alpha dropped"
    if mode == "P":
        return rgb, None  # a colour image stored with a palette: nothing lost
    return rgb, f"mode {mode} image converted to RGB"


def read_label(path):
    """A raw class-index map `(H, W)` from a single-channel PNG (mode L, P, 1 or I;16).

    Raises:
        ImageError: missing or unreadable file, or a colour (RGB) label.
    """
    img = _open(path, "label")
    mode = img.mode
    if mode in ("L", "P"):
        return np.asarray(img)  # P: palette indices, not colours (VOC)
    if mode == "1":
        return np.asarray(img).astype(np.uint8)
    if mode.startswith("I"):
        return np.asarray(img).astype(np.int64)
    raise ImageError(f"label {path} is a {mode} image; labels must be single-channel "
                     "class-index PNGs (mode L or P), not colour-coded")
