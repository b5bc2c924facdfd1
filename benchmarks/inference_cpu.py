"""CPU inference speed of v1 Mask R-CNN R50-FPN, per stage, against the machine's FLOP floor.

    python benchmarks/inference_cpu.py [--threads 2] [--runs 5] [--score-thresh 0.05]

Weights: the torchvision parity fixture's recipe (tests/fixtures/torchvision_parity), so the
detections (and the mask branch's work) look like a trained model's. Input: coffee.png, which the
transform resizes to 800 x 1200 (batch 800 x 1216). The floor is the model's FLOPs (counted on this
very run with torch.utils.flop_counter) over the measured float32 matmul rate; "x floor" is how
many times slower than that we are. The baseline row is torchvision 0.28's own model on this
machine class, as measured by the project (not re-measured here: torchvision has no CPU build on
these machines).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import maskrcnn  # noqa: E402
from maskrcnn.checkpoint.seeded import seeded_state_dict  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "torchvision_parity"
TORCHVISION_REFERENCE_S = 3.5  # torchvision 0.28 maskrcnn_resnet50_fpn, 2 threads, this image
STAGES = ["transform", "backbone+FPN", "RPN", "box branch", "mask branch", "paste"]


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GEMM rate in FLOP/s on this machine with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b))[1] for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_stages(model, image, count_flops: bool = False):
    """One inference pass, stage by stage (the same calls `MaskRCNN.forward` makes).
    Returns per-stage seconds (or FLOPs, with count_flops) and the number of detections."""
    times = {}
    if count_flops:
        def _timed(fn):
            with FlopCounterMode(display=False) as counter:
                result = fn()
            return result, counter.get_total_flops()
    else:
        _timed = globals()["_timed"]
    rh = model.roi_heads
    image_list, times["transform"] = _timed(lambda: model.transform([image])[0])
    features, times["backbone+FPN"] = _timed(lambda: model.backbone(image_list.tensor))
    (proposals, _), times["RPN"] = _timed(lambda: model.rpn(image_list, features))
    roi_features = features[:4]

    def box_branch():
        from maskrcnn.modeling.roi_heads.box_head import postprocess_boxes

        class_logits, deltas = rh.box_predictor(rh.box_head(rh.box_pooler(roi_features, proposals)))
        return postprocess_boxes(class_logits, deltas, proposals, image_list.image_sizes, rh.box_coder,
                                 rh.score_thresh, rh.nms_thresh, rh.detections_per_img)

    boxes, times["box branch"] = _timed(box_branch)
    b, s, l = boxes[0]
    masks, times["mask branch"] = _timed(lambda: rh.mask_logits(roi_features, [b], l).sigmoid())
    _, times["paste"] = _timed(
        lambda: model.to_original_size((b, s, l, masks), image_list.image_sizes[0], tuple(image.shape[-2:]), True)
    )
    return times, len(b)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--score-thresh", type=float, default=0.05)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    keys = json.loads((FIXTURE / "v1_keys.json").read_text())
    model = maskrcnn.from_torchvision(seeded_state_dict(keys), "v1", box_score_thresh=args.score_thresh)
    array = np.array(Image.open(FIXTURE / "coffee.png").convert("RGB"))
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255

    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model([image])
        flops = counter.get_total_flops()
        stage_flops, _ = run_stages(model, image, count_flops=True)
        run_stages(model, image)  # warm-up
        per_run, totals = [], []
        for _ in range(args.runs):
            _, total = _timed(lambda: model([image]))
            totals.append(total)
            per_run.append(run_stages(model, image))
    rate = matmul_rate()
    floor = flops / rate
    median_total = statistics.median(totals)
    stage_median = {k: statistics.median(t[k] for t, _ in per_run) for k in STAGES}
    detections = per_run[-1][1]

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, float32; coffee.png -> 800 x 1200; {detections} detections "
          f"(score > {args.score_thresh})")
    print(f"model FLOPs: {flops / 1e9:.1f} GFLOP; matmul rate: {rate / 1e9:.1f} GFLOP/s; floor: {floor:.2f} s")
    print()
    print(f"| {'stage':<14} | {'median s':>8} | {'share':>6} | {'GFLOP':>6} | {'floor s':>7} | {'x floor':>7} |")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 9}|")
    for k in STAGES:
        stage_floor = stage_flops[k] / rate
        ratio = f"{stage_median[k] / stage_floor:7.2f}" if stage_floor > 0 else f"{'-':>7}"
        print(f"| {k:<14} | {stage_median[k]:8.3f} | {stage_median[k] / sum(stage_median.values()):6.1%} | "
              f"{stage_flops[k] / 1e9:6.1f} | {stage_floor:7.3f} | {ratio} |")
    print()
    print(f"| {'model':<34} | {'s / image':>9} | {'x floor':>7} | {'vs ours':>7} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    print(f"| {'maskrcnn (this run, median)':<34} | {median_total:9.3f} | {median_total / floor:7.2f} | {1.0:7.2f} |")
    print(f"| {'torchvision 0.28 (reference figure)':<34} | {TORCHVISION_REFERENCE_S:9.3f} | "
          f"{TORCHVISION_REFERENCE_S / floor:7.2f} | {TORCHVISION_REFERENCE_S / median_total:7.2f} |")
    print(f"| {'FLOP floor (FLOPs / matmul rate)':<34} | {floor:9.3f} | {1.0:7.2f} | {floor / median_total:7.2f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "seconds_per_image": median_total, "runs": totals, "stages": stage_median, "gflop": flops / 1e9,
            "stage_gflop": {k: v / 1e9 for k, v in stage_flops.items()},
            "matmul_gflops": rate / 1e9, "floor_s": floor, "ratio_to_floor": median_total / floor,
            "detections": detections, "threads": args.threads,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
