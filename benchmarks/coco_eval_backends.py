"""COCO evaluation speed: pycocotools' COCOeval against faster-coco-eval, on the same results.

    python benchmarks/coco_eval_backends.py [--images 500] [--repeats 3]

Data: the synthetic shapes (`generate_shapes_dataset`, 192 x 192, up to 5 objects an image) and
COCO results made near their ground truth (tests' `coco_results_near`: shifted masks, swapped
classes, false positives). Times `evaluate_results` per IoU type, which is all of COCOeval
(loadRes, evaluate, accumulate, summarize), backends alternated in one process; median seconds
over --repeats, and the ratio. Both must give the same AP (asserted to 1e-6).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from maskrcnn.data import generate_shapes_dataset  # noqa: E402
from maskrcnn.evaluation.coco_evaluator import evaluate_results, ground_truth_for, load_coco_gt  # noqa: E402
from testing_utils import coco_results_near  # noqa: E402

BACKENDS = ("pycocotools", "faster-coco-eval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gt = load_coco_gt(generate_shapes_dataset(tmp, args.images, image_size=(192, 192), size_range=(8.0, 150.0),
                                                  max_shapes=5, seed=0))
    results = coco_results_near(gt, seed=0)
    print(f"{len(gt.getImgIds())} images, {len(gt.getAnnIds())} objects, {len(results)} detections")
    for iou_type in ("bbox", "segm"):
        seconds = {b: [] for b in BACKENDS}
        ap = {}
        for _ in range(args.repeats):
            for backend in BACKENDS:  # alternated, so a busy machine slows both alike
                start = time.perf_counter()
                ap[backend] = evaluate_results(ground_truth_for(gt, backend), results, iou_type, backend=backend)["AP"]
                seconds[backend].append(time.perf_counter() - start)
        assert abs(ap["pycocotools"] - ap["faster-coco-eval"]) < 1e-6, ap
        slow, fast = (statistics.median(seconds[b]) for b in BACKENDS)
        print(f"{iou_type}: AP {ap['pycocotools']:.4f}; pycocotools {slow:.2f} s, faster-coco-eval {fast:.2f} s "
              f"({slow / fast:.1f}x)")


if __name__ == "__main__":
    main()
