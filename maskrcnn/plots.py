"""Pictures of a run: training curves, precision-recall curves, per-class AP, confusion matrix.

    maskrcnn train ...        -> RUN/results.png (losses, lr, AP over iterations) and
                                 RUN/plots/ (the final evaluation's pictures), also in TensorBoard
    maskrcnn eval --plots DIR -> DIR/pr_curve_{bbox,segm}.png, DIR/ap_per_class_{bbox,segm}.png,
                                 DIR/confusion_matrix.png (+ confusion_matrix.csv)

matplotlib is an optional extra (`pip install "maskrcnn[plots]"`); without it training and
evaluation run as before and say the plots were skipped (`PlotsUnavailable`). Figures are
built with matplotlib's object interface (no pyplot), so nothing here touches the caller's
backend or global state, and every file is written atomically.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write

__all__ = ["PlotsUnavailable", "plot_ap_bars", "plot_confusion_matrix", "plot_pr_curves",
           "plot_training_curves", "read_metrics", "save_figure", "write_eval_plots",
           "write_training_curves"]

INSTALL_HINT = 'pip install "maskrcnn[plots]" (or: pip install matplotlib)'
PR_IOU = 0.5  # the IoU of the precision-recall curves (COCO's AP50, Ultralytics' PR curve)


class PlotsUnavailable(ImportError):
    """matplotlib is not installed; the message says how to get it."""


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable(f"plots skipped: matplotlib is not installed ({INSTALL_HINT})") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Write a figure as PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # attaches a canvas (a Figure made without pyplot has none that renders)
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


# ---------------------------------------------------------------------------------------------
# Training curves


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (see engine/metrics.py); lines that do not parse
    (a line cut short by a kill) are skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), (int, float)):
            records.append(record)
    return records


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of the records holding a finite number under `key`."""
    points = [(r["iteration"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not points:
        return np.zeros(0), np.zeros(0)
    it, value = zip(*points)
    return np.asarray(it, dtype=np.float64), np.asarray(value, dtype=np.float64)


def training_panels(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """(panel title, metric keys) of the training-curve figure: the total loss, each loss
    term, the learning rate, then box AP and mask AP (AP, AP50, AP75) where evaluated."""
    keys = {k for r in records for k, v in r.items() if isinstance(v, (int, float))}
    losses = ["loss"] * ("loss" in keys) + sorted(k for k in keys if k.startswith("loss_"))
    panels = [(k, [k]) for k in losses]
    if "lr" in keys:
        panels.append(("lr", ["lr"]))
    for iou in ("bbox", "segm"):
        aps = [f"{iou}/{m}" for m in ("AP", "AP50", "AP75") if f"{iou}/{m}" in keys]
        if aps:
            panels.append((f"{'box' if iou == 'bbox' else 'mask'} AP", aps))
    return panels


def plot_training_curves(records: Sequence[Mapping[str, Any]]):
    """One panel per training_panels entry, values against iterations; a loss panel also
    shows a moving average over ~5% of its points (the raw values faint behind it)."""
    panels = training_panels(records)
    if not panels:
        raise ValueError("the metrics log holds no numbers to plot")
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(3.2 * cols, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            it, value = _series(records, key)
            style = {"marker": "o", "markersize": 3} if "/" in key else {}
            line, = ax.plot(it, value, label=key.split("/")[-1], **style)
            if key.startswith("loss") and len(value) >= 10:
                line.set_alpha(0.35)
                ax.plot(it, _smooth(value), color=line.get_color(), label="smoothed")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def _smooth(values: np.ndarray) -> np.ndarray:
    """Centred moving average over ~5% of the points (at least 3), edges averaged over what
    is there."""
    k = max(3, len(values) // 20) | 1
    kernel = np.ones(k)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def write_training_curves(run_dir: str | os.PathLike, tensorboard=None) -> Path:
    """RUN/results.png from RUN/metrics.jsonl; also to TensorBoard as image "results" when a
    SummaryWriter is given. Raises PlotsUnavailable without matplotlib."""
    run_dir = Path(run_dir)
    fig = plot_training_curves(read_metrics(run_dir / "metrics.jsonl"))
    path = save_figure(fig, run_dir / "results.png")
    if tensorboard is not None:
        tensorboard.add_figure("results", fig)
    return path


# ---------------------------------------------------------------------------------------------
# Evaluation


def plot_pr_curves(precision: np.ndarray, class_names: Sequence[str], iou_type: str = "bbox"):
    """Per-class precision against recall at IoU 0.5, all object sizes, 100 detections per
    image: COCOeval's eval["precision"][0, :, k, 0, -1] over its 101 recall points, the
    values as they are (-1, pycocotools' "no ground truth", leaves the class out), and the
    mean over classes in black. Legend entries carry each class's AP50."""
    t, r, k_count, _, _ = precision.shape
    if len(class_names) != k_count:
        raise ValueError(f"{len(class_names)} class names for a precision array of {k_count} classes")
    recall = np.linspace(0.0, 1.0, r)  # COCOeval's params.recThrs
    fig = _figure(6.4, 4.8)
    ax = fig.subplots()
    curves = []
    many = k_count > 20
    for k, name in enumerate(class_names):
        p = precision[0, :, k, 0, -1]
        if (p < 0).all():
            continue
        curves.append(np.where(p < 0, 0.0, p))
        ax.plot(recall, p, linewidth=1, alpha=0.6 if many else 0.9,
                label=None if many else f"{name} {np.mean(p[p >= 0]):.3f}", gid=f"class:{name}")
    if curves:
        mean = np.mean(curves, axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.5, label=f"all classes {mean.mean():.3f}", gid="mean")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"{'box' if iou_type == 'bbox' else 'mask'} precision-recall at IoU {PR_IOU}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left", title="AP50")
    return fig


def plot_ap_bars(per_class: Mapping[str, float], iou_type: str = "bbox"):
    """Horizontal bars of per-class AP (IoU .50:.95), best at the top; classes without ground
    truth (AP -1) are listed with an empty bar and "no GT"."""
    items = sorted(per_class.items(), key=lambda kv: kv[1])
    fig = _figure(6.4, max(2.4, 0.28 * len(items) + 1.2))
    ax = fig.subplots()
    values = [max(v, 0.0) for _, v in items]
    bars = ax.barh(range(len(items)), values, color="tab:blue")
    for bar, (_, v) in zip(bars, items):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2,
                "no GT" if v < 0 else f"{v:.3f}", va="center", fontsize="small")
    ax.set_yticks(range(len(items)), [n for n, _ in items])
    ax.set(xlim=(0, 1.1), xlabel="AP (IoU .50:.95)", title=f"{'box' if iou_type == 'bbox' else 'mask'} AP per class")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], *, score_threshold: float,
                          iou_threshold: float):
    """The counts of `evaluation.confusion.confusion_matrix` as a heat map (colour: share of
    the row, i.e. of that true class), each cell with its count."""
    matrix = np.asarray(matrix)
    n = len(names)
    fig = _figure(max(5.5, 0.45 * n + 3.0), max(4.5, 0.45 * n + 2.0))
    ax = fig.subplots()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize="small",
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix\nscore >= {score_threshold:g}, IoU >= {iou_threshold:g}")
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    return fig


def write_eval_plots(out_dir: str | os.PathLike, evaluator, results: Mapping[str, Mapping[str, Any]], *,
                     score_threshold: float = 0.5, iou_threshold: float = 0.5,
                     tensorboard=None, step: int | None = None) -> list[Path]:
    """PR curves and AP bars per IoU type, the confusion matrix (box IoU) as PNG and CSV,
    from a COCOEvaluator after its evaluate() and that call's results; also to TensorBoard
    when a SummaryWriter is given. Raises PlotsUnavailable without matplotlib."""
    from .evaluation.confusion import confusion_matrix
    from .io import atomic_open

    out = Path(out_dir)
    written: list[Path] = []
    figures = []
    for iou_type, numbers in results.items():
        names = list(numbers["per_class"])
        if iou_type in evaluator.precision:
            figures.append((f"pr_curve_{iou_type}", plot_pr_curves(evaluator.precision[iou_type], names, iou_type)))
        figures.append((f"ap_per_class_{iou_type}", plot_ap_bars(numbers["per_class"], iou_type)))
    matrix, labels = confusion_matrix(evaluator.coco_gt, evaluator.evaluated_results,
                                      score_threshold=score_threshold, iou_threshold=iou_threshold,
                                      image_ids=evaluator.evaluated_image_ids)
    figures.append(("confusion_matrix", plot_confusion_matrix(matrix, labels, score_threshold=score_threshold,
                                                              iou_threshold=iou_threshold)))
    with atomic_open(out / "confusion_matrix.csv", "w", encoding="utf-8", newline="") as f:
        import csv

        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *labels])
        writer.writerows([name, *map(int, row)] for name, row in zip(labels, matrix))
    written.append(out / "confusion_matrix.csv")
    for name, fig in figures:
        written.append(save_figure(fig, out / f"{name}.png"))
        if tensorboard is not None:
            tensorboard.add_figure(f"eval/{name}", fig, step)
    return written
