"""COCO evaluation (pycocotools) as reset / process / evaluate, and `maskrcnn eval`."""
from .coco_evaluator import METRICS, COCOEvaluator, evaluate_results, format_results, load_coco_gt

__all__ = ["METRICS", "COCOEvaluator", "evaluate_results", "format_results", "load_coco_gt"]
