"""Keypoint AP (OKS) settings for pycocotools' COCOeval.

OKS (object keypoint similarity) = mean over labelled keypoints of exp(-d^2 / (2 s^2 k^2)), d the
distance to the gt keypoint, s^2 the gt's area, k = 2 * sigma the keypoint's falloff. COCO's
person sigmas were measured from annotator disagreement per body part; other keypoint sets have
no published ones, so they get the mean of COCO's (one falloff for every keypoint), unless
given.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# pycocotools' COCOeval Params.kpt_oks_sigmas for the 17 COCO person keypoints
COCO_PERSON_SIGMAS = (np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
                                1.07, 1.07, .87, .87, .89, .89]) / 10.0)
DEFAULT_SIGMA = float(COCO_PERSON_SIGMAS.mean())  # 0.0630


def keypoint_sigmas(num_keypoints: int, sigmas: Sequence[float] | None = None) -> np.ndarray:
    """Per-keypoint OKS sigmas: the given ones, COCO's for 17 keypoints, else DEFAULT_SIGMA."""
    if sigmas is not None:
        if len(sigmas) != num_keypoints:
            raise ValueError(f"got {len(sigmas)} keypoint sigmas for {num_keypoints} keypoints")
        return np.asarray(sigmas, dtype=np.float64)
    if num_keypoints == len(COCO_PERSON_SIGMAS):
        return COCO_PERSON_SIGMAS.copy()
    return np.full(num_keypoints, DEFAULT_SIGMA)
