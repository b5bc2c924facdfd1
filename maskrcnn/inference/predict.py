"""`maskrcnn predict SRC... --weights W --out DIR`: run a model over files, folders and globs.

Writes, each file atomically (temporary file + rename, so an interrupted run never leaves a
half-written file under its final name):

    DIR/results.json            COCO results: bbox, score, category_id, RLE segmentation
    DIR/images.json             the COCO "images" entries (id, file_name, height, width) of the
                                images read, so results.json's image ids can be traced to files
    DIR/overlays/NAME.png       the image with colored masks, boxes, class names and scores
    DIR/label_maps/NAME.png     with --label-maps: 0 = background, i = i-th detection (by score)
    FILE                        with --csv FILE: Kaggle "ImageId,EncodedPixels", one row per
                                instance, masks made non-overlapping by the label map

NAME is the file's stem (made unique when two inputs share one). Images that cannot be read
(corrupt, not an image, above --max-pixels) are reported by name and skipped; the run goes on
and the exit code is 1 when any image failed, 2 when nothing could start (bad weights or no
input), 0 otherwise.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..io import DEFAULT_MAX_PIXELS, ImageLoadError, expand_sources, load_image, write_json_atomic
from .api import DEFAULT_BATCH_SIZE, Result, load_model
from .outputs import masks_to_rles, rle_to_mask, write_coco_json, write_image, write_label_map_png, write_rle_csv

__all__ = ["build_parser", "main", "output_names"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maskrcnn predict",
        description="Run Mask R-CNN on images; write COCO results JSON, overlays, label maps, RLE CSV.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="image files, folders or glob patterns ('**' recurses)")
    p.add_argument("-w", "--weights", required=True,
                   help="model.safetensors (with its .json), a torchvision .pth/.safetensors, or "
                        "torchvision:maskrcnn_resnet50_fpn / torchvision:maskrcnn_resnet50_fpn_v2")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--score-threshold", type=float, default=0.5, help="keep detections scoring above this")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="mask pixel = probability >= this")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this (0: no limit)")
    p.add_argument("--label-maps", action="store_true", help="also write DIR/label_maps/NAME.png")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write a Kaggle-style RLE CSV (ImageId = NAME)")
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay images")
    p.add_argument("--variant", choices=("v1", "v2"), help="layout of a torchvision checkpoint (default: inferred)")
    p.add_argument("--coco-ann", type=Path, metavar="ANN.json",
                   help="take image ids (matched by file name) and category ids (matched by class "
                        "name) from this COCO annotation file, so results.json evaluates against it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def output_names(paths: list[Path]) -> list[str]:
    """A distinct file-name stem per input: the stem, else stem_ext, else stem_2, stem_3...
    (a/x.jpg and b/x.jpg must not overwrite each other's overlay)."""
    taken: set[str] = set()
    names = []
    for path in paths:
        base = path.stem or path.name
        name = base
        if name in taken and path.suffix:
            name = f"{base}_{path.suffix.lstrip('.')}"
        n = 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        names.append(name)
    return names


def coco_ids(ann_file: Path, paths: list[Path], class_names: list[str] | None) -> tuple[list[Any], dict[int, int]]:
    """(image id per path, label -> category id) from a COCO annotation file."""
    from ..data import read_coco_json

    data = read_coco_json(ann_file)
    by_name: dict[str, Any] = {}
    for img in data["images"]:
        by_name.setdefault(str(img["file_name"]).replace("\\", "/"), img["id"])
        by_name.setdefault(Path(str(img["file_name"])).name, img["id"])
    image_ids = []
    for path in paths:
        # the longest trailing part of the path that is a file_name: "train/001.jpg" before "001.jpg"
        parts = path.as_posix().split("/")
        keys = ("/".join(parts[k:]) for k in range(len(parts)))
        image_ids.append(next((by_name[key] for key in keys if key in by_name), None))
    missing = [str(p) for p, i in zip(paths, image_ids) if i is None]
    if missing:
        raise ValueError(f"{ann_file}: no image entry for {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''} (matched by file_name)")
    categories = {c["name"]: c["id"] for c in data["categories"]}
    if class_names is None:
        raise ValueError("--coco-ann needs a model with class names to match categories by name")
    unknown = [n for n in class_names if n not in categories and n != "N/A"]
    if unknown:
        raise ValueError(f"{ann_file}: no category named {', '.join(map(repr, unknown[:5]))}")
    return image_ids, {i + 1: categories[n] for i, n in enumerate(class_names) if n in categories}


def instance_rles(result: Result) -> list[dict]:
    """COCO RLEs of the result's masks made disjoint by the label map (Kaggle submissions
    require non-overlapping masks); instances left with no pixel are dropped."""
    if result.masks is None or len(result) == 0:
        return []
    lm = result.label_map
    ids = torch.arange(1, len(result) + 1, dtype=lm.dtype)
    disjoint = (lm[None] == ids[:, None, None]).numpy()  # (R, H, W) bool
    keep = disjoint.reshape(len(result), -1).any(axis=1)
    return masks_to_rles(disjoint[keep]) if keep.any() else []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if args.batch_size < 1:
        say("maskrcnn predict: --batch-size must be at least 1")
        return 2
    try:
        paths = expand_sources(args.sources)
    except FileNotFoundError as e:
        say(f"maskrcnn predict: {e}")
        return 2
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUDA is not available here (use --device cpu)")
    except (RuntimeError, ValueError) as e:
        say(f"maskrcnn predict: --device {args.device}: {e}")
        return 2
    try:
        predictor = load_model(args.weights, device=args.device, variant=args.variant,
                               max_pixels=args.max_pixels or None)
    except Exception as e:  # any load failure is the user's input; show it without a traceback
        say(f"maskrcnn predict: cannot load --weights {args.weights}: {e}")
        return 2
    names = output_names(paths)
    image_ids: list[Any] = list(range(1, len(paths) + 1))
    if args.coco_ann is not None:
        try:
            image_ids, predictor.category_ids = coco_ids(args.coco_ann, paths, predictor.class_names)
        except (ValueError, OSError) as e:
            say(f"maskrcnn predict: {e}")
            return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    coco: list[dict] = []
    images: list[dict] = []
    csv_rows: list[tuple[str, list[dict]]] = []
    failed: list[tuple[str, str]] = []
    detections = 0
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=args.quiet or None, file=sys.stderr)
    for first in range(0, len(paths), args.batch_size):
        chunk = range(first, min(first + args.batch_size, len(paths)))
        loaded, indices = [], []
        for i in chunk:
            try:
                loaded.append(load_image(paths[i], max_pixels=predictor.max_pixels))
                indices.append(i)
            except ImageLoadError as e:
                failed.append((str(paths[i]), e.problem))
                bar.write(f"skipped {paths[i]}: {e.problem}", file=sys.stderr)
        results = predictor.predict_tensors(
            loaded, [str(paths[i]) for i in indices], args.score_threshold, args.mask_threshold,
            args.batch_size, keep_images=not args.no_overlays,
        ) if loaded else []
        for i, result in zip(indices, results):
            detections += len(result)
            coco.extend(result.to_coco(image_ids[i]))
            height, width = result.image_size
            images.append({"id": image_ids[i], "file_name": str(paths[i]), "height": height, "width": width})
            if not args.no_overlays:
                write_image(out / "overlays" / f"{names[i]}.png", result.draw())
            if args.label_maps:
                write_label_map_png(out / "label_maps" / f"{names[i]}.png", result.label_map.numpy())
            if args.csv is not None:
                csv_rows.append((names[i], instance_rles(result)))
        bar.update(len(chunk))
        bar.set_postfix(detections=detections, failed=len(failed), refresh=False)
    bar.close()

    write_coco_json(out / "results.json", coco)
    write_json_atomic(images, out / "images.json", indent=0)
    if args.csv is not None:
        write_rle_csv(args.csv, _csv_masks(csv_rows))
    seconds = time.perf_counter() - start
    done = len(paths) - len(failed)
    say(f"{done} image(s), {detections} detection(s) in {seconds:.1f} s -> {out}"
        + (f"; CSV {args.csv}" if args.csv is not None else ""))
    if failed:
        say(f"{len(failed)} image(s) failed:")
        for path, problem in failed:
            say(f"  {path}: {problem}")
        return 1
    return 0


def _csv_masks(rows: list[tuple[str, list[dict]]]):
    """(image id, one (H, W) mask or None) per CSV row; decoded one at a time so the whole
    run's masks never sit in memory together."""
    for name, rles in rows:
        if not rles:
            yield name, None  # Kaggle's "no object in this image" row
        for rle in rles:
            yield name, rle_to_mask(rle)


if __name__ == "__main__":
    sys.exit(main())
