"""Reduced precision (`MaskRCNN.precision = "bf16"`): convolutions and matrix products in
bfloat16 under CPU autocast, everything numerically sensitive in float32.

What is checked here is the dtype policy and that it is the one the model runs: RoIAlign samples
bfloat16 features in float32 (a bfloat16 grid coordinate on a 200-cell map is off by up to a
cell), head outputs leave bfloat16 before box decoding, NMS and the paste, and a pooler whose
levels are partly empty no longer mixes dtypes (the crash under autocast). How close bf16
detections are to fp32 ones on trained weights is measured by benchmarks/precision.py.
"""
from __future__ import annotations

import pytest
import torch

from maskrcnn.modeling.layers import full_precision
from maskrcnn.ops.poolers import MultiScaleRoIAlign
from maskrcnn.ops.roi_align import roi_align

from inference.inference_helpers import make_image, make_tiny_model


def test_full_precision_raises_reduced_types_only():
    assert full_precision(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert full_precision(torch.ones(2, dtype=torch.float16)).dtype == torch.float32
    assert full_precision(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
    x = torch.ones(2)
    assert full_precision(x) is x


def test_roi_align_samples_bf16_features_in_float32():
    torch.manual_seed(0)
    features = torch.randn(1, 4, 200, 200).to(torch.bfloat16)
    # a box edge at a position a bfloat16 grid coordinate cannot hold (199.3 / 199 * 2 - 1)
    rois = torch.tensor([[0.0, 10.25, 150.6, 199.3, 199.7], [0.0, 3.0, 3.0, 9.5, 40.25]])
    out = roi_align(features, rois, 7, spatial_scale=1.0, sampling_ratio=2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, roi_align(features.float(), rois, 7, 1.0, 2), rtol=0, atol=0)
    empty = roi_align(features, rois[:0], 7)
    assert empty.dtype == torch.float32 and empty.shape == (0, 4, 7, 7)


def test_pooler_with_an_empty_level_under_bf16_autocast():
    """Small boxes only: levels P3..P5 get no RoI. Under autocast this used to fail in
    restore_order (float32 parts from sampled levels, bfloat16 zeros from empty ones)."""
    torch.manual_seed(0)
    pooler = MultiScaleRoIAlign(strides=[4, 8, 16, 32], output_size=7, sampling_ratio=2)
    features = [torch.randn(2, 8, 64 // s * 4, 64 // s * 4, dtype=torch.bfloat16) for s in (4, 8, 16, 32)]
    boxes = [torch.tensor([[1.0, 2.0, 20.0, 30.0]]), torch.tensor([[5.0, 5.0, 15.0, 12.0], [0.0, 0.0, 8.0, 8.0]])]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = pooler(features, boxes)
    assert pooled.dtype == torch.float32 and pooled.shape == (3, 8, 7, 7)
    expected = pooler([f.float() for f in features], boxes)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def _image():
    return torch.from_numpy(make_image(3, 160, 224)).permute(2, 0, 1).float() / 255


def test_bf16_model_runs_convolutions_in_bf16_and_decodes_in_float32():
    model = make_tiny_model()
    model.precision = "bf16"
    seen = {}

    def record(name):
        def hook(_module, _inputs, output):
            while isinstance(output, (tuple, list)):  # the RPN head gives per-level lists
                output = output[0]
            seen[name] = output.dtype
        return hook

    model.backbone.body.layer1.register_forward_hook(record("layer1"))
    model.roi_heads.mask_head.register_forward_hook(record("mask_head"))
    model.roi_heads.box_predictor.register_forward_hook(record("box_predictor"))
    model.rpn.head.register_forward_hook(record("rpn_head"))
    with torch.no_grad():
        det = model([_image()]).detections[0]
    assert seen["layer1"] == torch.bfloat16 and seen["mask_head"] == torch.bfloat16
    assert seen["rpn_head"] == torch.bfloat16  # per-level maps; flattened to float32 before decoding
    assert seen["box_predictor"] == torch.float32
    assert len(det) > 0
    assert det.boxes.dtype == det.scores.dtype == det.masks.dtype == torch.float32
    # autocast stays inside the call
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_second_stage_is_close_to_fp32_on_the_same_inputs():
    """Same features and proposals in, box and mask heads in bf16 vs fp32: float32 outputs that
    agree to bfloat16's resolution (detections themselves may reorder where scores nearly tie)."""
    model = make_tiny_model()
    heads = model.roi_heads

    def second_stage(features, proposals):
        logits, deltas = heads.box_predictor(heads.box_head(heads.box_pooler(features, proposals)))
        labels = logits[:, 1:].argmax(1) + 1
        return logits, deltas, heads.mask_logits(features, proposals, labels)

    with torch.no_grad():
        batch, _ = model.preprocess([_image()])
        features, proposals, _ = model.propose(batch)
        expected = second_stage(features, proposals)
        model.precision = "bf16"
        with model.autocast(batch.tensor.device):
            got = second_stage(features, proposals)
    for name, a, b in zip(("class logits", "box deltas", "mask logits"), expected, got):
        assert b.dtype == torch.float32, name
        scale = a.abs().max().item()
        assert scale > 0, name
        # bfloat16 keeps 8 significant bits (relative step 2**-8); a few layers compound it
        assert (b - a).abs().max().item() <= 0.03 * scale, name


def test_unknown_precision_is_refused_by_name():
    model = make_tiny_model()
    model.precision = "int8"
    with pytest.raises(ValueError, match="precision must be one of .*'bf16'.*'int8'"):
        model([_image()])
