"""`load_model("model.onnx")`: the same Predictor and Results as the eager weights; clear errors
for what an exported graph cannot do. (v2 and the runtime's paste: test_trained_roundtrip.py.)"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from maskrcnn.inference.api import Predictor, load_model

from export_helpers import CATEGORY_IDS, CLASS_NAMES, make_image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_predictor_results_as_eager(small_model, small_onnx):
    eager = Predictor(small_model, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS)
    onnx_predictor = load_model(small_onnx)
    assert onnx_predictor.class_names == CLASS_NAMES and onnx_predictor.category_ids == CATEGORY_IDS
    images = [(make_image(20 + i, h, w).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
              for i, (h, w) in enumerate([(96, 128), (130, 100), (96, 128)])]
    expected = eager.predict(images, score_threshold=0.4)
    results = onnx_predictor.predict(images, score_threshold=0.4)
    for ref, res in zip(expected, results):
        assert len(res) == len(ref) > 0
        assert res.class_names == ref.class_names and res.image_size == ref.image_size
        torch.testing.assert_close(res.boxes, ref.boxes, atol=1e-2, rtol=0)
        torch.testing.assert_close(res.scores, ref.scores, atol=1e-4, rtol=0)
        assert res.masks.dtype == torch.bool
        # bool masks: only a pixel whose probability is a rounding away from 0.5 may differ
        assert (res.masks != ref.masks).float().mean() < 1e-3
        assert [d["category_id"] for d in res.to_coco(1)] == [d["category_id"] for d in ref.to_coco(1)]
        assert res.label_map.shape == ref.label_map.shape
        assert res.draw().size == ref.draw().size
    assert "classes=3" in repr(onnx_predictor)


def test_errors_say_what_to_do(small_onnx, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="min_size cannot change in an exported graph"):
        load_model(small_onnx, min_size=300)
    with pytest.raises(ValueError, match="not v2"):
        load_model(small_onnx, variant="v2")
    with pytest.raises(ValueError, match="on the CPU"):
        load_model(small_onnx, device="cuda")
    predictor = load_model(small_onnx, box_score_thresh=0.6)
    assert predictor.model.score_thresh == 0.6
    # an ONNX file that is not ours
    import onnx
    from onnx import TensorProto, helper

    other = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    onnx.save(other, tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="not a Mask R-CNN graph"):
        load_model(tmp_path / "other.onnx")


def test_missing_onnxruntime_is_explained(small_onnx, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match=r'pip install -e "\.\[onnx\]"'):
        load_model(small_onnx)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    from maskrcnn.cli import main

    assert main(["export", "--weights", "w.safetensors", "--out", "m.onnx"]) == 2
    assert 'pip install -e ".[onnx]"' in capsys.readouterr().err
