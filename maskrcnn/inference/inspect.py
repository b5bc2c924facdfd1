"""`maskrcnn inspect`: look inside the model on one training image, as the original Mask R-CNN
release's inspect_data / inspect_model notebooks did.

    maskrcnn inspect --data ANN.json --images DIR [--image-id ID] [--weights W | --preset NAME] --out DIR

writes, on the image as the network sees it (resized; every box in those coordinates):

    anchors.png       the anchors of the grid cell nearest the image centre on each level
                      (P2..P6, or a C4 model's one map with its 15 anchors per cell; one color
                      per level, all aspect ratios), and every anchor the RPN
                      would train as positive (IoU >= 0.7 with a ground truth, or a ground
                      truth's best anchor), in its level's color; ground truth in white
    proposals.png     the top RPN proposals (brightest = highest objectness) and the ground truth
    rois.png          the second stage's training sample: positive RoIs (IoU >= 0.5, green) and
                      negative ones (red), drawn from the proposals plus the ground-truth boxes
    mask_targets.png  per positive RoI: the image crop and its mask target side by side, at the
                      mask head's resolution (28x28; a C4 model's 14x14)

Proposals come from the model in eval mode (top 1000 after NMS); RoI sampling is the training
rule (512 RoIs, 25 % positive), seeded by --seed. An untrained model (--preset) shows what
training starts from; --weights shows a trained one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ..cli import HelpFormatter
from ..modeling.mask_rcnn import MaskRCNN
from ..modeling.matcher import match_to_gt
from ..ops import mask_targets, roi_align
from .draw import _font, instance_colors
from .outputs import write_image as save_png

__all__ = ["build_parser", "inspect_sample", "main"]

WHITE, GREEN, RED = (255, 255, 255), (40, 220, 60), (235, 50, 40)
TILE = 84  # 28 x 3: a mask target cell is visible without blurring


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maskrcnn inspect",
        description="Draw anchors, RPN proposals, sampled RoIs and 28x28 mask targets for one training image.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="COCO instances JSON")
    p.add_argument("--images", required=True, type=Path, help="folder the JSON's file_names are relative to")
    p.add_argument("--image-id", type=int, help="COCO image id (default: the first image with annotations)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--weights", help="a checkpoint load_model reads (a file, or torchvision:NAME / detectron2:NAME)")
    group.add_argument("--preset", default="maskrcnn_resnet50_fpn", help="an untrained model of this preset")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--proposals", type=int, default=50, help="how many top proposals to draw")
    p.add_argument("--max-masks", type=int, default=32, help="how many mask targets to show")
    p.add_argument("--seed", type=int, default=0, help="seed of the RoI sampling")
    return p


def _to_uint8(image: Tensor) -> np.ndarray:
    """float (3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _boxes(draw: ImageDraw.ImageDraw, boxes: Tensor, color, width: int = 1) -> None:
    for x1, y1, x2, y2 in boxes.tolist():
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=color, width=width)


def _caption(canvas: Image.Image, lines: list[tuple[str, tuple[int, int, int]]]) -> None:
    """Legend lines at the top-left, on a dark band so they read on any image."""
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, canvas.height // 40))
    y = 2
    for text, color in lines:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.rectangle((0, y, right - left + 6, y + bottom - top + 4), fill=(0, 0, 0))
        draw.text((3 - left, y + 2 - top), text, font=font, fill=color)
        y += bottom - top + 5


@torch.no_grad()
def inspect_sample(
    model: MaskRCNN,
    image: Tensor,
    target: dict,
    out_dir: str | Path,
    *,
    num_proposals: int = 50,
    max_masks: int = 32,
    seed: int = 0,
) -> dict:
    """Write the four PNGs for one (image, target) pair from a `CocoDataset`; return counts.

    image: float32 (3, H, W) in [0, 1]; target: boxes (G, 4), labels (G,), masks (G, H, W),
    iscrowd (G,) as the dataset gives them.
    """
    out_dir = Path(out_dir)
    model = model.eval()
    device = next(model.parameters()).device
    target = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in target.items()}
    image_list, (resized,) = model.preprocess([image.to(device)], [target])
    h, w = image_list.image_sizes[0]
    t = model.transform
    # undo the normalization to draw on the pixels the network sees
    pixels = (image_list.tensor[0, :, :h, :w] * t.image_std + t.image_mean).clamp(0, 1)
    base = _to_uint8(pixels)
    crowd = resized.get("iscrowd", torch.zeros_like(resized["labels"])).bool()
    gt_boxes, gt_masks = resized["boxes"][~crowd], resized["masks"][~crowd]
    stats: dict = {"image_id": target.get("image_id"), "resized_size": [h, w], "gt": int(gt_boxes.shape[0])}

    features, proposals, _ = model.propose(image_list)
    feature_sizes = [tuple(f.shape[-2:]) for f in features]
    anchors = model.rpn.anchor_generator(tuple(image_list.tensor.shape[-2:]), feature_sizes)

    # anchors.png
    canvas = Image.fromarray(base)
    draw = ImageDraw.Draw(canvas)
    colors = [tuple(int(c) for c in rgb) for rgb in instance_colors(len(anchors))]
    all_anchors = torch.cat(anchors)
    matches = match_to_gt(model.rpn.matcher, gt_boxes, resized["boxes"][crowd], all_anchors)
    positive = (matches >= 0).split([a.shape[0] for a in anchors])
    legend, stats["anchors"] = [], []
    for level, (level_anchors, pos, (fh, fw), color) in enumerate(zip(anchors, positive, feature_sizes, colors)):
        name = _level_name(model, level)
        _boxes(draw, level_anchors[pos], color)
        a = level_anchors.shape[0] // (fh * fw)  # anchors per location
        cy, cx = min(int(h / 2 / (h / fh)), fh - 1), min(int(w / 2 / (w / fw)), fw - 1)
        cell = (cy * fw + cx) * a  # anchors are ordered (y, x, anchor)
        _boxes(draw, level_anchors[cell:cell + a], color, width=2)
        size = model.rpn.anchor_generator.sizes[level]  # a number per FPN level; C4's one level has them all
        size = list(size) if isinstance(size, (tuple, list)) else size
        shown = "/".join(f"{s:g}" for s in size) if isinstance(size, list) else f"{size:g}"
        legend.append((f"{name} size {shown}: {fh}x{fw}x{a} anchors, {int(pos.sum())} positive", color))
        stats["anchors"].append({"level": name, "size": size, "grid": [fh, fw],
                                 "count": int(level_anchors.shape[0]), "positive": int(pos.sum())})
    _boxes(draw, gt_boxes, WHITE, width=2)
    _caption(canvas, legend)
    written = [save_png(out_dir / "anchors.png", canvas)]

    # proposals.png
    stats["proposals"] = int(proposals[0].shape[0])
    canvas = Image.fromarray(base)
    draw = ImageDraw.Draw(canvas)
    top = proposals[0][:num_proposals]
    for rank in reversed(range(top.shape[0])):  # best drawn last, on top
        shade = int(255 - 175 * rank / max(1, top.shape[0] - 1))
        _boxes(draw, top[rank:rank + 1], (shade, shade, 0))
    _boxes(draw, gt_boxes, WHITE, width=2)
    _caption(canvas, [(f"top {top.shape[0]} of {stats['proposals']} proposals (bright = best)", (255, 255, 0)),
                      (f"{gt_boxes.shape[0]} ground truth", WHITE)])
    written.append(save_png(out_dir / "proposals.png", canvas))

    # rois.png
    torch.manual_seed(seed)
    rois, labels, matched, _ = model.roi_heads.sample_proposals(proposals, [resized])
    rois, labels, matched = rois[0], labels[0], matched[0]
    pos = labels > 0
    stats["rois"] = {"sampled": int(rois.shape[0]), "positive": int(pos.sum()), "negative": int((~pos).sum())}
    # negatives outnumber positives 3:1 or more; drawn translucent so the positives stay readable
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    _boxes(ImageDraw.Draw(layer), rois[~pos], RED + (110,))
    canvas = Image.alpha_composite(Image.fromarray(base).convert("RGBA"), layer).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    _boxes(draw, rois[pos], GREEN, width=2)
    _caption(canvas, [(f"{int(pos.sum())} positive RoIs (IoU >= {model.roi_heads.matcher.high:g})", GREEN),
                      (f"{int((~pos).sum())} negative RoIs", RED)])
    written.append(save_png(out_dir / "rois.png", canvas))

    # mask_targets.png: [image crop | target] per positive RoI
    pos_boxes, pos_matched = rois[pos][:max_masks], matched[pos][:max_masks]
    # the mask head's own resolution (FPN: 14x14 pooled, doubled by the deconv to 28; C4: 14x14
    # pooled, halved by res5, doubled to 14), read from one RoI through it
    m = 28
    if model.roi_heads.has_mask:
        with torch.no_grad():
            m = model.roi_heads.mask_logits(features, [rois[:1]], labels[:1]).shape[-1]
    stats["mask_size"] = int(m)
    grid = _mask_grid(pixels, gt_masks, pos_boxes, pos_matched, m)
    written.append(save_png(out_dir / "mask_targets.png", grid))
    stats["mask_targets"] = int(pos_boxes.shape[0])
    stats["files"] = [str(p) for p in written]
    return stats


def _level_name(model: MaskRCNN, level: int) -> str:
    """The feature map's name: P2..P6 of an FPN, C4 of a C4 model (its one map, stride 16)."""
    config = getattr(model, "config", None)
    if getattr(config, "architecture", "fpn") == "c4":
        return "C4"
    return f"P{level + 2}"


def _mask_grid(pixels: Tensor, gt_masks: Tensor, boxes: Tensor, matched: Tensor, m: int, columns: int = 4) -> Image.Image:
    """A grid of (crop | target) pairs, each cell m x m scaled to TILE x TILE."""
    n = boxes.shape[0]
    rows = max(1, -(-n // columns))
    gap = 4
    sheet = Image.new("RGB", (columns * (2 * TILE + gap) + gap, rows * (TILE + gap) + gap), (40, 40, 40))
    if n == 0:
        _caption(sheet, [("no positive RoI: the image has no (non-crowd) annotation", WHITE)])
        return sheet
    targets = mask_targets(gt_masks, boxes, matched, m)  # (n, m, m) in [0, 1]
    rois = torch.cat([torch.zeros((n, 1), device=boxes.device), boxes], dim=1)
    crops = roi_align(pixels[None], rois, m, 1.0, sampling_ratio=2)  # (n, 3, m, m)
    for i in range(n):
        crop = Image.fromarray(_to_uint8(crops[i])).resize((TILE, TILE), Image.NEAREST)
        tgt = Image.fromarray(_to_uint8(targets[i][None].expand(3, -1, -1))).resize((TILE, TILE), Image.NEAREST)
        x, y = gap + (i % columns) * (2 * TILE + gap), gap + (i // columns) * (TILE + gap)
        sheet.paste(crop, (x, y))
        sheet.paste(tgt, (x + TILE, y))
    return sheet


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..data import CocoDataset, DataError

    try:
        dataset = CocoDataset(args.data, args.images)
    except DataError as e:
        print(f"maskrcnn inspect: {e}", file=sys.stderr)
        return 2
    ids = dataset.image_ids
    if args.image_id is not None:
        if args.image_id not in ids:
            print(f"maskrcnn inspect: image id {args.image_id} is not in {args.data}", file=sys.stderr)
            return 2
        index = ids.index(args.image_id)
        image, target = dataset[index]
    else:
        # first image with an annotation: a negative-only image shows no positives and no masks
        for index in range(len(dataset)):
            image, target = dataset[index]
            if target["labels"].numel():
                break
    if args.weights:
        from .api import load_model

        model = load_model(args.weights).model
    else:
        from ..modeling.build import build_preset

        torch.manual_seed(args.seed)
        model = build_preset(args.preset, num_classes=dataset.num_classes + 1, class_names=dataset.class_names)
    try:
        stats = inspect_sample(model, image, target, args.out, num_proposals=args.proposals,
                               max_masks=args.max_masks, seed=args.seed)
    except DataError as e:
        print(f"maskrcnn inspect: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
