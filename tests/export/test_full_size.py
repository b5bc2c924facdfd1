"""Full size: torchvision's maskrcnn_resnet50_fpn (the parity fixtures' recipe weights) exported
and run by ONNX Runtime on coffee.png (800 x 1200 after the resize, 91 classes, 1000
proposals) gives the eager model's detections."""
from __future__ import annotations

import pytest
import torch

import maskrcnn
from maskrcnn.checkpoint.seeded import seeded_state_dict

from export_helpers import assert_same_detections
from testing_utils import load_coffee, need_export, parity_keys

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
need_export()


def test_resnet50_fpn_on_coffee(tmp_path):
    from maskrcnn.export import OnnxModel, export_onnx

    model = maskrcnn.from_torchvision(seeded_state_dict(parity_keys("v1")), "v1", box_score_thresh=0.34).eval()
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "r50.onnx"), threads=2)
    image = load_coffee()
    with torch.no_grad():
        [ref] = model([image]).detections
    [det] = onnx_model([image]).detections  # the graph's default threshold: the model's 0.34
    assert len(ref) > 10
    assert_same_detections(ref, det)
