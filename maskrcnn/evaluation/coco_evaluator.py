"""COCO box, mask and keypoint (OKS) AP through pycocotools, as `reset / process / evaluate` (detectron2's
`COCOEvaluator` shape).

    evaluator = COCOEvaluator("val/annotations.json", label_to_category_id=ds.label_to_category_id,
                              class_names=ds.class_names)
    for images, targets in loader:
        evaluator.process(targets, model(images).detections)
    results = evaluator.evaluate()   # {"bbox": {"AP": .., "AP50": .., ..., "per_class": {..}}, "segm": {..}}
    # iou_types=("bbox", "keypoints") for a keypoint model: "keypoints" is OKS AP over the
    # categories that have keypoints (see .keypoints for the sigmas)

Numbers are pycocotools' own, as fractions in [0, 1] (COCOeval.stats[0:6]); -1 is what
pycocotools reports when no ground truth falls in a category or size range. Only the images
passed to `process` are evaluated, so a subset (or one process's shard) is evaluated correctly.

backend="faster-coco-eval" computes the same numbers with the faster-coco-eval package (its
matching and accumulation in C++; an optional extra): tests/evaluation/test_backends.py checks
that they agree.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..engine import distributed
from ..inference.outputs import to_coco_results
from ..structures import Detections
from .keypoints import keypoint_sigmas as oks_sigmas

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm", "keypoints")
BACKENDS = ("pycocotools", "faster-coco-eval")


def _faster_coco_eval():
    """faster-coco-eval's COCO and COCOeval classes, or an error that says how to get them."""
    try:
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        raise ImportError('the faster-coco-eval backend needs its package: pip install -e ".[faster-eval]" '
                          "(or pip install faster-coco-eval)") from None
    return FasterCOCO, COCOeval_faster


def _checked(backend: str) -> str:
    """`backend`, if it is one of BACKENDS."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown evaluation backend {backend!r}; use {' or '.join(map(repr, BACKENDS))}")
    return backend


def ground_truth_for(coco_gt: COCO, backend: str):
    """The ground truth as `backend` evaluates it: pycocotools' COCO itself, or faster-coco-eval's
    COCO built from the same annotations (build it once per evaluation: it indexes them all)."""
    if _checked(backend) == "pycocotools":
        return coco_gt
    faster_coco, _ = _faster_coco_eval()
    if isinstance(coco_gt, faster_coco):
        return coco_gt
    return faster_coco(copy.deepcopy(coco_gt.dataset), print_function=lambda *args: None)


def load_coco_gt(source: str | Path | dict | COCO) -> COCO:
    """pycocotools COCO from a path, a parsed dict or a COCO object, without its prints."""
    if isinstance(source, COCO):
        return source
    coco = COCO()
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:  # bytes: json reads UTF-8, -16 and -32, as read_coco_json
            coco.dataset = json.loads(f.read())
    else:
        coco.dataset = copy.deepcopy(source)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class COCOEvaluator:
    """Accumulates detections as COCO results and runs COCOeval for each IoU type.

    Args:
        coco_gt: annotation JSON path, dict, or pycocotools COCO.
        label_to_category_id: model label (1..C) -> COCO category id; None: labels are ids.
        class_names: name per label (index 0 is label 1), for the per-class table; default:
            the GT categories' names.
        iou_types: "bbox", "segm" and/or "keypoints".
        mask_threshold: pasted mask probabilities >= this are foreground.
        keypoint_sigmas: OKS sigma per keypoint (default: COCO's for 17, else their mean).
        backend: "pycocotools" or "faster-coco-eval" (the same numbers, faster; optional extra).
    """

    def __init__(
        self,
        coco_gt: str | Path | dict | COCO,
        *,
        label_to_category_id: Mapping[int, int] | None = None,
        class_names: Sequence[str] | None = None,
        iou_types: Iterable[str] = ("bbox", "segm"),
        mask_threshold: float = 0.5,
        keypoint_sigmas: Sequence[float] | None = None,
        backend: str = "pycocotools",
    ):
        self.coco_gt = load_coco_gt(coco_gt)
        if _checked(backend) != "pycocotools":
            _faster_coco_eval()  # a missing package is reported now, not after the inference
        self.backend = backend
        self.iou_types = tuple(iou_types)
        unknown = [t for t in self.iou_types if t not in IOU_TYPES]
        if unknown:
            raise ValueError(f"unknown IoU type(s) {unknown}; use {', '.join(map(repr, IOU_TYPES))}")
        self.keypoint_sigmas = keypoint_sigmas
        self.label_to_category_id = dict(label_to_category_id) if label_to_category_id is not None else None
        self.class_names = list(class_names) if class_names is not None else None
        self.mask_threshold = mask_threshold
        self.reset()

    def reset(self) -> None:
        self._results: list[dict] = []
        self._image_ids: set[int] = set()
        # per IoU type, COCOeval's precision array of the last evaluate() (for PR-curve plots)
        self.precision: dict[str, np.ndarray] = {}
        self.evaluated_results: list[dict] = []
        self.evaluated_image_ids: list[int] = []

    def process(self, inputs: Sequence[Mapping[str, Any] | int], outputs: Sequence[Detections]) -> None:
        """inputs: one target dict with "image_id" (or the id itself) per image; outputs: the
        model's `Detections` for the same images, in original image coordinates."""
        if len(inputs) != len(outputs):
            raise ValueError(f"got {len(inputs)} inputs but {len(outputs)} outputs")
        for item, det in zip(inputs, outputs):
            image_id = int(item["image_id"] if isinstance(item, Mapping) else item)
            self._image_ids.add(image_id)
            det = det.to("cpu")
            masks = det.masks if "segm" in self.iou_types else None
            if masks is None and "segm" in self.iou_types:
                raise ValueError("segm evaluation needs masks: run the model with paste_masks=True")
            keypoints = det.keypoints if "keypoints" in self.iou_types else None
            if keypoints is None and "keypoints" in self.iou_types:
                raise ValueError("keypoint evaluation needs a model with a keypoint branch")
            self._results.extend(to_coco_results(
                image_id, det.boxes, det.scores, det.labels, masks,
                category_ids=self.label_to_category_id, mask_threshold=self.mask_threshold,
                keypoints=keypoints,
            ))

    @property
    def results(self) -> list[dict]:
        """COCO results entries so far (the format of COCO's results JSON)."""
        return self._results

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Run COCOeval. With several processes, every process must call this; results are
        gathered and evaluated on rank 0, the others get {}."""
        gathered = distributed.all_gather_object((self._results, sorted(self._image_ids)))
        if distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return {}
        results = [r for part, _ in gathered for r in part]
        image_ids = sorted({i for _, ids in gathered for i in ids})
        # what was evaluated, all processes' together, for plots (confusion matrix)
        self.evaluated_results, self.evaluated_image_ids = results, image_ids
        self.precision = {}
        gt = ground_truth_for(self.coco_gt, self.backend)
        return {t: evaluate_results(gt, results, t, image_ids, self.class_names,
                                    keypoint_sigmas=self.keypoint_sigmas, precision_out=self.precision,
                                    backend=self.backend)
                for t in self.iou_types}



def evaluate_results(
    coco_gt: COCO, results: list[dict], iou_type: str, image_ids: list[int] | None = None,
    class_names: Sequence[str] | None = None,
    keypoint_sigmas: Sequence[float] | None = None,
    precision_out: dict[str, np.ndarray] | None = None,
    backend: str = "pycocotools",
) -> dict[str, Any]:
    """COCOeval on one IoU type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}.
    "keypoints" evaluates the categories with keypoint names only (COCO's person).
    precision_out: if given, gets COCOeval's eval["precision"] array under the IoU type
    (nothing when there are no results to evaluate). backend: whose COCOeval runs (coco_gt:
    pycocotools' COCO, or `ground_truth_for(coco_gt, backend)` to convert it only once)."""
    coco_gt = ground_truth_for(coco_gt, backend)
    if backend == "pycocotools":
        new_eval = COCOeval
    else:
        _, faster_eval = _faster_coco_eval()
        new_eval = lambda gt, dt, kind: faster_eval(gt, dt, kind, print_function=lambda *args: None)  # noqa: E731
    all_cat_ids = sorted(coco_gt.getCatIds())
    names = list(class_names) if class_names is not None and len(class_names) == len(all_cat_ids) else \
        [coco_gt.cats[c].get("name", str(c)) for c in all_cat_ids]
    cat_ids = all_cat_ids
    if iou_type == "keypoints":
        cat_ids = [c for c in all_cat_ids if coco_gt.cats[c].get("keypoints")]
        if not cat_ids:
            raise ValueError("keypoint evaluation needs a category with 'keypoints' names in the ground truth")
        names = [n for c, n in zip(all_cat_ids, names) if c in cat_ids]
        # loadRes takes the first result's keys for the type: keypoints only, from those categories
        results = [{k: v for k, v in r.items() if k not in ("bbox", "segmentation")}
                   for r in results if r["category_id"] in cat_ids]
    if iou_type == "segm":
        # loadRes takes a result's area from its bbox when one is present; the mask's own area
        # is what the small/medium/large split of segm AP must use (detectron2 does the same).
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    if not results:
        # pycocotools cannot load an empty result list; with no detections every AP is 0
        # (or -1 where there is no ground truth to find, as COCOeval reports it).
        has_gt = len(coco_gt.getAnnIds(imgIds=image_ids if image_ids else [], catIds=cat_ids, iscrowd=False)) > 0
        value = 0.0 if has_gt else -1.0
        return {**{m: value for m in METRICS}, "per_class": {n: value for n in names}}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco_dt = coco_gt.loadRes(results)
        coco_eval = new_eval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            coco_eval.params.imgIds = list(image_ids)
        if iou_type == "keypoints":
            coco_eval.params.catIds = cat_ids
            num = len(coco_gt.cats[cat_ids[0]]["keypoints"])
            coco_eval.params.kpt_oks_sigmas = oks_sigmas(num, keypoint_sigmas)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    # keypoint stats have no APs (their 3: APm, APl; 4..: recalls), the rest do
    stats_of = ({"AP": 0, "AP50": 1, "AP75": 2, "APm": 3, "APl": 4} if iou_type == "keypoints"
                else {m: i for i, m in enumerate(METRICS)})
    out: dict[str, Any] = {m: float(coco_eval.stats[stats_of[m]]) if m in stats_of else -1.0 for m in METRICS}
    # precision: (IoU thresholds, recall thresholds, classes, area ranges, max dets);
    # area "all" is index 0 and maxDets 100 is the last.
    precision = coco_eval.eval["precision"]
    if precision_out is not None:
        precision_out[iou_type] = precision
    per_class = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[name] = float(np.mean(p)) if p.size else -1.0
    out["per_class"] = per_class
    return out


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """The summary table and a per-class AP table, as printed by `maskrcnn eval`."""
    def cell(v: float) -> str:
        return "    -" if v is None or v < 0 or math.isnan(v) else f"{v:.3f}"

    types = list(results)
    tw = max([6] + [len(t) + 1 for t in types])  # "keypoints" is wider than "bbox" and "segm"
    cw = {t: max(8, len(t) + 2) for t in types}
    lines = [f"{'':{tw}}" + "".join(f"{m:>8}" for m in METRICS)]
    for t in types:
        lines.append(f"{t:{tw}}" + "".join(f"{cell(results[t][m]):>8}" for m in METRICS))
    names = list(next(iter(results.values()))["per_class"]) if results else []
    if names:
        width = max(12, max(len(n) for n in names) + 2)
        lines += ["", f"{'per-class AP':{width}}" + "".join(f"{t:>{cw[t]}}" for t in types)]
        for n in names:
            lines.append(f"{n:{width}}" + "".join(f"{cell(results[t]['per_class'].get(n)):>{cw[t]}}" for t in types))
    return "\n".join(lines)
