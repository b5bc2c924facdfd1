"""Overlay images: colored masks, outlines, boxes, "class score" captions and a legend.

    >>> overlay = draw_instances(image, det.boxes, det.labels, det.scores, det.masks,
    ...                          class_names=["__background__", "person", ...])  # doctest: +SKIP
    >>> overlay.save("overlay.png")                                               # doctest: +SKIP

Colours follow the class (`colors.class_colors`): every instance of a class has the class's
colour in every image; outlines at full strength keep touching instances of one class apart.
Mask blending is one vectorized pass over a label map (each pixel takes the color of the
highest-scoring instance covering it, the same rule as `outputs.label_map`), so the cost does
not grow with a Python loop over pixels; only boxes and captions loop over instances.

Captions are placed where they cover no pixel of their own object and no other caption:
above the box, below it, or beside it, preferring spots that cover no other object, in a
smaller font when the full-size one does not fit (small images); a caption that fits nowhere
is left out rather than drawn over something (the legend still names the class). The drawing steps are separate functions
(`_blend_masks`, `_draw_boxes`, `_draw_captions`, `add_legend`) so others can be added.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..io import ImageSource, load_image
from ..ops.masks import chunk_ranges
from .colors import class_colors, instance_colors
from .outputs import label_map

__all__ = ["add_legend", "class_colors", "draw_instances", "instance_colors"]

_MIN_FONT = 7  # px: the smallest caption still readable on screen
_PAD = 2  # px around caption text


# Float working copies of an image are made a band of rows of this size at a time.
_BAND_BYTES = 32 * 2**20


def _to_uint8_hwc(image: ImageSource | np.ndarray) -> np.ndarray:
    """Any image `load_image` accepts -> uint8 (H, W, 3)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image  # the common case, without a round trip through float
    chw = load_image(image, max_pixels=None, name="image to draw on")
    height, width = chw.shape[-2:]
    out = np.empty((height, width, 3), dtype=np.uint8)
    for rows in chunk_ranges(height, 3 * width, _BAND_BYTES):  # bands of rows: no image-sized float temporaries
        out[rows] = (chw[:, rows] * 255).round().to("cpu").byte().permute(1, 2, 0).numpy()
    return out


def _outline(labels: np.ndarray, width: int) -> np.ndarray:
    """bool (H, W): pixels of an instance within `width` pixels of a different label (or of
    the image border), i.e. an outline drawn just inside each mask."""
    edge = np.zeros(labels.shape, dtype=bool)
    # only compared for equality: the smallest type that holds the labels (a quarter of int32's
    # memory on a 50 MP image with up to 255 instances)
    top = int(labels.max()) if labels.size else 0
    inner = labels.astype(np.uint8 if 0 <= top < 256 and labels.min() >= 0 else labels.dtype)
    for _ in range(width):  # peel one pixel-wide ring per step
        # a pixel differs from a neighbour above/below/left/right, or lies on the border (whose
        # outside counts as background); compared on shifted views, no padded copy of the labels
        ring = np.zeros(labels.shape, dtype=bool)
        ring[[0, -1], :] = True
        ring[:, [0, -1]] = True
        vertical = inner[1:] != inner[:-1]
        ring[1:] |= vertical
        ring[:-1] |= vertical
        del vertical
        horizontal = inner[:, 1:] != inner[:, :-1]
        ring[:, 1:] |= horizontal
        ring[:, :-1] |= horizontal
        del horizontal
        ring &= inner > 0
        edge |= ring
        inner[ring] = 0
    return edge


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's bundled font: scalable when Pillow has FreeType, a fixed bitmap font otherwise.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # old Pillow without the size argument
        return ImageFont.load_default()


def _class_name(label: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    return str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def draw_instances(
    image: ImageSource,
    boxes,
    labels,
    scores=None,
    masks=None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    *,
    alpha: float = 0.5,
    mask_threshold: float = 0.5,
    show_boxes: bool = True,
    show_labels: bool = True,
    color_by: str = "class",
    legend: bool = False,
    keypoints=None,
    skeleton: Sequence[Sequence[int]] | None = None,
    keypoint_scores=None,
    keypoint_thresh: float | None = None,
) -> Image.Image:
    """Draw one image's detections; returns an RGB PIL image of the input's size (wider by
    the legend panel when `legend=True`).

    image: float (3, H, W) in [0, 1] or uint8 (3, H, W) tensor, uint8 (H, W, 3) array, a PIL
        image or a path (anything `load_image` takes).
    boxes: float (R, 4) xyxy pixels; labels: int (R,); scores: float (R,) or None (captions
        then show the class only, overlaps go to the lower index).
    masks: bool (R, H, W), float probabilities (binarized with `>= mask_threshold`), or None.
    class_names: indexed by label, so index 0 is background (torchvision's category lists
        work as they are), or a {label: name} dict; None shows the label number.
    alpha: mask opacity. Each instance's mask, outline (full strength) and box take its colour:
    color_by: "class" (default: colour k of `instance_colors` for label k, the same in every
        image) or "instance" (colour i for the i-th detection).
    legend: add a panel on the right with a colour swatch and name per class shown.
    keypoints: float (R, P, 3) (x, y, v) or None: a dot per keypoint with v > 0 (and, given
        keypoint_scores (R, P) and keypoint_thresh, a score >= it), and a line for each
        `skeleton` pair ([i, j], 1-based as COCO's) whose two keypoints are both drawn.

    Pixels of the image change only inside masks, on box lines and under captions.
    """
    rgb = _to_uint8_hwc(image)
    height, width = rgb.shape[:2]
    boxes_np = _np(boxes).astype(np.float64).reshape(-1, 4)
    labels_np = _np(labels).astype(np.int64).reshape(-1)
    num = boxes_np.shape[0]
    scores_np = None if scores is None else _np(scores).astype(np.float64).reshape(-1)
    if labels_np.shape[0] != num or (scores_np is not None and scores_np.shape[0] != num):
        raise ValueError(f"got {num} boxes, {labels_np.shape[0]} labels and "
                         f"{None if scores_np is None else scores_np.shape[0]} scores")
    if color_by == "class":
        colors = class_colors(np.maximum(labels_np, 0))
    elif color_by == "instance":
        colors = instance_colors(num)
    else:
        raise ValueError(f"color_by must be 'class' or 'instance', got {color_by!r}")
    line = max(1, round(max(height, width) / 500))  # about 1 px at 500 px, 3 px at 1333 px

    binary = None
    out = rgb
    if masks is not None and num:
        m = _np(masks)
        if m.shape != (num, height, width):
            raise ValueError(f"expected masks of shape {(num, height, width)}, got {m.shape}")
        binary = m if m.dtype == np.bool_ else m >= mask_threshold
        out = _blend_masks(rgb, binary, scores_np, colors, alpha, line)

    canvas = Image.fromarray(out)
    if keypoints is not None and num:
        _draw_keypoints(ImageDraw.Draw(canvas), keypoints, keypoint_scores, keypoint_thresh, skeleton, colors, line)
    if num and (show_boxes or show_labels):
        finite = np.isfinite(boxes_np).all(axis=1)  # nothing sensible to draw otherwise, and PIL would raise
        draw = ImageDraw.Draw(canvas)
        if show_boxes:
            _draw_boxes(draw, boxes_np, colors, finite, line)
        if show_labels:
            texts = [_class_name(int(labels_np[i]), class_names)
                     + ("" if scores_np is None else f" {scores_np[i]:.2f}") for i in range(num)]
            _draw_captions(draw, boxes_np, texts, colors, finite, binary, (height, width))
    if legend:
        canvas = add_legend(canvas, labels_np, class_names, colors)
    return canvas


def _blend_masks(rgb: np.ndarray, masks: np.ndarray, scores: np.ndarray | None, colors: np.ndarray,
                 alpha: float, line: int) -> np.ndarray:
    num = masks.shape[0]
    rank = scores if scores is not None else -np.arange(num, dtype=np.float64)
    labels_map = label_map(masks, rank)  # (H, W) int32
    palette = np.concatenate([np.zeros((1, 3)), colors]).astype(np.float32)  # row 0: background
    edge = _outline(labels_map, line)
    height, width = labels_map.shape
    out = np.empty_like(rgb)
    for rows in chunk_ranges(height, 3 * width, _BAND_BYTES):  # bands of rows: float copies stay small
        band_labels, band_edge = labels_map[rows], edge[rows]
        covered = band_labels > 0
        blended = rgb[rows].astype(np.float32)
        blended[covered] = (1 - alpha) * blended[covered] + alpha * palette[band_labels[covered]]
        blended[band_edge] = palette[band_labels[band_edge]]
        out[rows] = np.clip(np.rint(blended, out=blended), 0, 255, out=blended)
    return out


def _draw_boxes(draw: ImageDraw.ImageDraw, boxes: np.ndarray, colors: np.ndarray, finite: np.ndarray,
                line: int) -> None:
    for i in np.flatnonzero(finite):
        x1, x2 = sorted(boxes[i, [0, 2]])
        y1, y2 = sorted(boxes[i, [1, 3]])
        draw.rectangle((x1, y1, x2, y2), outline=tuple(int(c) for c in colors[i]), width=line)


def _font_sizes(height: int, width: int) -> list[int]:
    """Caption font sizes to try, largest first: about 1/60 of the image side (at least 10
    px), shrinking by a fifth per step down to _MIN_FONT."""
    size = max(10, round(max(height, width) / 60))
    sizes = [size]
    while sizes[-1] > _MIN_FONT:
        sizes.append(max(_MIN_FONT, int(sizes[-1] * 0.8)))
    return sizes


def _caption_spots(box: np.ndarray, w: int, h: int, height: int, width: int):
    """Top-left corners for a w x h caption around `box`, in order of preference: above
    (left-aligned, then right-aligned), below, left of, right of the box; each moved inside
    the image."""
    x1, x2 = sorted(box[[0, 2]])
    y1, y2 = sorted(box[[1, 3]])
    x1, y1 = int(np.floor(x1)), int(np.floor(y1))
    x2, y2 = int(np.ceil(x2)), int(np.ceil(y2))
    for x, y in ((x1, y1 - h - 1), (x2 - w, y1 - h - 1), (x1, y2 + 1), (x2 - w, y2 + 1),
                 (x1 - w - 1, y1), (x2 + 1, y1), (x1 - w - 1, y2 - h), (x2 + 1, y2 - h)):
        yield min(max(x, 0), max(width - w, 0)), min(max(y, 0), max(height - h, 0))


def _draw_captions(draw: ImageDraw.ImageDraw, boxes: np.ndarray, texts: list[str], colors: np.ndarray,
                   finite: np.ndarray, masks: np.ndarray | None,
                   size: tuple[int, int]) -> list[tuple[int, int, int, int] | None]:
    """Captions covering none of their own object's pixels (its mask, or its box when there
    are no masks) and no other caption, and as little as possible of other objects. Returns
    each caption's (x, y, w, h) rectangle, None where it was left out."""
    height, width = size
    pixel_boxes = np.zeros((len(boxes), 4), dtype=np.int64)  # x1, y1, x2, y2 clipped, exclusive ends
    for i in np.flatnonzero(finite):
        x1, x2 = sorted(np.clip(np.rint(boxes[i, [0, 2]]), 0, width).astype(int))
        y1, y2 = sorted(np.clip(np.rint(boxes[i, [1, 3]]), 0, height).astype(int))
        pixel_boxes[i] = (x1, y1, x2, y2)
    if masks is not None:
        occupied = masks.any(axis=0).astype(np.int32)  # other objects' pixels cost 1 each

        def covers_own(i: int, x: int, y: int, w: int, h: int) -> bool:
            return bool(masks[i, y:y + h, x:x + w].any())
    else:  # no masks: an object is its box
        occupied = np.zeros((height, width), dtype=np.int32)
        for x1, y1, x2, y2 in pixel_boxes[finite]:
            occupied[y1:y2, x1:x2] = 1

        def covers_own(i: int, x: int, y: int, w: int, h: int) -> bool:
            x1, y1, x2, y2 = pixel_boxes[i]
            return x < x2 and x + w > x1 and y < y2 and y + h > y1
    taken = np.zeros((height, width), dtype=bool)  # pixels under the captions placed so far
    sizes = _font_sizes(height, width)
    placed: list[tuple[int, int, int, int] | None] = [None] * len(boxes)
    for i in np.flatnonzero(finite):
        best = None  # (cost, font, x, y, text box)
        for font_size in sizes:
            font = _font(font_size)
            left, top, right, bottom = draw.textbbox((0, 0), texts[i], font=font)
            w, h = right - left + 2 * _PAD, bottom - top + 2 * _PAD
            if w > width or h > height:
                continue
            for x, y in _caption_spots(boxes[i], w, h, height, width):
                if covers_own(i, x, y, w, h) or taken[y:y + h, x:x + w].any():
                    continue  # would cover its own object, or hide another caption
                cost = int(occupied[y:y + h, x:x + w].sum())
                if best is None or cost < best[0]:
                    best = (cost, font, x, y, (left, top, w, h))
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        if best is None:
            continue  # no spot clear of its object, even in the smallest font: left out
        _, font, x, y, (left, top, w, h) = best
        color = tuple(int(c) for c in colors[i])
        draw.rectangle((x, y, x + w - 1, y + h - 1), fill=color)
        draw.text((x + _PAD - left, y + _PAD - top), texts[i], font=font, fill=_text_color(color))
        taken[y:y + h, x:x + w] = True
        placed[i] = (x, y, w, h)
    return placed


def _text_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    # dark text on light colors, white on dark ones (ITU-R 601 luma)
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def add_legend(canvas: Image.Image, labels, class_names: Sequence[str] | Mapping[int, str] | None = None,
               colors: np.ndarray | None = None) -> Image.Image:
    """The canvas with a white panel on its right: one swatch + class name per distinct label,
    in label order, in `colors` (default: the class colours); classes that do not fit the
    height are summed up as "+N more"."""
    labels = _np(labels).astype(np.int64).reshape(-1)
    colors = class_colors(np.maximum(labels, 0)) if colors is None else colors
    first = {}
    for i, label in enumerate(labels.tolist()):
        first.setdefault(label, i)
    entries = [(_class_name(label, class_names), tuple(int(c) for c in colors[i]))
               for label, i in sorted(first.items())]
    font = _font(max(10, min(16, round(canvas.height / 12))))
    probe = ImageDraw.Draw(canvas)
    row = max(probe.textbbox((0, 0), "Ag", font=font)[3], 8) + 4
    fit = max(1, (canvas.height - 4) // row)
    if len(entries) > fit:
        entries = entries[:fit - 1] + [(f"+{len(entries) - fit + 1} more", (255, 255, 255))]
    if not entries:
        entries = [("no detections", (255, 255, 255))]
    swatch = row - 4
    text_w = max(probe.textbbox((0, 0), name, font=font)[2] for name, _ in entries)
    panel_w = 4 + swatch + 4 + text_w + 4
    out = Image.new("RGB", (canvas.width + panel_w, canvas.height), (255, 255, 255))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, (name, color) in enumerate(entries):
        x, y = canvas.width + 4, 2 + k * row
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=color, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y), name, font=font, fill=(0, 0, 0))
    return out


def _draw_keypoints(draw: ImageDraw.ImageDraw, keypoints, scores, thresh, skeleton, colors: np.ndarray, line: int) -> None:
    """Skeleton lines in the instance's color, then keypoint dots (white-ringed, so they show
    on the instance's own mask)."""
    points = _np(keypoints).astype(np.float64)
    if points.ndim != 3 or points.shape[0] != len(colors) or points.shape[2] != 3:
        raise ValueError(f"expected keypoints of shape ({len(colors)}, P, 3), got {points.shape}")
    shown = (points[..., 2] > 0) & np.isfinite(points[..., :2]).all(-1)
    if scores is not None and thresh is not None:
        shown &= _np(scores).reshape(points.shape[:2]) >= thresh
    radius = line + 1
    for i in range(points.shape[0]):
        color = tuple(int(c) for c in colors[i])
        for a, b in skeleton or []:
            if 1 <= a <= points.shape[1] and 1 <= b <= points.shape[1] and shown[i, a - 1] and shown[i, b - 1]:
                draw.line([tuple(points[i, a - 1, :2]), tuple(points[i, b - 1, :2])], fill=color, width=line)
        for x, y in points[i, shown[i], :2]:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline=(255, 255, 255))
