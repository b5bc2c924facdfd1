"""`maskrcnn eval` end to end with a small untrained model (the numbers are not the point here;
test_coco_evaluator.py checks them against pycocotools)."""
import json

import pytest

from maskrcnn import build_preset
from maskrcnn.checkpoint import save_model
from maskrcnn.data import generate_shapes_dataset
from maskrcnn.evaluation.evaluate import main


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_shapes")
    return generate_shapes_dataset(root, 4, seed=3, image_size=(64, 64), size_range=(12.0, 30.0))


def small_model(num_classes, names=None):
    return build_preset("maskrcnn_resnet18_small", num_classes=num_classes, class_names=names,
                        min_size=64, max_size=64, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
                        box_detections_per_img=10, box_score_thresh=0.0)


def test_eval_prints_both_tables_and_writes_results(shapes, tmp_path, capsys):
    weights = save_model(small_model(4, ["circle", "square", "triangle"]), tmp_path / "m.safetensors")
    code = main(["--weights", str(weights), "--data", str(shapes), "--images", str(shapes.parent / "images"),
                 "--device", "cpu", "--workers", "0", "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if "AP50" in line)
    assert header.split() == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert any(line.startswith("bbox") for line in out.splitlines())
    assert any(line.startswith("segm") for line in out.splitlines())
    for name in ("circle", "square", "triangle"):
        assert any(line.startswith(name) for line in out.splitlines())
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
    results = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in results} <= {1, 3, 7}  # the shapes' category ids, not labels


def test_eval_rejects_a_model_for_other_classes(shapes, tmp_path, capsys):
    weights = save_model(small_model(6), tmp_path / "m.safetensors")
    code = main(["--weights", str(weights), "--data", str(shapes), "--images", str(shapes.parent / "images"),
                 "--device", "cpu"])
    assert code == 2
    assert "predicts 5 classes" in capsys.readouterr().err


def test_eval_plots(shapes, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    weights = save_model(small_model(4, ["circle", "square", "triangle"]), tmp_path / "m.safetensors")
    code = main(["--weights", str(weights), "--data", str(shapes), "--images", str(shapes.parent / "images"),
                 "--device", "cpu", "--workers", "0", "--plots", str(tmp_path / "plots"),
                 "--plot-score-threshold", "0.0"])
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["ap_per_class_bbox.png", "ap_per_class_segm.png", "confusion_matrix.csv",
                     "confusion_matrix.png", "pr_curve_bbox.png", "pr_curve_segm.png"]
    for name in names:
        if name.endswith(".png"):
            with Image.open(tmp_path / "plots" / name) as im:
                im.load()
    rows = (tmp_path / "plots" / "confusion_matrix.csv").read_text().splitlines()
    assert rows[0] == "true \\ predicted,circle,square,triangle,background"
    # every ground-truth object is counted once in its row (found, confused or missed)
    truth = json.loads(shapes.read_text())["annotations"]
    assert sum(int(v) for row in rows[1:4] for v in row.split(",")[1:]) == len(truth)
    assert "wrote 6 plot files" in capsys.readouterr().out


def test_missing_faster_coco_eval_says_how_to_install(shapes, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    weights = save_model(small_model(4, ["circle", "square", "triangle"]), tmp_path / "m.safetensors")
    code = main(["--weights", str(weights), "--data", str(shapes), "--images", str(shapes.parent / "images"),
                 "--device", "cpu", "--workers", "0", "--backend", "faster-coco-eval"])
    err = capsys.readouterr().err
    assert code == 2
    assert "maskrcnn eval: the faster-coco-eval backend needs its package: pip install -e \".[faster-eval]\"" in err
    assert "Traceback" not in err
