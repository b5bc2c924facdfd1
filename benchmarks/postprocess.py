"""Post-processing speed: the mask branch on returned detections only, and vectorized pasting.

    python benchmarks/postprocess.py [--repeats 3] [--threads 2]

Model: ResNet-50-FPN Mask R-CNN (torchvision v1 layout) with the parity fixtures' recipe
weights (tests/fixtures/torchvision_parity, no download), box_score_thresh 0.05 as published;
image: the fixtures' coffee.png (400 x 600, resized to 800 x 1200). The recipe weights give
realistic counts: 100 detections above 0.05, a quarter of them above 0.5.

Rows (median seconds over --repeats after one warm-up, baseline and ours in the same process):
  1. second stage (box head, box post-processing, mask head, paste) with the caller's 0.5
     applied before the mask head (ours) vs. at the model's 0.05 and filtered after (baseline);
  2. the mask head + paste part alone, same two counts;
  3. the whole forward pass, same two settings;
  4. pasting the 100 masks: one vectorized call (ours) vs. one F.interpolate per mask
     (torchvision's loop; the baseline).
The mask head row is also set against the machine's float32 matmul rate (its FLOPs / rate =
the physical limit) to say how far it is from it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn.checkpoint import from_torchvision  # noqa: E402
from maskrcnn.checkpoint.seeded import seeded_state_dict  # noqa: E402
from maskrcnn.ops import paste_masks  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "torchvision_parity"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and oneDNN primitive creation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_time(lambda: a @ b, repeats) / 1e9


def mask_head_flops(model) -> float:
    """Multiply-adds x 2 of the mask head for one RoI (convs at 14x14, deconv, 1x1 predictor)."""
    head = model.roi_heads.mask_head
    flops, side = 0.0, int(model.roi_heads.mask_pooler.output_size)
    for block in head.convs:
        w = block.conv.weight
        flops += 2 * w.numel() * side * side
    flops += 2 * head.deconv.weight.numel() * side * side  # each input pixel feeds a 2x2 patch
    flops += 2 * head.predictor.weight.numel() * (2 * side) ** 2
    return flops


def paste_loop(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], padding: int = 1):
    """torchvision's paste_masks_in_image: one F.interpolate per mask (the baseline)."""
    im_h, im_w = image_size
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    padded = F.pad(masks, (padding,) * 4)
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c, y_c = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).to(torch.int64)
    out = torch.zeros((masks.shape[0], im_h, im_w), dtype=masks.dtype)
    for i in range(masks.shape[0]):
        x0, y0, x1, y1 = expanded[i].tolist()
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, im_w), max(y0, 0), min(y1 + 1, im_h)
        if xb > xa and yb > ya:
            out[i, ya:yb, xa:xb] = resized[ya - y0:yb - y0, xa - x0:xb - x0]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    keys = json.loads((FIXTURES / "v1_keys.json").read_text())
    model = from_torchvision(seeded_state_dict(keys), "v1", box_score_thresh=0.05).eval()
    image = torch.from_numpy(np.array(Image.open(FIXTURES / "coffee.png").convert("RGB"))).permute(2, 0, 1).float() / 255
    original = tuple(image.shape[-2:])
    own, high = model.roi_heads.score_thresh, args.score_threshold

    with torch.inference_mode():
        image_list, _ = model.preprocess([image])
        roi_features, proposals, _ = model.propose(image_list)
        sizes = image_list.image_sizes

        def second_stage(thresh):
            detections = model.roi_heads.detect(roi_features, proposals, sizes, thresh)
            return model.postprocess(detections, sizes, [original])[0]

        everything = second_stage(own)
        kept = second_stage(high)
        # the two paths must agree on what is returned: same boxes, scores, labels and masks
        keep = everything.scores > high
        assert torch.equal(kept.boxes, everything.boxes[keep]) and torch.equal(kept.labels, everything.labels[keep])
        assert torch.allclose(kept.masks, everything.masks[keep], atol=1e-5)
        n_all, n_kept = len(everything), len(kept)

        def mask_branch(det):
            # boxes of the detections back in resized coordinates, as the mask head sees them
            boxes = det.boxes * torch.tensor([sizes[0][1] / original[1], sizes[0][0] / original[0]] * 2)
            probs = model.roi_heads.mask_logits(roi_features, [boxes], det.labels).sigmoid()
            return paste_masks(probs, det.boxes, original)

        rows = []
        baseline = median_time(lambda: (lambda d: d.masks[d.scores > high])(second_stage(own)), args.repeats)
        ours = median_time(lambda: second_stage(high), args.repeats)
        rows.append(("second stage, score > 0.5 before vs after the mask head", ours, baseline))
        t_mask_ours = median_time(lambda: mask_branch(kept), args.repeats)
        t_mask_base = median_time(lambda: mask_branch(everything), args.repeats)
        rows.append((f"mask head + paste only ({n_kept} vs {n_all} RoIs)", t_mask_ours, t_mask_base))
        full_base = median_time(lambda: model([image]), args.repeats)
        full_ours = median_time(lambda: model([image], score_thresh=high), args.repeats)
        rows.append(("whole forward pass", full_ours, full_base))

        probs28 = torch.rand(n_all, 28, 28, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(paste_masks(probs28, everything.boxes, original),
                              paste_loop(probs28, everything.boxes, original), atol=1e-5)
        t_vec = median_time(lambda: paste_masks(probs28, everything.boxes, original), args.repeats)
        t_loop = median_time(lambda: paste_loop(probs28, everything.boxes, original), args.repeats)
        rows.append((f"paste {n_all} masks into {original[0]}x{original[1]}: vectorized vs loop", t_vec, t_loop))

        rate = matmul_gflops()
        head_flops = mask_head_flops(model)
        t_head = median_time(lambda: model.roi_heads.mask_logits(roi_features, [everything.boxes], everything.labels),
                             args.repeats)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; load average {load:.1f} (other processes skew timings)")
    print(f"model: ResNet-50-FPN v1, fixture recipe weights; image coffee.png {original[0]}x{original[1]} "
          f"-> {sizes[0][0]}x{sizes[0][1]}; detections: {n_all} above {own:g}, {n_kept} above {high:g}")
    print(f"median of {args.repeats} runs\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'ours (s)':>9}  {'baseline (s)':>12}  {'ratio':>6}")
    for name, a, b in rows:
        print(f"{name:<{width}}  {a:9.3f}  {b:12.3f}  {b / a:5.2f}x")
    limit = n_all * head_flops / (rate * 1e9)
    print(f"\nmask head on {n_all} RoIs: {t_head:.3f} s for {n_all * head_flops / 1e9:.1f} GFLOP; float32 matmul "
          f"rate {rate:.0f} GFLOP/s -> limit {limit:.3f} s ({limit / t_head:.0%} of it reached)")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": cpu_name(), "threads": torch.get_num_threads(), "detections": [n_all, n_kept],
            "rows": [{"name": n, "ours_s": a, "baseline_s": b, "ratio": b / a} for n, a, b in rows],
            "mask_head_s": t_head, "mask_head_gflop": n_all * head_flops / 1e9, "matmul_gflops": rate,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
