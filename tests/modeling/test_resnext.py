"""ResNeXt backbones (grouped 3x3 convolutions) in our ResNet, and torchvision's ImageNet
ResNeXt weights loading into them by name."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from maskrcnn.engine.checkpointer import load_initial_weights
from maskrcnn.modeling import ModelConfig, build_model
from maskrcnn.modeling.backbone.resnet import Bottleneck, ResNet
from maskrcnn.modeling.build import PRESETS
from maskrcnn.modeling.layers import batch_norm

# torchvision 0.29's resnext50_32x4d() state dict: names and shapes (written by the reference venv)
IMAGENET_KEYS = Path(__file__).parents[1] / "checkpoint" / "resnext50_32x4d_imagenet_keys.json"
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def trunk_parameter_count(body: ResNet) -> int:
    """Conv weights and norm affines (frozen norms keep theirs as buffers): what torchvision
    counts as parameters, less its classifier."""
    return sum(v.numel() for k, v in body.state_dict().items() if not k.endswith(STATISTICS))


@pytest.mark.parametrize("depth, groups, width, torchvision_params", [
    (50, 1, 64, 25_557_032),    # resnet50
    (50, 32, 4, 25_028_904),    # resnext50_32x4d
    (101, 32, 8, 88_791_336),   # resnext101_32x8d
])
def test_trunk_sizes_are_torchvision_classifiers_less_the_fc(depth, groups, width, torchvision_params):
    body = ResNet(depth=depth, groups=groups, width_per_group=width, frozen_blocks=0)
    assert trunk_parameter_count(body) == torchvision_params - (2048 * 1000 + 1000)


def test_grouped_bottleneck_matches_a_group_by_group_reference():
    """conv2 of a 4-group bottleneck = four separate convolutions on consecutive channel
    slices, concatenated (the grouping torchvision's weights assume)."""
    torch.manual_seed(0)
    block = Bottleneck(16, 8, 1, batch_norm(), groups=4, width_per_group=8).eval()  # inner width 8 * 8/64 * 4 = 4
    assert block.conv2.weight.shape == (4, 1, 3, 3)
    block = Bottleneck(16, 16, 1, batch_norm(), groups=4, width_per_group=16).eval()  # inner 16
    x = torch.randn(2, 16, 9, 9)
    w = block.conv2.weight  # (16, 4, 3, 3)
    slow = torch.cat([F.conv2d(x[:, 4 * g:4 * g + 4], w[4 * g:4 * g + 4], padding=1) for g in range(4)], dim=1)
    torch.testing.assert_close(block.conv2(x), slow, rtol=1e-5, atol=1e-5)


def test_torchvision_imagenet_resnext50_keys_load_into_the_backbone(tmp_path):
    """Every tensor of torchvision's ImageNet resnext50_32x4d but the classifier loads into
    maskrcnn_resnext50_32x4d_fpn's backbone (same names, same shapes)."""
    keys = json.loads(IMAGENET_KEYS.read_text())
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) if shape else torch.tensor(0) for k, shape in keys}
    path = tmp_path / "resnext50_32x4d-imagenet.pth"
    torch.save(state, path)
    model = build_model(ModelConfig.from_dict({**PRESETS["maskrcnn_resnext50_32x4d_fpn"], "min_size": 64}))
    report = load_initial_weights(model, path)
    body = model.backbone.body.state_dict()
    expected = [k for k, _ in keys if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert sorted(expected) == sorted(body)  # nothing left over on either side
    assert all(torch.equal(body[k], state[k]) for k in expected)
    assert f"loaded {len(expected)} tensors" in report


def test_resnext_needs_a_bottleneck_resnet():
    with pytest.raises(ValueError, match="ResNeXt.*bottleneck ResNets"):
        build_model(ModelConfig.from_dict({"depth": 18, "groups": 32, "width_per_group": 4}))
