"""`load_model("model.onnx")`: the same Predictor and Results as the eager weights; the second
variant (v2, masks pasted by the runtime); clear errors for what an exported graph cannot do."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from maskrcnn.inference.api import Predictor, load_model

from export_helpers import CATEGORY_IDS, CLASS_NAMES, assert_same_detections, make_image, make_small_model

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


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    """The small preset as v2 (conv box head, batch norm in the heads), exported without paste."""
    from maskrcnn.export import OnnxModel, export_onnx

    model = make_small_model("v2", seed=1)
    path = export_onnx(model, tmp_path_factory.mktemp("v2") / "small_v2.onnx")
    return model, OnnxModel(path, threads=2)


@pytest.mark.parametrize("sizes", [[(96, 128)], [(200, 90)], [(100, 150), (150, 77)]], ids=["landscape", "portrait", "batch"])
def test_v2_same_detections_as_eager(v2, sizes):
    model, onnx_model = v2
    assert not onnx_model.pasted and "masks" not in onnx_model.output_names
    images = [make_image(i + 40, h, w) for i, (h, w) in enumerate(sizes)]
    with torch.no_grad():
        refs = model(images, score_thresh=0.3).detections
    dets = onnx_model(images, score_thresh=0.3).detections  # masks pasted by the runtime
    for ref, det in zip(refs, dets):
        assert len(ref) > 0
        assert_same_detections(ref, det)


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
