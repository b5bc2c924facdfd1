"""torchvision state-dict names map onto our modules one to one (v1, v2, older releases, and
Faster R-CNN: the same without the mask branch), and the architecture facts are read from the
state dict."""
import pytest
import torch

from maskrcnn.checkpoint.torchvision import convert_state_dict, infer_config, torchvision_variant
from maskrcnn.modeling import ModelConfig, build_model
from testing_utils import parity_keys


def fake_state(variant: str) -> dict:
    # shapes only: a 0-stride view per key costs no memory
    return {k: torch.zeros(()).expand(shape) if shape else torch.zeros((), dtype=torch.int64)
            for k, shape, _ in parity_keys(variant)}


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_every_torchvision_key_has_a_home(variant):
    state = fake_state(variant)
    ours = build_model(ModelConfig(variant=variant)).state_dict()
    converted = convert_state_dict(state)
    body_counters = {k for k in converted if k.startswith("backbone.body.") and k.endswith("num_batches_tracked")}
    assert set(converted) - body_counters == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)


def test_older_torchvision_names_are_accepted():
    old = {
        "backbone.fpn.inner_blocks.2.weight": "backbone.fpn.lateral.2.conv.weight",
        "backbone.fpn.layer_blocks.0.bias": "backbone.fpn.output.0.conv.bias",
        "rpn.head.conv.weight": "rpn.head.conv.0.conv.weight",
        "roi_heads.mask_head.mask_fcn1.weight": "roi_heads.mask_head.convs.0.conv.weight",
        "roi_heads.mask_head.mask_fcn4.bias": "roi_heads.mask_head.convs.3.conv.bias",
    }
    converted = convert_state_dict({k: torch.zeros(1) for k in old})
    assert set(converted) == set(old.values())


def test_architecture_is_read_from_the_state_dict():
    v1 = fake_state("v1")
    assert infer_config(v1, "v1") == {"variant": "v1", "mask_on": True, "depth": 50, "num_classes": 91, "norm_eps": 1e-5}
    # published v1 weights come from FrozenBatchNorm2d models: no step counters, eps 0.0
    frozen = {k: v for k, v in v1.items() if not k.endswith("num_batches_tracked")}
    assert infer_config(frozen, "v1")["norm_eps"] == 0.0
    assert infer_config(fake_state("v2"), "v2")["norm_eps"] == 1e-5
    with pytest.raises(ValueError, match="has the v2 layout but variant='v1'"):
        infer_config(fake_state("v2"), "v1")
    with pytest.raises(ValueError, match="not a torchvision Mask R-CNN"):
        infer_config({"backbone.body.conv1.weight": torch.zeros(1)}, "v1")


def without_mask_branch(state: dict) -> dict:
    """fasterrcnn_resnet50_fpn(_v2)'s keys: maskrcnn_resnet50_fpn(_v2)'s without roi_heads.mask_*."""
    return {k: v for k, v in state.items() if not k.startswith("roi_heads.mask_")}


@pytest.mark.parametrize("variant, layout", [("faster", "v1"), ("faster_v2", "v2")])
def test_faster_rcnn_keys_have_a_home_and_its_variant_is_read(variant, layout):
    state = without_mask_branch(fake_state(layout))
    assert torchvision_variant(state) == variant and torchvision_variant(fake_state(layout)) == layout
    config = infer_config(state, variant)
    assert config["variant"] == layout and config["mask_on"] is False
    ours = build_model(ModelConfig(variant=layout, mask_on=False)).state_dict()
    converted = convert_state_dict(state)
    body_counters = {k for k in converted if k.startswith("backbone.body.") and k.endswith("num_batches_tracked")}
    assert set(converted) - body_counters == set(ours)
    with pytest.raises(ValueError, match=f"has no mask branch .*variant='{variant}'"):
        infer_config(state, layout)
    with pytest.raises(ValueError, match=f"has a mask branch .*variant='{layout}'"):
        infer_config(fake_state(layout), variant)
