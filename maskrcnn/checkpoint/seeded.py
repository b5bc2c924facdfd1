"""Deterministic, name-seeded weights: every tensor is a function of its key and shape only.

This is the recipe of the parity fixtures (tests/fixtures/torchvision_parity/README.md and
tests/fixtures/detectron2_parity/README.md), so a state dict with torchvision's or Detectron2's
keys can be rebuilt bit for bit without a download, for tests and benchmarks. The two differ only
in the name lists (`TORCHVISION_RECIPE`, `DETECTRON2_RECIPE`).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Recipe:
    output_layer_suffixes: tuple[str, ...]  # prediction layers: std scaled by output_gain
    last_norm_suffixes: tuple[str, ...]  # a bottleneck's last norm scale: 0.2 + 0.05 * randn
    input_layer_suffixes: tuple[str, ...] = ()  # the stem conv: std scaled by input_gain
    output_gain: float = 0.1
    input_gain: float = 1.0


TORCHVISION_RECIPE = Recipe(
    output_layer_suffixes=("cls_logits.weight", "bbox_pred.weight", "cls_score.weight", "mask_fcn_logits.weight"),
    last_norm_suffixes=("bn3.weight",),
)
# The stem gain 1/64 mirrors the pixel std that MSRA weights fold into the stem (input 0..255).
DETECTRON2_RECIPE = Recipe(
    output_layer_suffixes=("rpn_head.objectness_logits.weight", "rpn_head.anchor_deltas.weight",
                           "box_predictor.cls_score.weight", "box_predictor.bbox_pred.weight",
                           "mask_head.predictor.weight"),
    last_norm_suffixes=("conv3.norm.weight",),
    input_layer_suffixes=("stem.conv1.weight",),
    input_gain=1 / 64,
)
OUTPUT_LAYER_SUFFIXES = TORCHVISION_RECIPE.output_layer_suffixes


def _generator(key: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(zlib.crc32(key.encode("utf-8")))
    return g


def seeded_tensor(key: str, shape: list[int], dtype: str = "float32", output_gain: float | None = None,
                  recipe: Recipe = TORCHVISION_RECIPE) -> Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if dtype != "float32":
        raise ValueError(f"{key}: the recipe defines float32 tensors only, got {dtype}")
    g = _generator(key)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    randn = torch.randn(shape, generator=g)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        std = math.sqrt(2.0 / fan_in)
        if key.endswith(recipe.output_layer_suffixes):
            std = (recipe.output_gain if output_gain is None else output_gain) * std
        elif key.endswith(recipe.input_layer_suffixes):
            std = std * recipe.input_gain
        return randn * std
    if key.endswith("weight"):
        return 0.2 + 0.05 * randn if key.endswith(recipe.last_norm_suffixes) else 1.0 + 0.1 * randn
    raise AssertionError("biases are handled by seeded_state_dict")


def seeded_state_dict(keys: list[tuple[str, list[int], str]], recipe: Recipe = TORCHVISION_RECIPE) -> dict[str, Tensor]:
    """keys: [key, shape, dtype] entries, as in the fixtures' *keys.json."""
    shapes = {k: s for k, s, _ in keys}
    state = {}
    for key, shape, dtype in keys:
        if key.endswith("bias") and not key.endswith("num_batches_tracked"):
            g = _generator(key)
            sibling = shapes.get(key[: -len("bias")] + "weight")
            # a norm layer's shift (its weight is 1-D) vs a conv/linear bias
            scale = 0.1 if sibling is not None and len(sibling) == 1 else 0.01
            state[key] = scale * torch.randn(shape, generator=g)
        else:
            state[key] = seeded_tensor(key, shape, dtype, recipe=recipe)
    return state
