"""Kaggle's run-length masks ("start length ..." over the column-major pixels, 1-based), read by
the CSV converter and written by the prediction CSV."""
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
