"""bf16 against fp32 on the CPU: are the detections the same, and how much faster is it?

    python benchmarks/precision.py [--threads 2] [--iterations 600] [--run DIR]

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


def match_rates(reference, other) -> tuple[float, float, int]:
    """(share of `reference` detections with a same-label `other` detection at box IoU >= 0.9,
    share of those pairs with mask IoU >= 0.95, number of reference detections)."""
    if len(reference) == 0:
        return 1.0, 1.0, 0
    if len(other) == 0:
        return 0.0, 0.0, len(reference)
    iou = box_iou(reference.boxes, other.boxes) * (reference.labels[:, None] == other.labels[None])
    best = iou.max(1)
    matched = best.values >= 0.9
    if not matched.any():
        return 0.0, 0.0, len(reference)
    a = reference.masks[matched] >= 0.5
    b = other.masks[best.indices[matched]] >= 0.5
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    mask_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return matched.float().mean().item(), (mask_iou >= 0.95).float().mean().item(), len(reference)


def pooled(rates: list[tuple[float, float, int]]) -> tuple[float, float]:
    """Detection-weighted means over images."""
    total = sum(n for *_, n in rates) or 1
    box = sum(r * n for r, _, n in rates) / total
    mask = sum(r * m * n for r, m, n in rates) / max(sum(r * n for r, _, n in rates), 1e-9)
    return box, mask


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
    box, mask = pooled([match_rates(a, b) for a, b in zip(detections["fp32"], detections["bf16"])])
    return rows, box, mask, seconds, len(dataset)


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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, bf16 = CPU autocast (model.precision)")

    if not args.skip_shapes:
        rows, box, mask, seconds, n = shapes_rows(args)
        print(f"\nshapes model on {n} held-out images")
        print("| precision | mask AP | mask AP50 | box AP | s / image (eval) |")
        print("|---|---|---|---|---|")
        for precision, ap, ap50, box_ap in rows:
            print(f"| {precision} | {ap:.4f} | {ap50:.4f} | {box_ap:.4f} | {seconds[precision]:.3f} |")
        print(f"mask AP difference bf16 - fp32: {rows[1][1] - rows[0][1]:+.4f}; fp32 detections matched by "
              f"bf16 (label, box IoU >= 0.9): {box:.1%}; of those, mask IoU >= 0.95: {mask:.1%}")

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
