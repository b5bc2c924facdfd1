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
from tqdm import tqdm

from ..data import CocoDataset, DataError, collate_fn
from ..engine import distributed
from ..engine.sampler import shard_indices
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
    try:
        with torch.random.fork_rng(devices=[]):
            for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
                images = [img.to(device, non_blocking=True) for img in images]
                output = model(images, detections=True)
                evaluator.process(targets, output.detections)
        return evaluator.evaluate()
    finally:
        model.train(was_training)


def load_model_for_eval(path: str | Path, device: torch.device, **options) -> MaskRCNN:
    """Our .safetensors + .json, a torchvision Mask R-CNN checkpoint (v1 or v2), or a
    Detectron2 one (.pkl / .pth)."""
    from ..checkpoint import from_detectron2, from_torchvision, is_detectron2_state_dict, load_native, read_state_dict
    from ..checkpoint.native import config_path_for

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights {path} do not exist")
    if config_path_for(path).is_file():
        model = load_native(path, **options)
    else:
        state = read_state_dict(path)
        if is_detectron2_state_dict(state):
            model = from_detectron2(state, **options)
        else:
            from ..checkpoint.torchvision import torchvision_variant

            model = from_torchvision(state, variant=torchvision_variant(state), **options)
    return model.to(device).eval()


def label_mapping(model: MaskRCNN, dataset: CocoDataset) -> dict[int, int] | None:
    """Model label -> the dataset's COCO category id. A model trained on this dataset's
    categories uses the dataset's mapping; torchvision's 91-class COCO models use category ids
    as labels (None: identity). A model whose labels start at 0 (Detectron2's class index) is
    matched by position alike: its label i is the dataset's label i + 1."""
    model_classes = model.num_classes - 1
    if model_classes == dataset.num_classes:
        names = getattr(model, "class_names", None)
        if names and list(names) != dataset.class_names:
            print(f"warning: the model's class names {names} differ from the dataset's {dataset.class_names}; "
                  "matching them by position", file=sys.stderr)
        shift = 1 - getattr(model, "first_label", 1)
        return {label - shift: cid for label, cid in dataset.label_to_category_id.items()}
    if model.num_classes == 91 and all(1 <= c <= 90 for c in dataset.category_ids):
        return None
    raise ValueError(f"the model predicts {model_classes} classes but {dataset.annotation_file} has "
                     f"{dataset.num_classes} categories; evaluate on the data the model was trained for")


def default_iou_types(model: MaskRCNN) -> list[str]:
    """bbox, plus segm with a mask branch and keypoints with a keypoint branch."""
    heads = model.roi_heads
    return ["bbox"] + (["segm"] if heads.has_mask else []) + (["keypoints"] if heads.has_keypoints else [])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available")
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskrcnn eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True,
                        help="model .safetensors (with its .json), torchvision .pth, or Detectron2 .pkl / .pth")
    parser.add_argument("--data", required=True, help="COCO instances JSON with the ground truth")
    parser.add_argument("--images", required=True, help="folder the JSON's file_names are relative to")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: auto)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--iou-types", nargs="+", choices=["bbox", "segm", "keypoints"],
                        help="default: bbox, segm if the model has masks, keypoints if it has keypoints")
    parser.add_argument("--output", help="write the COCO results and the numbers under this folder")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        dataset = CocoDataset(args.data, args.images, skip_bad=args.skip_bad)
        if args.skip_bad:
            # drop unreadable images up front: lazily, one would be replaced by its neighbour,
            # whose detections would then count twice
            dataset.verify_images()
        model = load_model_for_eval(args.weights, device)
        iou_types = args.iou_types or default_iou_types(model)
        evaluator = COCOEvaluator(args.data, label_to_category_id=label_mapping(model, dataset),
                                  class_names=dataset.class_names, iou_types=iou_types)
    except (OSError, ValueError, RuntimeError, DataError) as e:
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
    return 0
