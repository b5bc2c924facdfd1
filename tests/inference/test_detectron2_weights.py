"""A Detectron2 model zoo .pkl through every command: predict, eval's loading, model.weights."""
from __future__ import annotations

import contextlib
import io
import json
import pickle
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn.cli import main as cli_main
from maskrcnn.engine.checkpointer import load_initial_weights
from maskrcnn.evaluation.evaluate import label_mapping, load_model_for_eval
from maskrcnn.inference.hub import COCO_CATEGORY_NAMES
from maskrcnn.modeling.build import DETECTRON2_OPTIONS, ModelConfig, build_model

from testing_utils import FIXTURES, SMALL_DETECTRON2, small_detectron2_state_dict

SCORE = 0.2  # the seeded small model's best scores are about 0.3
# Detectron2's class index i is the i-th COCO category in id order
COCO_IDS = [cid for cid, name in enumerate(COCO_CATEGORY_NAMES) if cid > 0 and name != "N/A"]


@pytest.fixture(scope="module")
def zoo_pkl(tmp_path_factory):
    """A narrow R-50-FPN in the model zoo's .pkl layout (numpy arrays under "model")."""
    path = tmp_path_factory.mktemp("d2") / "model_final.pkl"
    arrays = {k: v.numpy() for k, v in small_detectron2_state_dict().items()}
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo",
                                   "matching_heuristics": True}, protocol=2))
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.open(FIXTURES / "detectron2_parity" / "coffee.png").convert("RGB").resize((150, 100)).save(path)
    return path


def test_predict_cli_end_to_end(zoo_pkl, photo, tmp_path):
    """`maskrcnn predict --weights model_final.pkl` writes COCO results whose category ids are
    COCO's, matching the Python API on the same file."""
    out = tmp_path / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli_main(["predict", str(photo), "--weights", str(zoo_pkl), "--out", str(out),
                         "--score-threshold", str(SCORE), "-q"])
    assert code == 0, stderr.getvalue()
    results = json.loads((out / "results.json").read_text())
    assert (out / "overlays" / "coffee.png").is_file()

    predictor = maskrcnn.load_model(zoo_pkl)
    assert predictor.model.first_label == 0 and predictor.class_names[0] == "person"
    [result] = predictor.predict(photo, score_threshold=SCORE)
    assert len(result) == len(results) > 0
    assert [e["category_id"] for e in results] == [COCO_IDS[int(l)] for l in result.labels]
    assert result.class_names == [COCO_CATEGORY_NAMES[COCO_IDS[int(l)]] for l in result.labels]
    assert result.masks.shape == (len(result), 100, 150)


def test_eval_loads_it_and_maps_the_class_index(zoo_pkl):
    model = load_model_for_eval(zoo_pkl, torch.device("cpu"))
    assert model.config.stride_in_1x1 and model.first_label == 0
    names = [n for n in COCO_CATEGORY_NAMES[1:] if n != "N/A"]
    coco = SimpleNamespace(num_classes=80, class_names=names, category_ids=COCO_IDS, annotation_file="val.json",
                           label_to_category_id={i + 1: cid for i, cid in enumerate(COCO_IDS)})
    model.class_names = names
    assert label_mapping(model, coco) == {i: cid for i, cid in enumerate(COCO_IDS)}


def test_training_starts_from_it_with_a_detectron2_preset_only(zoo_pkl):
    """model.weights=model_final.pkl: every tensor loads into the Detectron2 preset (new classes
    would skip the predictors); a torchvision preset is refused, its strides sit elsewhere."""
    d2 = build_model(ModelConfig.from_dict({**DETECTRON2_OPTIONS, **SMALL_DETECTRON2, "first_label": 1}))
    report = load_initial_weights(d2, zoo_pkl)
    assert "0 of the model's stay freshly initialized" in report
    tv = build_model(ModelConfig.from_dict({**SMALL_DETECTRON2, "num_classes": 81}))
    with pytest.raises(ValueError, match="model.preset=detectron2_mask_rcnn_R_50_FPN"):
        load_initial_weights(tv, zoo_pkl)


def test_onnx_export_refuses_detectron2_arithmetic():
    """The exported graph implements torchvision's resize, anchors and paste only: exporting a
    Detectron2 model is refused by option name rather than computing something else."""
    from maskrcnn.export.onnx import _refuse_detectron2_options

    model = build_model(ModelConfig.from_dict({**DETECTRON2_OPTIONS, **SMALL_DETECTRON2}))
    with pytest.raises(NotImplementedError, match="resize='detectron2'.*mask_paste='detectron2'"):
        _refuse_detectron2_options(model)
    _refuse_detectron2_options(build_model(ModelConfig.from_dict(SMALL_DETECTRON2)))  # torchvision's: fine
