"""Detection-only training (`model.mask_on=false`, Faster R-CNN) through the real engine: no
mask loss, bbox-only evaluation, and the saved model predicts and evaluates without masks."""
import json

from maskrcnn.checkpoint import load_native
from maskrcnn.data import generate_shapes_dataset
from maskrcnn.engine import train as train_module
from maskrcnn.engine.config import load_config
from maskrcnn.evaluation.evaluate import main as eval_main
from maskrcnn.inference import load_model

from .conftest import tiny_overrides


def test_detection_only_run_trains_evaluates_and_predicts_boxes(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "run"
    val = generate_shapes_dataset(tmp_path / "val", 3, seed=2, image_size=(64, 64), size_range=(12.0, 30.0))
    overrides = tiny_overrides(tiny_shapes, out, max_iter=2) + [
        "model.mask_on=false", f"data.val_annotations={val}", f"data.val_images={val.parent / 'images'}"]
    result = train_module.train(load_config(None, overrides))
    assert set(result.eval_results) == {"bbox"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {k for r in records for k in r if k.startswith("loss_")}
    assert losses == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}

    model = load_native(result.final_weights)
    assert not model.roi_heads.has_mask and model.config.mask_on is False
    image = tiny_shapes.parent / "images" / json.loads(tiny_shapes.read_text())["images"][0]["file_name"]
    prediction = load_model(result.final_weights).predict(str(image))[0]
    assert prediction.masks is None and prediction.label_map.shape == prediction.image_size
    assert all("segmentation" not in r for r in prediction.to_coco())

    code = eval_main(["--weights", str(result.final_weights), "--data", str(val),
                      "--images", str(val.parent / "images"), "--device", "cpu", "--workers", "0"])
    captured = capsys.readouterr()
    assert code == 0 and "no mask branch" in captured.err
    lines = captured.out.splitlines()
    assert any(line.startswith("bbox") for line in lines) and not any(line.startswith("segm") for line in lines)
