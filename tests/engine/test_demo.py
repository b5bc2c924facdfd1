"""`maskrcnn demo` plumbing on a very short run (the full demo's accuracy and time are measured
by running it; see the slow test)."""
import json
import re

import pytest

from maskrcnn.engine.demo import main

FINAL = re.compile(r"^demo: mask AP50 = \d\.\d{3}, mask AP = \d\.\d{3}, time = \d+ s$")


def test_short_demo_writes_everything_and_ends_with_the_summary_line(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["--out", str(out), "--iterations", "2", "--train-images", "8", "--val-images", "3",
                 "--overlays", "2", "train.progress=false", "train.tensorboard=false"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert FINAL.match(lines[-1]), lines[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and set(summary["evaluation"]) == {"bbox", "segm"}
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert (out / "summary.txt").read_text().startswith("maskrcnn demo:")
    assert (out / "train" / "model_final.safetensors").is_file()
    # a second run in the same folder starts over instead of failing on the old checkpoints
    assert main(["--out", str(out), "--iterations", "1", "--train-images", "8", "--val-images", "2",
                 "--overlays", "0", "train.progress=false", "train.tensorboard=false"]) == 0


@pytest.mark.slow
def test_full_demo_meets_its_target(tmp_path, capsys):
    """The README's promise: mask AP50 >= 0.9 within 5 minutes on 2 CPU cores."""
    assert main(["--out", str(tmp_path / "demo")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    ap50, _, seconds = (float(v) for v in re.findall(r"= ([\d.]+)", last))
    assert ap50 >= 0.9, last
    assert seconds <= 300, last


def test_overlay_shows_ground_truth_beside_prediction():
    import numpy as np
    import torch

    from maskrcnn.engine.demo import ground_truth_beside_prediction
    from maskrcnn.inference.colors import class_colors
    from maskrcnn.structures import Detections

    image = torch.zeros(3, 20, 30)
    masks = torch.zeros((1, 20, 30), dtype=torch.uint8)
    masks[0, 5:15, 5:15] = 1
    target = {"boxes": torch.tensor([[5.0, 5, 15, 15]]), "labels": torch.tensor([2]), "masks": masks}
    # the prediction finds another object, of class 1, elsewhere
    pred_masks = torch.zeros((1, 20, 30))
    pred_masks[0, 4:12, 18:28] = 0.9
    det = Detections(boxes=torch.tensor([[18.0, 4, 28, 12]]), scores=torch.tensor([0.8]),
                     labels=torch.tensor([1]), masks=pred_masks)
    out = np.asarray(ground_truth_beside_prediction(image, target, det, ["__background__", "circle", "square"]))
    title, k = 18, 3
    left, right = out[title:, :30 * k], out[title:, 30 * k:60 * k]
    square, circle = class_colors([2, 1])
    # the ground truth's square (label 2) in the left panel, in its class colour (outline pixel)
    assert (left[5 * k, 10 * k] == square).all() and (left[16 * k, 23 * k] == 0).all()
    # the predicted circle only in the right panel
    assert (right[4 * k, 23 * k] == circle).all() and (right[10 * k, 10 * k] == 0).all()
    # the legend beside lists both classes in their colours
    legend = {tuple(c) for c in out[:, 60 * k:].reshape(-1, 3)}
    assert tuple(square) in legend and tuple(circle) in legend
