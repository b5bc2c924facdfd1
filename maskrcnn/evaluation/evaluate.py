"""`maskrcnn eval`: COCO bbox and segm AP of a model on a COCO-format dataset.

    maskrcnn eval --weights out/model_final.safetensors --data val/annotations.json --images val/images

prints AP, AP50, AP75, APs, APm, APl for bbox and segm (segm when the model has masks) and, for
a model with keypoints, keypoint AP (OKS), and a per-class AP table, all computed by
pycocotools' COCOeval. `--output` also writes the COCO results JSON and the numbers.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from ..cli import HelpFormatter
from ..device import DEVICE_HELP, resolve_device
from ..data import CocoDataset, DataError, collate_fn
from ..engine import distributed
from ..engine.sampler import shard_indices
from ..io.progress import progress_bar
from ..modeling.mask_rcnn import MaskRCNN
from .coco_evaluator import COCOEvaluator, format_results


@torch.no_grad()
def run_evaluation(
    model: MaskRCNN,
    dataset: CocoDataset,
    evaluator: COCOEvaluator,
    *,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run `model` over `dataset` (this process's shard when distributed) and evaluate.
    The model is put in eval mode and restored to its previous mode afterwards; torch's RNG
    is left untouched, so evaluating in the middle of training does not change the run."""
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) \
        if distributed.is_initialized() else (0, 1)
    shard = Subset(dataset, shard_indices(len(dataset), rank, world))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_fn)
    was_training = model.training
    model.eval()
    evaluator.reset()
    bar = progress_bar(len(shard), "eval", unit="img", enabled=progress, leave=False)
    try:
        with torch.random.fork_rng(devices=[]):
            for images, targets in loader:
                images = [img.to(device, non_blocking=True) for img in images]
                output = model(images, detections=True)
                evaluator.process(targets, output.detections)
                bar.update(len(images))
        bar.close()
        return evaluator.evaluate()
    finally:
        model.train(was_training)


def load_model_for_eval(path: str | Path, device: torch.device, **options) -> MaskRCNN:
    """Any checkpoint `load_model` takes (a file or a name such as torchvision:NAME), opened by
    the one `open_checkpoint`; its class names, when it has them, are on `model.class_names`."""
    from ..checkpoint.loader import build_from_checkpoint, open_checkpoint

    model, names, _ = build_from_checkpoint(open_checkpoint(path), **options)
    if names is not None and getattr(model, "class_names", None) is None:
        model.class_names = list(names)
    return model.to(device).eval()


def label_mapping(model: MaskRCNN, dataset: CocoDataset, *, by_position: bool = False) -> dict[int, int] | None:
    """Model label -> the dataset's COCO category id. A model trained on this dataset's
    categories uses the dataset's mapping; torchvision's 91-class COCO models use category ids
    as labels (None: identity). A model whose labels start at 0 (Detectron2's class index) is
    matched by position alike: its label i is the dataset's label i + 1.

    Class names that differ from the dataset's are refused (AP would silently score one class
    against another) unless `by_position`; the same names in another order are matched by name."""
    model_classes = model.num_classes - 1
    if model_classes == dataset.num_classes:
        names = getattr(model, "class_names", None)
        shift = 1 - getattr(model, "first_label", 1)
        if names and list(names) != dataset.class_names:
            if sorted(names) == sorted(dataset.class_names) and len(set(names)) == len(names) and not by_position:
                return {i + 1 - shift: dataset.label_to_category_id[dataset.class_names.index(n) + 1]
                        for i, n in enumerate(names)}
            if not by_position:
                raise ValueError(
                    f"the model's class names {list(names)} differ from those of {dataset.annotation_file}, "
                    f"{dataset.class_names}: evaluate on the data the model was trained for, or pass "
                    "--map-classes-by-position (label_mapping(..., by_position=True)) to score the model's "
                    "i-th class as the dataset's i-th category anyway")
            print(f"warning: the model's class names {list(names)} differ from the dataset's {dataset.class_names}; "
                  "matching them by position, as asked", file=sys.stderr)
        return {label - shift: cid for label, cid in dataset.label_to_category_id.items()}
    if model.num_classes == 91 and all(1 <= c <= 90 for c in dataset.category_ids):
        return None
    raise ValueError(f"the model predicts {model_classes} classes but {dataset.annotation_file} has "
                     f"{dataset.num_classes} categories; evaluate on the data the model was trained for")


def default_iou_types(model: MaskRCNN) -> list[str]:
    """bbox, plus segm with a mask branch and keypoints with a keypoint branch."""
    heads = model.roi_heads
    return ["bbox"] + (["segm"] if heads.has_mask else []) + (["keypoints"] if heads.has_keypoints else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskrcnn eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="model .safetensors (with its .json), torchvision .pth, Detectron2 .pkl / .pth, "
                             "or a name: torchvision:maskrcnn_resnet50_fpn, detectron2:mask_rcnn_R_50_FPN_3x, ...")
    parser.add_argument("--data", required=True, help="COCO instances JSON with the ground truth")
    parser.add_argument("--images", required=True, help="folder the JSON's file_names are relative to")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--iou-types", nargs="+", choices=["bbox", "segm", "keypoints"],
                        help="default: bbox, segm if the model has masks, keypoints if it has keypoints")
    parser.add_argument("--output", help="write the COCO results and the numbers under this folder")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    parser.add_argument("--allow-outside-image-dir", action="store_true",
                        help="follow file_names that are absolute or climb out of --images with '..'")
    parser.add_argument("--no-file-check", action="store_true",
                        help="do not check every image file before evaluating (found when reached instead)")
    parser.add_argument("--map-classes-by-position", action="store_true",
                        help="score the model's i-th class as the data's i-th category even when their names differ")
    parser.add_argument("--plots", metavar="DIR", help="write precision-recall curves, per-class AP bars and a "
                        "confusion matrix (PNG, needs matplotlib: the [plots] extra) into DIR")
    parser.add_argument("--backend", choices=["pycocotools", "faster-coco-eval"], default="pycocotools",
                        help="who computes AP: the same numbers; faster-coco-eval (the [faster-eval] extra) is faster")
    parser.add_argument("--plot-score-threshold", type=float, default=0.5, metavar="S",
                        help="detections scoring >= S count in the confusion matrix (default: 0.5)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        if args.plots:
            from ..io import check_writable

            check_writable(Path(args.plots), folder=True)  # before the evaluation, not after it
        dataset = CocoDataset(args.data, args.images, skip_bad=args.skip_bad, check_files=not args.no_file_check,
                              allow_outside_image_dir=args.allow_outside_image_dir)
        if args.skip_bad:
            # drop unreadable images up front: lazily, one would be replaced by its neighbour,
            # whose detections would then count twice
            dataset.verify_images()
        model = load_model_for_eval(args.weights, device)
        iou_types = args.iou_types or default_iou_types(model)
        if not model.roi_heads.has_mask:
            print("maskrcnn eval: the model has no mask branch: no segm evaluation", file=sys.stderr)
            iou_types = [t for t in iou_types if t != "segm"] or ["bbox"]
        evaluator = COCOEvaluator(args.data, label_to_category_id=label_mapping(model, dataset, by_position=args.map_classes_by_position),
                                  class_names=dataset.class_names, iou_types=iou_types, backend=args.backend)
    except (OSError, ValueError, RuntimeError, DataError, ImportError) as e:
        print(f"maskrcnn eval: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = run_evaluation(model, dataset, evaluator, batch_size=args.batch_size, device=device,
                             num_workers=args.workers, progress=True)
    seconds = time.perf_counter() - start
    print(f"{len(dataset)} images, {len(evaluator.results)} detections, {seconds:.1f} s")
    print(format_results(results))
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} bad images or annotations", file=sys.stderr)
    if args.output:
        from ..inference.outputs import write_coco_json
        from ..data import write_json_atomic

        out = Path(args.output)
        write_coco_json(out / "coco_instances_results.json", evaluator.results)
        write_json_atomic(results, out / "metrics.json")
        print(f"wrote {out / 'coco_instances_results.json'} and {out / 'metrics.json'}")
    if args.plots:
        from ..plots import PlotsUnavailable, write_eval_plots

        try:
            written = write_eval_plots(args.plots, evaluator, results, score_threshold=args.plot_score_threshold)
        except PlotsUnavailable as e:
            print(f"maskrcnn eval: {e}", file=sys.stderr)
        except OSError as e:
            print(f"maskrcnn eval: --plots {args.plots}: {e}", file=sys.stderr)
            return 2
        else:
            print(f"wrote {len(written)} plot files to {args.plots}: " + ", ".join(p.name for p in written))
    return 0
