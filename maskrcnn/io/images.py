"""Images in, as the model takes them: float32 (3, H, W), RGB, values in [0, 1].

`load_image` accepts a path, a PIL image, a numpy array or a tensor. Grayscale, palette, RGBA,
16-bit and EXIF-rotated images are converted, never rejected; unreadable, truncated, zero-size
and oversized images raise `ImageLoadError`, whose message names the file and the problem, so a
batch run can report it and carry on with the next file. `open_image` is the one place a file is
opened and decoded; `exif_transpose` and `image_sizes` let a dataset decide for itself whether
the EXIF orientation applies (`CocoDataset` keeps whichever orientation the JSON sizes match).

    >>> img = load_image("photo.jpg")            # doctest: +SKIP
    >>> img.shape, img.dtype                     # doctest: +SKIP
    (torch.Size([3, 480, 640]), torch.float32)
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

# 50 MP (about 7000 x 7000): already 600 MB as a float32 RGB tensor, and inference keeps R
# full-size mask planes besides; bigger inputs are almost always a mistake (or a bomb).
DEFAULT_MAX_PIXELS = 50_000_000

# What folders and glob patterns pick up. A file named explicitly is always tried, whatever
# its extension, so nothing the user asked for is silently dropped.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)

# EXIF's Orientation tag; orientations 5..8 swap width and height (rotations by 90 or 270 degrees).
EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# 16-bit integer modes Pillow uses for 16-bit grayscale PNG/TIFF; "I" (int32) is what older
# Pillow versions gave for the same files, so it is read on the same 0..65535 scale.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# Floats a hair outside [0, 1] come from resampling and are clamped; anything further out is
# almost always 0..255 data passed as float, which we refuse rather than silently saturate.
_FLOAT_TOLERANCE = 1e-3

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray, Tensor]


class DataError(ValueError):
    """Bad input data: an unreadable image, a malformed annotation or run-length string. The
    message names the file and, where known, the image id and annotation id."""


class ImageLoadError(DataError):
    """An image that cannot be used. `str(err)` is "<source>: <problem>".

    Attributes: `source` (the file name, or a description such as "<numpy array>") and
    `problem` (what is wrong, in words).
    """

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")

    def __reduce__(self):  # keep it picklable (e.g. raised in a DataLoader worker)
        return (type(self), (self.source, self.problem))


class ImageTooLargeError(ImageLoadError):
    """An image above the pixel limit (`max_pixels`, or Pillow's decompression-bomb check),
    found from its header before any pixel is decoded; a server answers it with 413, not 400."""


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    exif: bool = True,
) -> Tensor:
    """Load one image as float32 (3, H, W) RGB in [0, 1].

    source:
      - a path (str / PathLike): opened with `open_image`; the size is checked against
        `max_pixels` from the header, before any pixel is decoded.
      - a PIL.Image: converted the same way.
      - a numpy array, channels LAST as PIL/OpenCV give them: (H, W), (H, W, 1), (H, W, 3) or
        (H, W, 4). uint8 is divided by 255, uint16 by 65535, bool maps to 0/1, floats must
        already be in [0, 1].
      - a torch tensor, channels FIRST as torchvision gives them: (H, W), (1, H, W), (3, H, W)
        or (4, H, W); same dtype rules. An (H, W, 3) tensor is refused with a hint instead of
        being guessed at, because a 3-pixel-high image looks the same. The result stays on the
        tensor's device and may share memory with it when it is already float32 (3, H, W).

    Mode handling: grayscale (L, 1, I;16) is repeated over the 3 channels; alpha (RGBA, LA,
    palette transparency) is DROPPED, not composited, which is what torchvision and detectron2
    users get from `convert("RGB")` and what the pretrained weights saw; palette (P) images are
    expanded through their palette; 16-bit images are scaled by 1/65535; CMYK and YCbCr go
    through Pillow's RGB conversion; float ("F") images must hold values in [0, 1].

    max_pixels: refuse images with more than this many pixels (None: no limit of ours; Pillow's
    own `Image.MAX_IMAGE_PIXELS` bomb check still applies to files, raise it to go beyond it).
    name: what error messages call the image (default: the path, or "<numpy array>" etc.).
    exif: for paths and PIL images, turn the picture upright by its EXIF orientation, as photo
    viewers and annotation tools do (a no-op on an image that was already transposed, since
    transposing removes the tag). False keeps the stored pixel order.

    Raises ImageLoadError (a DataError, hence a ValueError) for missing, unreadable, truncated,
    zero-size or oversized images and for arrays of an unusable shape, dtype or range;
    TypeError for an unsupported source type.
    """
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        return _from_pil(open_image(source, max_pixels=max_pixels, name=label), None, label, exif)
    if isinstance(source, Image.Image):
        label = name or getattr(source, "filename", "") or "<PIL image>"
        return _from_pil(source, max_pixels, label, exif)
    if isinstance(source, np.ndarray):
        return _from_numpy(source, max_pixels, name or "<numpy array>")
    if isinstance(source, Tensor):
        return _from_tensor(source, max_pixels, name or "<tensor>")
    raise TypeError(
        f"load_image takes a path, PIL.Image, numpy array or torch.Tensor, got {type(source).__name__}"
    )


def open_image(
    path: str | os.PathLike | BinaryIO, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Open and fully decode an image file, in its stored orientation (see `exif_transpose`).

    Decoding happens here, not lazily, so a truncated file fails in this call with the file
    named. The size is checked against `max_pixels` from the header, before decoding. Raises
    ImageLoadError naming `name` (default: the path) for a missing, unreadable, truncated,
    zero-size or oversized file (ImageTooLargeError for the last).
    `path` may also be an open binary file (e.g. `io.BytesIO` of an upload); name it with `name`.
    """
    if hasattr(path, "read"):
        name = name or "<file object>"
        image = _open_header(path, name)
    else:
        name = name or os.fspath(path)
        image = _open_header(Path(path), name)
    with image:  # closes the file; the decoded pixels stay with the image
        # Checked from the header before decoding, so a huge file costs nothing to refuse.
        _check_size(image.width, image.height, max_pixels, name)
        try:
            image.load()
        except Exception as e:  # truncated/corrupt data surfaces as OSError, SyntaxError, struct.error...
            raise ImageLoadError(
                name, f"cannot read image: corrupt or truncated image data ({type(e).__name__}: {e})"
            ) from None
    return image


def _open_header(path: Path | BinaryIO, name: str) -> Image.Image:
    """Image.open, which reads the header only, with its errors turned into ImageLoadError."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise ImageLoadError(name, "image file not found (no such file)") from None
    except IsADirectoryError:
        raise ImageLoadError(name, "is a folder, not an image file") from None
    except PermissionError:
        raise ImageLoadError(name, "permission denied") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(
            name, f"refused by Pillow's decompression-bomb check ({e}); to load it anyway set "
            "PIL.Image.MAX_IMAGE_PIXELS higher and pass a larger max_pixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            name, "cannot read image: not an image file, or a format Pillow cannot read"
        ) from None
    except Exception as e:  # Pillow's format plugins raise a zoo of types on bad headers
        raise ImageLoadError(name, f"cannot read image header ({type(e).__name__}: {e})") from None


def _exif_orientation(image: Image.Image, name: str) -> int:
    """EXIF orientation 1..8 (1: stored upright). A broken EXIF block should not cost the user
    an otherwise good image, so it counts as 1, with a warning."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception as e:
        warnings.warn(f"{name}: ignoring unreadable EXIF orientation ({type(e).__name__}: {e})")
        return 1


def exif_transpose(image: Image.Image, *, name: str = "<PIL image>") -> Image.Image:
    """`image` turned upright by its EXIF orientation; the same object when it already is
    (unlike `ImageOps.exif_transpose`, which copies the whole image then). A broken EXIF block
    is ignored with a warning naming `name`."""
    if _exif_orientation(image, name) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:
        warnings.warn(f"{name}: ignoring unreadable EXIF orientation ({type(e).__name__}: {e})")
        return image


def image_sizes(
    path: str | os.PathLike, *, name: str | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stored (H, W), EXIF-oriented (H, W)) of an image file, reading only its header.

    The oriented size is what `load_image(path)` returns and what annotation tools that show
    the picture upright (LabelMe, CVAT) annotate. Raises ImageLoadError naming the file.
    """
    name = name or os.fspath(path)
    with _open_header(Path(path), name) as image:
        width, height = image.size
        orientation = _exif_orientation(image, name)
    oriented = (width, height) if orientation in _SWAPPING_ORIENTATIONS else (height, width)
    return (height, width), oriented


def _check_size(width: int, height: int, max_pixels: int | None, name: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"image has zero size ({width}x{height} pixels)")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            name,
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} pixels (max_pixels); raise the limit to load it",
        )


def _from_pil(image: Image.Image, max_pixels: int | None, name: str, exif: bool) -> Tensor:
    _check_size(image.width, image.height, max_pixels, name)
    if exif:
        image = exif_transpose(image, name=name)
    return _from_numpy(_pil_to_numpy(image, name), None, name)


def _pil_to_numpy(image: Image.Image, name: str) -> np.ndarray:
    """(H, W) or (H, W, 3) array in a dtype `_from_numpy` understands."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # int32 "I" may hold values beyond 16 bits (32-bit TIFF); clip rather than wrap.
        return np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode in ("P", "PA"):
        # via RGBA: the direct P -> RGB conversion warns about byte transparency; alpha is then dropped
        return np.asarray(image.convert("RGBA"))[..., :3]
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ImageLoadError(name, f"unsupported image mode {mode!r} ({e})") from None


def _from_numpy(array: np.ndarray, max_pixels: int | None, name: str) -> Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageLoadError(
            name, f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array (channels last), "
            f"got shape {tuple(array.shape)}"
        )
    _check_size(array.shape[1], array.shape[0], max_pixels, name)
    if not array.dtype.isnative:  # big-endian data (e.g. from a FITS or raw file); torch needs native
        array = array.astype(array.dtype.newbyteorder("="))
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "u" and size == 2:
        array = array.astype(np.int32)  # torch has limited uint16 support; int32 holds it exactly
        scale = 65535.0
    elif (kind == "u" and size == 1) or kind == "b":
        scale = 255.0 if kind == "u" else 1.0
    elif kind == "f":
        scale = 1.0
    else:
        raise ImageLoadError(
            name, f"unsupported dtype {array.dtype}; use uint8 (0..255), uint16 (0..65535) or float in [0, 1]"
        )
    if not array.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on read-only memory
        array = array.copy()
    # (H, W, C) -> (C, H, W): the layout the model takes
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    return _finish(tensor, scale, name)


def _from_tensor(tensor: Tensor, max_pixels: int | None, name: str) -> Tensor:
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
        hint = ""
        if tensor.ndim == 3 and tensor.shape[-1] in (1, 3, 4):
            hint = "; it looks channels-last, pass tensor.permute(2, 0, 1)"
        raise ImageLoadError(
            name, f"expected a (3, H, W), (1, H, W), (4, H, W) or (H, W) tensor, got shape "
            f"{tuple(tensor.shape)}{hint}"
        )
    _check_size(tensor.shape[2], tensor.shape[1], max_pixels, name)
    if tensor.dtype == torch.uint8:
        scale = 255.0
    elif tensor.dtype == torch.bool:
        scale = 1.0
    elif tensor.dtype == torch.uint16:
        tensor, scale = tensor.to(torch.int32), 65535.0
    elif tensor.is_floating_point():
        scale = 1.0
    else:
        raise ImageLoadError(
            name, f"unsupported dtype {tensor.dtype}; use uint8 (0..255), uint16 or float in [0, 1]"
        )
    return _finish(tensor, scale, name)


def _finish(tensor: Tensor, scale: float, name: str) -> Tensor:
    """(C, H, W) with C in {1, 3, 4} -> float32 (3, H, W) in [0, 1]."""
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    elif tensor.shape[0] == 4:
        tensor = tensor[:3]  # drop alpha, see load_image
    was_float = tensor.is_floating_point()
    tensor = tensor.to(torch.float32)
    if scale != 1.0:
        tensor = tensor / scale
    if was_float:
        if not bool(torch.isfinite(tensor).all()):
            raise ImageLoadError(name, "image contains NaN or infinite values")
        lo, hi = (float(v) for v in torch.aminmax(tensor))
        if lo < -_FLOAT_TOLERANCE or hi > 1 + _FLOAT_TOLERANCE:
            raise ImageLoadError(
                name, f"float pixel values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}] "
                "(divide 0..255 data by 255)"
            )
        if lo < 0 or hi > 1:
            tensor = tensor.clamp(0, 1)
    return tensor.contiguous()
