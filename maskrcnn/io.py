"""Reading images and writing files, for every part of the package (data, inference,
checkpoints, training).

`load_image` turns whatever a user has (a path, a PIL image, a numpy array, a tensor) into the one
layout the model takes: float32 (3, H, W), RGB, values in [0, 1]. Grayscale, palette, RGBA,
16-bit and EXIF-rotated images are converted, never rejected; unreadable, truncated, zero-size
and oversized images raise `ImageLoadError`, whose message names the file and the problem, so a
batch run can report it and carry on with the next file. `open_image` is the one place a file is
opened and decoded; `exif_transpose` and `image_sizes` let a dataset decide for itself whether
the EXIF orientation applies (`CocoDataset` keeps whichever orientation the JSON sizes match).

`expand_sources` turns command-line sources (files, folders, glob patterns) into a file list.
`atomic_open` / `atomic_write` / `write_json_atomic` write every output through a temporary file
in the same folder and `os.replace`, so an interrupted run never leaves a half-written file
under the final name.

`encode_kaggle_rle` / `decode_kaggle_rle`: Kaggle's run-length masks, read by the CSV converter
and written by the prediction CSV.

    >>> img = load_image("photo.jpg")            # doctest: +SKIP
    >>> img.shape, img.dtype                     # doctest: +SKIP
    (torch.Size([3, 480, 640]), torch.float32)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EXIF_ORIENTATION_TAG",
    "IMAGE_EXTENSIONS",
    "DataError",
    "ImageLoadError",
    "ImageSource",
    "atomic_open",
    "atomic_write",
    "decode_kaggle_rle",
    "encode_kaggle_rle",
    "exif_transpose",
    "expand_sources",
    "image_sizes",
    "is_image_file",
    "load_image",
    "open_image",
    "write_json_atomic",
]

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
    path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Open and fully decode an image file, in its stored orientation (see `exif_transpose`).

    Decoding happens here, not lazily, so a truncated file fails in this call with the file
    named. The size is checked against `max_pixels` from the header, before decoding. Raises
    ImageLoadError naming `name` (default: the path) for a missing, unreadable, truncated,
    zero-size or oversized file.
    """
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


def _open_header(path: Path, name: str) -> Image.Image:
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
        raise ImageLoadError(
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
        raise ImageLoadError(
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


# ---------------------------------------------------------------------------------------------
# Sources


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


_GLOB_MAGIC = re.compile(r"[*?[]")


def expand_sources(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders and glob patterns -> the image files they name, in order, without duplicates.

    - an existing file is kept whatever its extension (a bad one is reported by load_image);
    - a folder gives its image files (by extension, not recursive, hidden files skipped,
      sorted by name);
    - a glob pattern (`*`, `?`, `[...]`; `**` recurses) gives its matching image files, sorted.
    `~` is expanded. Raises FileNotFoundError naming every source that gave no file at all.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]  # a lone string would otherwise be iterated character by character
    found: dict[Path, None] = {}  # an ordered set
    problems: list[str] = []
    for source in sources:
        text = os.path.expanduser(os.fspath(source))
        path = Path(text)
        if path.is_dir():
            matches = sorted(
                p for p in path.iterdir()
                if p.is_file() and is_image_file(p) and not p.name.startswith(".")
            )
            if not matches:
                problems.append(f"{text!r}: folder has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif path.is_file():
            matches = [path]
        elif _GLOB_MAGIC.search(text):
            import glob  # only needed here

            matches = sorted(
                Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p) and is_image_file(p)
            )
            if not matches:
                problems.append(f"{text!r}: pattern matches no image file")
        else:
            matches = []
            problems.append(f"{text!r}: no such file or folder")
        for match in matches:
            found.setdefault(match)
    if problems:
        raise FileNotFoundError("no images found for " + "; ".join(problems))
    return list(found)


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _read_umask() -> int:
    # mkstemp creates files 0600; outputs should get the usual permissions instead. umask can
    # only be read by setting it, so do it once at import rather than on every write.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _temp_path(path: Path) -> Path:
    # Same folder (so os.replace is an atomic rename, never a cross-device copy), hidden name
    # (so globs over the output folder skip it), the real suffix last (so writers that infer
    # the format from the name, like PIL's save, still do).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    with contextlib.suppress(OSError):  # fsync is best-effort (unsupported on some filesystems)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


@contextlib.contextmanager
def _replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` when the block ends normally,
    delete it when the block raises (an existing file at `path` is then left untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        yield tmp
        _commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` to write a temporary file, then move it to `path` in one step.

    The temporary file lives in the destination folder and ends with the same suffix as
    `path`, so `writer` may be e.g. `lambda p: image.save(p)` or
    `lambda p: torch.save(state, p)`. If `writer` raises, the temporary file is removed and an
    existing file at `path` is left untouched. Missing parent folders are created. Returns
    `path` as a Path.
    """
    with _replacing(path) as tmp:
        writer(tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` for writing, made atomic: the file appears under `path` only when the
    `with` block ends without an exception; otherwise nothing is left behind.

        with atomic_open("results.json", "w", encoding="utf-8") as f:
            json.dump(results, f)

    mode: "w", "wt" or "wb". Extra keyword arguments (encoding, newline...) go to `open`.
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_open only writes whole files (mode 'w', 'wt' or 'wb'), got {mode!r}")
    # the file is closed (flushed) before _replacing moves it into place
    with _replacing(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def write_json_atomic(obj: Any, path: str | os.PathLike, **dump_kwargs: Any) -> Path:
    """`json.dump(obj)` to `path` (UTF-8) through `atomic_open`, so a crash or a full disk never
    leaves a truncated file where a good one was. `dump_kwargs` go to `json.dump` (indent,
    default, separators...). Missing parent folders are created. Returns `path` as a Path."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, **dump_kwargs)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Kaggle run-length encoding


def encode_kaggle_rle(mask: np.ndarray | Tensor, *, mask_threshold: float = 0.5) -> str:
    """(H, W) mask -> Kaggle run-length string "start length start length ...".

    Pixels are numbered from 1, top to bottom, then left to right (column-major), as in
    Kaggle's Data Science Bowl 2018 and Airbus Ship Detection. An empty mask gives "". bool
    masks are taken as they are; other dtypes (0/1 or 0/255 integers, float probabilities)
    are binarized with `>= mask_threshold`. Tensors on any device and arrays are accepted.

        >>> encode_kaggle_rle(np.array([[0, 1], [1, 1]], dtype=bool))
        '2 3'
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.dtype != np.bool_:
        m = m >= mask_threshold  # `>=` as detectron2's paste does
    if m.ndim != 2:
        raise ValueError(f"encode_kaggle_rle takes one (H, W) mask, got shape {m.shape}")
    # pad with a background pixel at both ends so every run has a start and an end edge
    pixels = np.concatenate([[False], m.ravel(order="F"), [False]])
    edges = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1  # 1-based: run starts, then ends (exclusive)
    edges[1::2] -= edges[::2]  # ends -> lengths
    return " ".join(map(str, edges.tolist()))


def decode_kaggle_rle(rle: str | None, shape: tuple[int, int]) -> np.ndarray:
    """Kaggle run-length string -> bool (H, W) mask; the inverse of `encode_kaggle_rle`.

    "", None or NaN (an empty CSV cell read by pandas) give an empty mask. Raises DataError
    (a ValueError) for odd counts, non-integers, runs that start before pixel 1, have a length
    below 1, or end past pixel H * W.
    """
    height, width = (int(s) for s in shape)
    total = height * width
    if rle is None or (isinstance(rle, float) and math.isnan(rle)) or not str(rle).strip():
        return np.zeros((height, width), dtype=bool)
    try:
        numbers = np.array(str(rle).split(), dtype=np.int64)
    except ValueError:
        raise DataError(f"malformed RLE {str(rle)[:40]!r}: not all integers") from None
    if numbers.size % 2:
        raise DataError(f"malformed RLE {str(rle)[:40]!r}: odd number of values ({numbers.size})")
    starts, lengths = numbers[0::2] - 1, numbers[1::2]  # 0-based starts
    if (starts < 0).any() or (lengths < 1).any():
        raise DataError(f"malformed RLE {str(rle)[:40]!r}: starts must be >= 1 and lengths >= 1")
    ends = starts + lengths
    if ends.max() > total:
        raise DataError(f"RLE run ends at pixel {int(ends.max())}, beyond the {height}x{width} = {total} pixels")
    # +1 at each run start, -1 one past each end; the running sum is > 0 inside a run (also
    # when runs overlap or come unsorted)
    delta = np.bincount(starts, minlength=total + 1) - np.bincount(ends, minlength=total + 1)
    return (np.cumsum(delta[:total]) > 0).reshape((height, width), order="F")
