"""The faster-coco-eval backend gives pycocotools' numbers: bbox, segm and keypoint AP (every
metric, every class, the whole precision array) on the synthetic shapes data, with detections
made from the ground truth by shifting masks, swapping classes, moving keypoints and adding
false positives. Skipped without the package (the [faster-eval] extra)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from maskrcnn.data import generate_shapes_dataset
from maskrcnn.data.keypoint_shapes import generate_keypoint_shapes_dataset
from maskrcnn.evaluation import METRICS, COCOEvaluator
from maskrcnn.evaluation.coco_evaluator import evaluate_results, load_coco_gt
from testing_utils import coco_results_near

pytest.importorskip("faster_coco_eval")


def assert_same(gt, results, iou_type):
    precision = {}
    numbers = {b: evaluate_results(gt, results, iou_type, precision_out=precision.setdefault(b, {}), backend=b)
               for b in ("pycocotools", "faster-coco-eval")}
    ours, theirs = numbers["pycocotools"], numbers["faster-coco-eval"]
    assert 0.1 < ours["AP"] < 0.9  # neither trivial nor perfect: the comparison can tell them apart
    for metric in METRICS:
        assert theirs[metric] == pytest.approx(ours[metric], abs=1e-6), (iou_type, metric)
    assert theirs["per_class"] == pytest.approx(ours["per_class"], abs=1e-6)
    np.testing.assert_allclose(precision["faster-coco-eval"][iou_type], precision["pycocotools"][iou_type],
                               atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    # large images so objects of all three COCO sizes occur (small < 32^2 <= medium < 96^2 <= large)
    return load_coco_gt(generate_shapes_dataset(root, 16, image_size=(192, 192), size_range=(8.0, 150.0),
                                                max_shapes=5, seed=3))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_boxes_and_masks_as_pycocotools(shapes, iou_type):
    results = coco_results_near(shapes, seed=0)
    assert_same(shapes, results, iou_type)
    # and on a subset of the images, as one process of a distributed evaluation passes them
    subset = [i for i in shapes.getImgIds() if i % 2]
    mine = [r for r in results if r["image_id"] in subset]
    a = evaluate_results(shapes, mine, iou_type, subset)
    b = evaluate_results(shapes, mine, iou_type, subset, backend="faster-coco-eval")
    assert [b[m] for m in METRICS] == pytest.approx([a[m] for m in METRICS], abs=1e-6)


def test_keypoints_as_pycocotools(tmp_path):
    gt = load_coco_gt(generate_keypoint_shapes_dataset(tmp_path, 16, image_size=(160, 160), seed=1))
    assert_same(gt, coco_results_near(gt, seed=1), "keypoints")


def test_the_evaluator_takes_the_backend(shapes):
    with pytest.raises(ValueError, match="unknown evaluation backend 'fast'; use 'pycocotools' or 'faster-coco-eval'"):
        COCOEvaluator(shapes, backend="fast")
    results = coco_results_near(shapes, seed=2)
    numbers = {}
    for backend in ("pycocotools", "faster-coco-eval"):
        evaluator = COCOEvaluator(shapes, backend=backend)
        evaluator._results, evaluator._image_ids = results, set(shapes.getImgIds())
        numbers[backend] = evaluator.evaluate()
    for t in ("bbox", "segm"):
        ours, theirs = numbers["pycocotools"][t], numbers["faster-coco-eval"][t]
        assert [theirs[m] for m in METRICS] == pytest.approx([ours[m] for m in METRICS], abs=1e-6)
        assert theirs["per_class"] == pytest.approx(ours["per_class"], abs=1e-6)


def test_eval_cli_backend_prints_the_same_numbers(tmp_path, capsys):
    from maskrcnn import build_preset
    from maskrcnn.checkpoint import save_model
    from maskrcnn.evaluation.evaluate import main

    data = generate_shapes_dataset(tmp_path / "data", 3, seed=3, image_size=(64, 64), size_range=(12.0, 30.0))
    model = build_preset("maskrcnn_resnet18_small", num_classes=4, class_names=["circle", "square", "triangle"],
                         min_size=64, max_size=64, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
                         box_detections_per_img=10, box_score_thresh=0.0)
    weights = save_model(model, tmp_path / "m.safetensors")
    metrics = {}
    for backend in ("pycocotools", "faster-coco-eval"):
        out = tmp_path / backend
        assert main(["--weights", str(weights), "--data", str(data), "--images", str(data.parent / "images"),
                     "--device", "cpu", "--workers", "0", "--output", str(out), "--backend", backend]) == 0
        metrics[backend] = json.loads((out / "metrics.json").read_text())
        tables = capsys.readouterr().out.splitlines()[1:]  # after the timing line
    for t in ("bbox", "segm"):
        ours, theirs = metrics["pycocotools"][t], metrics["faster-coco-eval"][t]
        assert [theirs[m] for m in METRICS] == pytest.approx([ours[m] for m in METRICS], abs=1e-6)
    assert any(line.startswith("segm") for line in tables)
