"""Reading images the same way everywhere (training, prediction, converters) and writing JSON
without ever leaving a half-written file behind.

Every failure is raised as `DataError` naming the file, so a bad image in a folder of 100k is
found from the message alone.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = ["DataError", "load_image", "open_image", "image_sizes", "write_json_atomic"]

# EXIF orientations 5..8 swap width and height (rotations by 90 or 270 degrees).
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


class DataError(ValueError):
    """Bad input data. The message names the file and, where known, the image id and annotation id."""


def open_image(path: str | os.PathLike, *, exif: bool = True) -> Image.Image:
    """Open and fully decode an image file as an RGB (or 16-bit-aware) PIL image.

    Decoding happens here, not lazily, so truncated files fail in this call with the file named.
    `exif=True` applies the EXIF orientation, as photo viewers and annotation tools (LabelMe,
    CVAT) do, so pixels line up with annotations drawn on the displayed picture.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()  # pixels stay in memory after the file closes
            if exif:
                img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # OSError covers "image file is truncated"; SyntaxError is what some PIL plugins raise
        # on corrupt headers.
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    if img.width == 0 or img.height == 0:
        raise DataError(f"{path}: image has zero size {img.width}x{img.height}")
    return img


def pil_to_tensor(img: Image.Image) -> Tensor:
    """PIL image of any mode -> float32 (3, H, W) RGB in [0, 1].

    16-bit grayscale is scaled by its full range; `convert("RGB")` would clip it to 255 and
    turn most of the picture white. Alpha is dropped (the colour under it is kept), palettes are
    expanded, grayscale is repeated over three channels.
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if img.mode.startswith("I;16"):
            peak = 65535.0
        else:  # 32-bit int or float: guess the range from the data
            top = float(arr.max()) if arr.size else 0.0
            peak = 1.0 if top <= 1.0 and img.mode == "F" else (255.0 if top <= 255 else 65535.0)
        arr = np.clip(arr / peak, 0.0, 1.0)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t[None].expand(3, -1, -1).contiguous()
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    # (H, W, 3) -> (3, H, W)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0).contiguous()


def load_image(path: str | os.PathLike, *, exif: bool = True) -> Tensor:
    """Read an image file as float32 (3, H, W) RGB in [0, 1].

    Grayscale, RGBA, palette and 16-bit images are converted, not rejected; EXIF orientation is
    applied unless `exif=False`. Raises `DataError` naming the file if it is missing, truncated
    or not an image.

    >>> img = load_image("photo.jpg")          # doctest: +SKIP
    >>> img.shape, img.dtype                   # doctest: +SKIP
    (torch.Size([3, 480, 640]), torch.float32)
    """
    return pil_to_tensor(open_image(path, exif=exif))


def image_sizes(path: str | os.PathLike) -> tuple[tuple[int, int], tuple[int, int]]:
    """(raw (H, W), EXIF-oriented (H, W)) of an image file, reading only its header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    oriented = (w, h) if orientation in _SWAPPING_ORIENTATIONS else (h, w)
    return (h, w), oriented


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON to `path` through a temporary file in the same directory and `os.replace`,
    so a crash or a full disk never leaves a truncated file where a good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
