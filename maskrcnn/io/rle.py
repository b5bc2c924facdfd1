"""Kaggle's run-length masks ("start length ..." over the column-major pixels, 1-based), read by
the CSV converter and written by the prediction CSV; and a checker for COCO's RLE, so that a
truncated or inconsistent one is refused before pycocotools decodes it into garbage."""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from .images import DataError


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


# ---------------------------------------------------------------------------------------------
# COCO's compressed RLE, checked before pycocotools sees it


def coco_rle_counts(counts: str | bytes) -> list[int]:
    """pycocotools' compressed RLE string -> its run lengths (background first, alternating).

    The format (pycocotools' rleToString): each run is a little-endian sequence of 5-bit
    groups stored as characters chr(48 + group), bit 0x20 meaning "another group follows" and
    bit 0x10 of the last group the sign; from the fourth run on, the value stored is the
    difference to the run two before. pycocotools itself reads past the end of a string whose
    last run is unfinished, and turns negative runs into huge unsigned ones; both give masks of
    uninitialised memory, so this decoder raises DataError instead, saying what is wrong.
    """
    if isinstance(counts, str):
        try:
            data = counts.encode("ascii")
        except UnicodeEncodeError:
            raise DataError(f"compressed RLE counts {counts[:40]!r} hold non-ASCII characters") from None
    else:
        data = bytes(counts)
    runs: list[int] = []
    value = groups = 0
    for position, byte in enumerate(data):
        c = byte - 48
        if not 0 <= c < 64:
            raise DataError(f"compressed RLE counts: character {chr(byte)!r} at position {position} is "
                            "not an RLE digit ('0' to 'o')")
        value |= (c & 0x1F) << (5 * groups)
        groups += 1
        if c & 0x20:
            continue  # more groups of this run follow
        if c & 0x10:
            value |= -1 << (5 * groups)  # negative: sign-extend
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise DataError(f"compressed RLE counts: run {len(runs)} has the negative length {value}")
        runs.append(value)
        value = groups = 0
    if groups:
        raise DataError(f"compressed RLE counts {data[:40].decode('ascii')!r} are truncated: the last run "
                        "is unfinished")
    return runs


def check_coco_rle(rle: object, height: int, width: int) -> str | None:
    """What is wrong with a COCO RLE segmentation {"size": [H, W], "counts": ...} for an H x W
    image, or None: the size must match and the runs (compressed string, or uncompressed list of
    non-negative integers) must add up to exactly H * W pixels, or pycocotools would read or
    write past the mask."""
    if not isinstance(rle, dict):
        return f"RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}"
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and list(size) == [height, width]):
        return f"RLE size {size!r} differs from the image size [{height}, {width}]"
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
        runs = counts
        kind = "uncompressed"
    elif isinstance(counts, (str, bytes)):
        try:
            runs = coco_rle_counts(counts)
        except DataError as e:
            return str(e)
        kind = "compressed"
    else:
        return "RLE 'counts' must be a list (uncompressed) or a string (compressed)"
    total = sum(runs)
    if total != height * width:
        return (f"{kind} RLE runs add up to {total} pixels, but the {height}x{width} image has "
                f"{height * width}")
    return None
