"""Shared pieces of the reference suite: torchvision's models and ours on the same weights."""
from __future__ import annotations

import functools

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision.models import detection as tv_detection  # noqa: E402

import maskrcnn  # noqa: E402
from maskrcnn.checkpoint.seeded import seeded_state_dict  # noqa: E402

from testing_utils import parity_keys  # noqa: E402

TV_BUILDERS = {"v1": tv_detection.maskrcnn_resnet50_fpn, "v2": tv_detection.maskrcnn_resnet50_fpn_v2}


@functools.lru_cache(maxsize=None)
def recipe_state_dict(variant: str) -> dict:
    """The parity fixtures' seeded weights (torchvision's key names)."""
    return seeded_state_dict(parity_keys(variant))


def torchvision_model(variant: str, **options) -> torch.nn.Module:
    """torchvision's own Mask R-CNN with the recipe weights, in eval mode."""
    model = TV_BUILDERS[variant](weights=None, weights_backbone=None, num_classes=91, **options)
    model.load_state_dict(recipe_state_dict(variant), strict=True)
    return model.eval()


def our_model(variant: str, **options) -> torch.nn.Module:
    """Ours on the same state dict. The recipe's v1 has BatchNorm2d statistics (eps 1e-5)."""
    return maskrcnn.from_torchvision(recipe_state_dict(variant), variant, **options).eval()
