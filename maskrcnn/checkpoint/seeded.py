"""Deterministic, name-seeded weights: every tensor is a function of its key and shape only.

This is the recipe of the torchvision parity fixtures (tests/fixtures/torchvision_parity/
README.md), so a state dict with torchvision's keys can be rebuilt bit for bit without a
download, for tests and benchmarks.
"""
from __future__ import annotations

import math
import zlib

import torch
from torch import Tensor

OUTPUT_LAYER_SUFFIXES = ("cls_logits.weight", "bbox_pred.weight", "cls_score.weight", "mask_fcn_logits.weight")


def seeded_tensor(key: str, shape: list[int], dtype: str = "float32", output_gain: float = 0.1) -> Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if dtype != "float32":
        raise ValueError(f"{key}: the recipe defines float32 tensors only, got {dtype}")
    g = torch.Generator()
    g.manual_seed(zlib.crc32(key.encode("utf-8")))
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    randn = torch.randn(shape, generator=g)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        std = math.sqrt(2.0 / fan_in)
        if key.endswith(OUTPUT_LAYER_SUFFIXES):
            std = output_gain * std
        return randn * std
    if key.endswith("weight"):
        return 0.2 + 0.05 * randn if key.endswith("bn3.weight") else 1.0 + 0.1 * randn
    raise AssertionError("biases are handled by seeded_state_dict")


def seeded_state_dict(keys: list[tuple[str, list[int], str]]) -> dict[str, Tensor]:
    """keys: [key, shape, dtype] entries, as in the fixtures' *_keys.json."""
    shapes = {k: s for k, s, _ in keys}
    state = {}
    for key, shape, dtype in keys:
        if key.endswith("bias") and not key.endswith("num_batches_tracked"):
            g = torch.Generator()
            g.manual_seed(zlib.crc32(key.encode("utf-8")))
            sibling = shapes.get(key[: -len("bias")] + "weight")
            # a norm layer's shift (its weight is 1-D) vs a conv/linear bias
            scale = 0.1 if sibling is not None and len(sibling) == 1 else 0.01
            state[key] = scale * torch.randn(shape, generator=g)
        else:
            state[key] = seeded_tensor(key, shape, dtype)
    return state
