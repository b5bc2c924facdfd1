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


# Stages inside `MaskRCNN.detect`, as (module whose forward starts the stage, module whose forward
# ends it); "box branch" is the RoI heads' time less the mask branch's.
HOOKED = {
    "backbone+FPN": ("backbone", "backbone"),
    "RPN": ("rpn", "rpn"),
    "roi heads": ("roi_heads", "roi_heads"),
    "mask branch": ("roi_heads.mask_pooler", "roi_heads.mask_head"),
}


def stage_times(model, image):
    """One pass of the staged inference path (preprocess -> detect -> postprocess), timed per
    stage; stages inside `detect` are read with forward hooks. Returns seconds per stage and
    the number of detections."""
    times, starts, hooks = {}, {}, []
    for stage, (first, last) in HOOKED.items():
        hooks.append(model.get_submodule(first).register_forward_pre_hook(
            lambda *_, stage=stage: starts.__setitem__(stage, time.perf_counter())))
        hooks.append(model.get_submodule(last).register_forward_hook(
            lambda *_, stage=stage: times.__setitem__(stage, time.perf_counter() - starts[stage])))
    try:
        (batch, _), times["transform"] = _timed(lambda: model.preprocess([image]))
        detections = model.detect(batch)
        _, times["paste"] = _timed(lambda: model.postprocess(detections, batch.image_sizes, [tuple(image.shape[-2:])]))
    finally:
        for hook in hooks:
            hook.remove()
    times["box branch"] = times.pop("roi heads") - times["mask branch"]
    return times, len(detections[0])


def stage_flops(model, image) -> dict[str, float]:
    """FLOPs per stage, from one forward under torch's FLOP counter (counted per module)."""
    with FlopCounterMode(display=False) as counter:
        model([image])
    per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    root = type(model).__name__
    flops = {stage: per_module.get(f"{root}.{first}", 0.0) for stage, (first, _) in HOOKED.items()}
    flops["mask branch"] += per_module.get(f"{root}.roi_heads.mask_head", 0.0)
    flops["box branch"] = flops.pop("roi heads") - flops["mask branch"]
    flops["transform"] = per_module.get(f"{root}.transform", 0.0)
    flops["paste"] = per_module["Global"] - sum(flops.values())
    return flops


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
        flops_per_stage = stage_flops(model, image)
        flops = sum(flops_per_stage.values())
        stage_times(model, image)  # warm-up
        per_run, totals = [], []
        for _ in range(args.runs):
            _, total = _timed(lambda: model([image]))
            totals.append(total)
            per_run.append(stage_times(model, image))
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
        stage_floor = flops_per_stage[k] / rate
        ratio = f"{stage_median[k] / stage_floor:7.2f}" if stage_floor > 0 else f"{'-':>7}"
        print(f"| {k:<14} | {stage_median[k]:8.3f} | {stage_median[k] / sum(stage_median.values()):6.1%} | "
              f"{flops_per_stage[k] / 1e9:6.1f} | {stage_floor:7.3f} | {ratio} |")
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
            "stage_gflop": {k: v / 1e9 for k, v in flops_per_stage.items()},
            "matmul_gflops": rate / 1e9, "floor_s": floor, "ratio_to_floor": median_total / floor,
            "detections": detections, "threads": args.threads,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
