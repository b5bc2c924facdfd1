"""Plots: the values drawn are the values logged / computed (training curves = metrics.jsonl,
PR curves = pycocotools' precision array, bars = per-class AP, heat map = confusion counts),
the files decode, and without matplotlib the callers say plots were skipped."""
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from maskrcnn import plots  # noqa: E402
from maskrcnn.evaluation import evaluate_results, load_coco_gt  # noqa: E402


def _records():
    rows = []
    for it in range(1, 31):
        rows.append({"iteration": it, "loss": 3.0 / it, "loss_mask": 1.0 / it, "loss_classifier": 0.5 + 0.01 * it,
                     "lr": 0.01 * min(1.0, it / 5), "time": 0.1})
        if it % 10 == 0:
            rows.append({"iteration": it, "bbox/AP": it / 100, "bbox/AP50": it / 50, "segm/AP": it / 120})
    return rows


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_training_curves_show_the_logged_values(tmp_path):
    records = _records()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"iterat')
    assert plots.read_metrics(tmp_path / "metrics.jsonl") == records  # the torn last line is skipped
    fig = plots.plot_training_curves(records)
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert list(axes) == ["loss", "loss_classifier", "loss_mask", "lr", "box AP", "mask AP"]
    loss = _lines(axes["loss"])["loss"]
    np.testing.assert_allclose(loss.get_xdata(), np.arange(1, 31))
    np.testing.assert_allclose(loss.get_ydata(), [3.0 / i for i in range(1, 31)])
    np.testing.assert_allclose(_lines(axes["lr"])["lr"].get_ydata(), [0.01 * min(1, i / 5) for i in range(1, 31)])
    box = _lines(axes["box AP"])
    np.testing.assert_allclose(box["AP"].get_xdata(), [10, 20, 30])
    np.testing.assert_allclose(box["AP50"].get_ydata(), [0.2, 0.4, 0.6])

    board = _Board()
    path = plots.write_training_curves(tmp_path, board)
    assert path == tmp_path / "results.png"
    assert [tag for tag, _ in board.figures] == ["results"]
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.width > 600


class _Board:
    """Stands in for TensorBoard's SummaryWriter: records add_figure calls."""

    def __init__(self):
        self.figures = []

    def add_figure(self, tag, figure, step=None):
        self.figures.append((tag, step))


def _coco_case():
    """Two classes, three images; detections that give a non-trivial PR curve per class."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 100} for i in (1, 2, 3)]
    anns, dets = [], []
    rng = np.random.default_rng(0)
    for img in (1, 2, 3):
        for k in range(4):
            cat = 1 + k % 2
            x, y = 5 + 22 * k, 10 + 20 * (img - 1)
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": [x, y, 15, 15],
                         "area": 225, "iscrowd": 0})
            jitter = rng.uniform(-4, 4, 2)
            dets.append({"image_id": img, "category_id": cat, "bbox": [x + jitter[0], y + jitter[1], 15, 15],
                         "score": float(rng.uniform(0.3, 1))})
            dets.append({"image_id": img, "category_id": 3 - cat, "bbox": [x + 60, y, 12, 12],
                         "score": float(rng.uniform(0, 0.8))})
    gt = load_coco_gt({"images": images, "annotations": anns,
                       "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]})
    return gt, dets


def test_pr_curves_are_pycocotools_precision(tmp_path):
    gt, dets = _coco_case()
    precision = {}
    numbers = evaluate_results(gt, dets, "bbox", precision_out=precision)
    p = precision["bbox"]
    assert p.shape[1] == 101 and p.shape[2] == 2
    fig = plots.plot_pr_curves(p, ["circle", "square"], "bbox")
    by_gid = {line.get_gid(): line for line in fig.axes[0].get_lines()}
    for k, name in enumerate(["circle", "square"]):
        np.testing.assert_array_equal(by_gid[f"class:{name}"].get_ydata(), p[0, :, k, 0, -1])
        np.testing.assert_allclose(by_gid[f"class:{name}"].get_xdata(), np.linspace(0, 1, 101))
    np.testing.assert_allclose(by_gid["mean"].get_ydata(), p[0, :, :, 0, -1].mean(axis=1))
    assert 0 < p[0, :, :, 0, -1].mean() < 1  # a real curve, not all-0 or all-1

    bars = plots.plot_ap_bars(numbers["per_class"], "bbox")
    widths = {t.get_text(): r.get_width() for t, r in zip(bars.axes[0].get_yticklabels(), bars.axes[0].patches)}
    assert widths == pytest.approx(numbers["per_class"])


def test_write_eval_plots_files_and_confusion_counts(tmp_path):
    from maskrcnn.evaluation.confusion import confusion_matrix

    gt, dets = _coco_case()
    precision = {}
    results = {"bbox": evaluate_results(gt, dets, "bbox", precision_out=precision)}
    evaluator = SimpleNamespace(coco_gt=gt, precision=precision, evaluated_results=dets, evaluated_image_ids=[1, 2, 3])
    board = _Board()
    written = plots.write_eval_plots(tmp_path / "p", evaluator, results, score_threshold=0.5, tensorboard=board,
                                     step=7)
    assert board.figures == [("eval/pr_curve_bbox", 7), ("eval/ap_per_class_bbox", 7), ("eval/confusion_matrix", 7)]
    assert sorted(p.name for p in written) == ["ap_per_class_bbox.png", "confusion_matrix.csv",
                                               "confusion_matrix.png", "pr_curve_bbox.png"]
    for path in written:
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.load()
    expected, names = confusion_matrix(gt, dets, score_threshold=0.5)
    rows = [line.split(",") for line in (tmp_path / "p" / "confusion_matrix.csv").read_text().splitlines()]
    assert rows[0][1:] == names == ["circle", "square", "background"]
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], dtype=int), expected)
    fig = plots.plot_confusion_matrix(expected, names, score_threshold=0.5, iou_threshold=0.5)
    shown = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(shown, expected / np.maximum(expected.sum(1, keepdims=True), 1))


def test_without_matplotlib_plots_are_skipped_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(plots.PlotsUnavailable, match=r"maskrcnn\[plots\]"):
        plots.plot_training_curves(_records())
    from maskrcnn.engine.train import _write_plots

    (tmp_path / "metrics.jsonl").write_text(json.dumps(_records()[0]) + "\n")
    message = _write_plots(tmp_path, None, {}, None, 1)
    assert message.startswith("plots skipped: matplotlib is not installed")
    assert not (tmp_path / "results.png").exists()


def test_figures_reach_a_real_tensorboard_log(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    writer = SummaryWriter(str(tmp_path / "tb"))
    plots.write_training_curves(tmp_path, writer)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    [image] = events.Images("results")
    with Image.open(__import__("io").BytesIO(image.encoded_image_string)) as im:
        assert im.width > 600
