"""bf16 against fp32 on the CPU: are the detections the same, and how much faster is it?

    python benchmarks/precision.py [--threads 2] [--iterations 600] [--run DIR] [--skip-shapes | --skip-coffee]

1. Trained weights: trains the demo's shapes model (`maskrcnn demo`'s config; or reuses
   `--run DIR` from an earlier run of this script or of `maskrcnn demo --out DIR`) and evaluates
   it on the held-out shapes images in fp32 and in bf16 (`model.precision`): mask and box AP, the
   share of fp32 detections with a bf16 detection of the same label at box IoU >= 0.9, and the
   share of those pairs whose masks (>= 0.5) have IoU >= 0.95.
2. The parity fixture's seeded R50 weights on coffee.png at 800 x 1200: the same match figures,
   beside the same figures for fp32 on the image plus Gaussian noise of a quarter and of one
   8-bit grey level. Seeded weights are not trained: their detections change with a quarter of
   a grey level of noise, so they say little about bf16 (the yardstick rows show how little).
   Times are medians of alternating fp32 / bf16 runs in this process.

Measured 2026-12-02 (`--threads 1 --iterations 1000 --run DIR`, torch 2.13.0): the shapes model
(mask AP 0.736 fp32) loses 0.0048 mask AP in bf16 (0.7313); 97.1 % of fp32 detections have a bf16
match, with mean mask IoU 0.975 (86.7 % of pairs >= 0.95); on 40 photo-sized 480 x 640 shapes
images 96.3 % match, mean mask IoU 0.977 (95.7 % of pairs >= 0.95). bf16 is slower than fp32 on
this tiny 128-px model (0.159 vs 0.037 s / image: autocast's casts outweigh its small convs); on
R50 at 800 x 1200 it is 0.48-0.51x fp32. The seeded R50 rows: bf16 matches 59 %, fp32 plus a
quarter grey level of noise 95 %, plus one grey level 83 %: untrained weights are chaotic.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import maskrcnn  # noqa: E402
from maskrcnn.checkpoint import load_native  # noqa: E402
from maskrcnn.checkpoint.seeded import seeded_state_dict  # noqa: E402
from maskrcnn.data import CocoDataset  # noqa: E402
from maskrcnn.evaluation.coco_evaluator import COCOEvaluator  # noqa: E402
from maskrcnn.evaluation.evaluate import label_mapping, run_evaluation  # noqa: E402
from maskrcnn.ops import box_iou  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "torchvision_parity"


def match_rates(reference, other) -> tuple[float, float, int, float]:
    """(share of `reference` detections with a same-label `other` detection at box IoU >= 0.9,
    share of those pairs with mask IoU >= 0.95, number of reference detections, mean mask IoU
    of those pairs)."""
    if len(reference) == 0:
        return 1.0, 1.0, 0, 1.0
    if len(other) == 0:
        return 0.0, 0.0, len(reference), 0.0
    iou = box_iou(reference.boxes, other.boxes) * (reference.labels[:, None] == other.labels[None])
    best = iou.max(1)
    matched = best.values >= 0.9
    if not matched.any():
        return 0.0, 0.0, len(reference), 0.0
    a = reference.masks[matched] >= 0.5
    b = other.masks[best.indices[matched]] >= 0.5
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    mask_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return (matched.float().mean().item(), (mask_iou >= 0.95).float().mean().item(), len(reference),
            mask_iou.mean().item())


def pooled(rates: list[tuple[float, float, int, float]]) -> tuple[float, float, float]:
    """Detection-weighted means over images: (matched share, share of matched pairs with mask
    IoU >= 0.95, mean mask IoU of matched pairs)."""
    total = sum(r[2] for r in rates) or 1
    pairs = max(sum(r[0] * r[2] for r in rates), 1e-9)
    box = sum(r[0] * r[2] for r in rates) / total
    mask = sum(r[0] * r[1] * r[2] for r in rates) / pairs
    mean_iou = sum(r[0] * r[3] * r[2] for r in rates) / pairs
    return box, mask, mean_iou


def trained_model(args) -> tuple[Path, Path]:
    run = args.run or Path("precision_run")
    weights, val = run / "train" / "model_final.safetensors", run / "data" / "val" / "annotations.json"
    if not weights.is_file():
        from maskrcnn.engine.demo import main as demo

        print(f"training the shapes model into {run} ({args.iterations} iterations) ...", flush=True)
        demo(["--out", str(run), "--iterations", str(args.iterations), "--overlays", "0",
              "--threads", str(args.threads), "train.progress=false", "train.tensorboard=false"])
    return weights, val


def shapes_rows(args) -> list[tuple]:
    weights, val = trained_model(args)
    model = load_native(weights)
    dataset = CocoDataset(val, val.parent / "images")
    evaluator = COCOEvaluator(val, label_to_category_id=label_mapping(model, dataset), class_names=dataset.class_names)
    rows, detections, seconds = [], {}, {"fp32": [], "bf16": []}
    for precision in ("fp32", "bf16"):
        model.precision = precision
        start = time.perf_counter()
        results = run_evaluation(model, dataset, evaluator)
        seconds[precision] = (time.perf_counter() - start) / len(dataset)
        with torch.no_grad():
            detections[precision] = [model([dataset[i][0]]).detections[0] for i in range(len(dataset))]
        rows.append((precision, results["segm"]["AP"], results["segm"]["AP50"], results["bbox"]["AP"]))
    rates = pooled([match_rates(a, b) for a, b in zip(detections["fp32"], detections["bf16"])])
    return rows, rates, seconds, len(dataset), model


def large_image_rates(model, count: int = 40, size: tuple[int, int] = (480, 640)) -> tuple[float, float, float]:
    """fp32 against bf16 on photo-sized shapes images (480 x 640, shapes 4-5x the training
    size): the model resizes them to its own input size, and the masks are pasted back at full
    size, where a changed logit shows as changed pixels."""
    import tempfile

    from maskrcnn.data import generate_shapes_dataset

    with tempfile.TemporaryDirectory() as folder:
        annotations = generate_shapes_dataset(Path(folder), count, seed=123, image_size=size,
                                              size_range=(40, 200), empty_fraction=0.0)
        dataset = CocoDataset(annotations, annotations.parent / "images")
        images = [dataset[i][0] for i in range(count)]
    detections = {}
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            model.precision = precision
            detections[precision] = [model([image]).detections[0] for image in images]
    model.precision = "fp32"
    return pooled([match_rates(a, b) for a, b in zip(detections["fp32"], detections["bf16"])])


def coffee_rows(args) -> list[tuple]:
    keys = json.loads((FIXTURE / "v1_keys.json").read_text())
    model = maskrcnn.from_torchvision(seeded_state_dict(keys), "v1", box_score_thresh=0.05)
    array = np.array(Image.open(FIXTURE / "coffee.png").convert("RGB"))
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    times = {"fp32": [], "bf16": []}
    out = {}
    with torch.no_grad():
        for precision in times:  # warm-up
            model.precision = precision
            model([image])
        for _ in range(args.runs):
            for precision in times:
                model.precision = precision
                start = time.perf_counter()
                out[precision] = model([image]).detections[0]
                times[precision].append(time.perf_counter() - start)
        model.precision = "fp32"
        generator = torch.Generator().manual_seed(0)
        noise = {grey: model([(image + grey / 255 * torch.randn(image.shape, generator=generator)).clamp(0, 1)]).detections[0]
                 for grey in (0.25, 1.0)}
    rows = [("bf16", *match_rates(out["fp32"], out["bf16"])[:2])]
    rows += [(f"fp32 + noise {grey:g} grey level", *match_rates(out["fp32"], det)[:2]) for grey, det in noise.items()]
    return rows, {k: statistics.median(v) for k, v in times.items()}, len(out["fp32"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per precision on coffee.png")
    parser.add_argument("--iterations", type=int, default=600, help="training iterations of the shapes model")
    parser.add_argument("--run", type=Path, help="folder of the shapes run (trained here when it has no weights)")
    parser.add_argument("--skip-shapes", action="store_true")
    parser.add_argument("--skip-coffee", action="store_true", help="skip the seeded R50 part")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, bf16 = CPU autocast (model.precision)")

    if not args.skip_shapes:
        rows, (box, mask, mean_iou), seconds, n, model = shapes_rows(args)
        print(f"\nshapes model on {n} held-out images")
        print("| precision | mask AP | mask AP50 | box AP | s / image (eval) |")
        print("|---|---|---|---|---|")
        for precision, ap, ap50, box_ap in rows:
            print(f"| {precision} | {ap:.4f} | {ap50:.4f} | {box_ap:.4f} | {seconds[precision]:.3f} |")
        print(f"mask AP difference bf16 - fp32: {rows[1][1] - rows[0][1]:+.4f}; fp32 detections matched by "
              f"bf16 (label, box IoU >= 0.9): {box:.1%}; of those, mask IoU >= 0.95: {mask:.1%}, "
              f"mean mask IoU {mean_iou:.4f}")
        box, mask, mean_iou = large_image_rates(model)
        print(f"the same model on 40 photo-sized (480 x 640) shapes images, masks at full size: matched "
              f"{box:.1%}; of those, mask IoU >= 0.95: {mask:.1%}, mean mask IoU {mean_iou:.4f}")

    if args.skip_coffee:
        return 0
    rows, times, n = coffee_rows(args)
    print(f"\nseeded R50 (parity fixture recipe) on coffee.png -> 800 x 1200, {n} fp32 detections (score > 0.05)")
    print("| against fp32 | matched (label, IoU >= 0.9) | mask IoU >= 0.95 |")
    print("|---|---|---|")
    for name, box, mask in rows:
        print(f"| {name} | {box:.1%} | {mask:.1%} |")
    print(f"median s / image: fp32 {times['fp32']:.3f}, bf16 {times['bf16']:.3f} "
          f"(bf16 / fp32 = {times['bf16'] / times['fp32']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
