"""Overlays: size, where pixels change, colors, captions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.inference.draw import _draw_captions, class_colors, draw_instances, instance_colors
from maskrcnn.inference.outputs import write_image


def _scene(h=48, w=64):
    masks = torch.zeros((3, h, w), dtype=torch.bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 10:30, 20:50] = True  # overlaps instance 0
    masks[2, 40:46, 2:8] = True
    boxes = torch.tensor([[5.0, 5.0, 30.0, 20.0], [20.0, 10.0, 50.0, 30.0], [2.0, 40.0, 8.0, 46.0]])
    labels = torch.tensor([1, 2, 1])
    scores = torch.tensor([0.4, 0.93, 0.7])
    return boxes, labels, scores, masks


def test_instance_colors_deterministic_and_distinct():
    colors = instance_colors(30)
    assert colors.dtype == np.uint8 and colors.shape == (30, 3)
    np.testing.assert_array_equal(colors, instance_colors(30))
    np.testing.assert_array_equal(colors[:5], instance_colors(5))  # a prefix does not depend on num
    assert len({tuple(c) for c in colors}) == 30
    assert instance_colors(0).shape == (0, 3)


@pytest.mark.parametrize("kind", ["float_chw", "uint8_hwc", "uint8_chw", "pil"])
def test_overlay_has_input_size(kind):
    boxes, labels, scores, masks = _scene(48, 64)
    base = torch.rand(3, 48, 64)
    image = {
        "float_chw": base,
        "uint8_hwc": (base * 255).byte().permute(1, 2, 0).numpy(),
        "uint8_chw": (base * 255).byte(),
        "pil": Image.fromarray((base * 255).byte().permute(1, 2, 0).numpy()),
    }[kind]
    out = draw_instances(image, boxes, labels, scores, masks, class_names=["__background__", "cat", "dog"])
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (64, 48)


def test_changes_exactly_where_masks_are():
    boxes, labels, scores, masks = _scene()
    image = np.zeros((48, 64, 3), dtype=np.uint8)  # black: any blended color shows
    out = np.asarray(draw_instances(image, boxes, labels, scores, masks, show_boxes=False, show_labels=False))
    changed = (out != image).any(axis=2)
    np.testing.assert_array_equal(changed, masks.any(0).numpy())
    assert (image == 0).all()  # the input is not modified


def test_overlap_takes_top_score_color_and_blends_with_alpha():
    boxes, labels, scores, masks = _scene()
    image = np.full((48, 64, 3), 100, dtype=np.uint8)
    out = np.asarray(draw_instances(image, boxes, labels, scores, masks, alpha=0.5,
                                    show_boxes=False, show_labels=False)).astype(int)
    colors = class_colors(labels).astype(int)
    # (15, 25) is inside both 0 and 1, away from any outline; instance 1 scores higher
    np.testing.assert_allclose(out[15, 25], np.rint(0.5 * 100 + 0.5 * colors[1]), atol=1)
    np.testing.assert_allclose(out[12, 10], np.rint(0.5 * 100 + 0.5 * colors[0]), atol=1)
    # the outline is drawn at full strength just inside the mask
    np.testing.assert_array_equal(out[5, 10], colors[0])
    # alpha=0 leaves mask interiors untouched (only outlines remain)
    out0 = np.asarray(draw_instances(image, boxes, labels, scores, masks, alpha=0.0,
                                     show_boxes=False, show_labels=False))
    np.testing.assert_array_equal(out0[15, 25], image[15, 25])


def test_boxes_and_captions_are_drawn():
    boxes, labels, scores, masks = _scene(96, 128)
    boxes = boxes * 2
    image = np.zeros((96, 128, 3), dtype=np.uint8)
    out = np.asarray(draw_instances(image, boxes, labels, scores, None, class_names={1: "cat", 2: "dog"}))
    colors = class_colors(labels)
    np.testing.assert_array_equal(out[60, 40], colors[1])  # left edge of box 1, below its caption
    assert (out[0:20] != 0).any()  # a caption sits above box 0
    plain = np.asarray(draw_instances(image, boxes, labels, scores, None, show_labels=False))
    assert (out != plain).any()  # captions add pixels beyond the boxes


def test_probability_masks_empty_and_degenerate_inputs():
    boxes, labels, scores, masks = _scene()
    image = torch.zeros(3, 48, 64)
    a = np.asarray(draw_instances(image, boxes, labels, scores, masks.float() * 0.9))
    b = np.asarray(draw_instances(image, boxes, labels, scores, masks))
    np.testing.assert_array_equal(a, b)
    empty = draw_instances(image, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                           torch.zeros((0, 48, 64), dtype=torch.bool))
    assert not np.asarray(empty).any()
    odd = torch.tensor([[30.0, 20.0, 5.0, 5.0], [float("nan"), 0.0, 1.0, 1.0], [-10.0, -10.0, 100.0, 100.0]])
    out = draw_instances(image, odd, labels, None, None, class_names=["bg", "cat"])  # label 2 has no name
    assert out.size == (64, 48)
    with pytest.raises(ValueError, match="masks of shape"):
        draw_instances(image, boxes, labels, scores, masks[:, :10])


def test_write_overlay_atomically(tmp_path):
    boxes, labels, scores, masks = _scene()
    overlay = draw_instances(torch.rand(3, 48, 64), boxes, labels, scores, masks)
    write_image(tmp_path / "o" / "overlay.jpg", overlay, quality=90)
    with Image.open(tmp_path / "o" / "overlay.jpg") as im:
        assert im.size == (64, 48)
    with pytest.raises(ValueError, match="extension"):
        write_image(tmp_path / "overlay.nope", overlay)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_same_class_same_colour_in_every_image():
    boxes, labels, scores, masks = _scene()
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    out = np.asarray(draw_instances(image, boxes, labels, scores, masks, alpha=1.0,
                                    show_boxes=False, show_labels=False))
    # instances 0 and 2 are both label 1: one colour; label 2 another
    np.testing.assert_array_equal(out[12, 10], out[43, 5])
    assert (out[12, 10] != out[20, 40]).any()
    np.testing.assert_array_equal(out[12, 10], instance_colors(2)[1])  # label k -> colour k
    # another image, other detections: label 1 keeps its colour
    one = torch.zeros((1, 48, 64), dtype=torch.bool)
    one[0, 30:40, 30:40] = True
    other = np.asarray(draw_instances(image, torch.tensor([[30.0, 30, 40, 40]]), torch.tensor([1]), None, one,
                                      alpha=1.0, show_boxes=False, show_labels=False))
    np.testing.assert_array_equal(other[35, 35], out[12, 10])
    # per instance on request
    inst = np.asarray(draw_instances(image, boxes, labels, scores, masks, alpha=1.0, color_by="instance",
                                     show_boxes=False, show_labels=False))
    np.testing.assert_array_equal(inst[43, 5], instance_colors(3)[2])
    with pytest.raises(ValueError, match="color_by"):
        draw_instances(image, boxes, labels, scores, masks, color_by="rainbow")


def _caption_pixels(image, boxes, labels, scores, masks, names):
    """Pixels the captions changed: drawing with and without them differs exactly there."""
    with_text = np.asarray(draw_instances(image, boxes, labels, scores, masks, names))
    without = np.asarray(draw_instances(image, boxes, labels, scores, masks, names, show_labels=False))
    return (with_text != without).any(axis=2)


@pytest.mark.parametrize("box", [
    (20, 30, 100, 90),   # in the middle: room above
    (10, 0, 118, 100),   # touches the top: the caption must go below
    (0, 12, 128, 128),   # full width, down to the bottom: only a thin strip above
    (50, 50, 60, 62),    # a small object
])
def test_captions_never_cover_the_object_on_a_128_px_image(box):
    x1, y1, x2, y2 = box
    masks = torch.zeros((1, 128, 128), dtype=torch.bool)
    masks[0, y1:y2, x1:x2] = True
    image = np.full((128, 128, 3), 90, dtype=np.uint8)
    boxes = torch.tensor([box], dtype=torch.float32)
    caption = _caption_pixels(image, boxes, torch.tensor([1]), torch.tensor([0.97]), masks,
                              ["__background__", "triangle"])
    assert caption.any(), "there is room for a caption outside the object"
    assert not (caption & masks[0].numpy()).any()


def test_caption_left_out_when_the_object_fills_the_image():
    masks = torch.ones((1, 128, 128), dtype=torch.bool)
    image = np.full((128, 128, 3), 90, dtype=np.uint8)
    caption = _caption_pixels(image, torch.tensor([[0.0, 0, 128, 128]]), torch.tensor([1]), torch.tensor([0.9]),
                              masks, ["__background__", "triangle"])
    assert not caption.any()


def test_captions_of_neighbours_do_not_collide():
    # eleven small objects in a row: their preferred spots (above, left-aligned) overlap
    masks = torch.zeros((11, 128, 128), dtype=torch.bool)
    boxes = []
    for k in range(11):
        x = 4 + k * 11
        masks[k, 60:70, x:x + 8] = True
        boxes.append([x, 60, x + 8, 70])
    boxes = np.array(boxes, dtype=np.float64)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (128, 128)))
    placed = _draw_captions(draw, boxes, ["triangle 0.99"] * 11, class_colors([1] * 11),
                            np.ones(11, bool), masks.numpy(), (128, 128))
    rects = [r for r in placed if r is not None]
    assert len(rects) >= 4  # as many as fit; the rest are left out, not stacked
    for a in range(len(rects)):
        for b in range(a + 1, len(rects)):
            (xa, ya, wa, ha), (xb, yb, wb, hb) = rects[a], rects[b]
            assert xa + wa <= xb or xb + wb <= xa or ya + ha <= yb or yb + hb <= ya, (rects[a], rects[b])
    for rect, m in zip(placed, masks.numpy()):
        if rect is not None:
            x, y, w, h = rect
            assert not m[y:y + h, x:x + w].any()


def test_legend_shows_each_class_colour():
    boxes, labels, scores, masks = _scene()
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    out = draw_instances(image, boxes, labels, scores, masks, ["__background__", "cat", "dog"], legend=True)
    assert out.height == 48 and out.width > 64
    plain = draw_instances(image, boxes, labels, scores, masks, ["__background__", "cat", "dog"])
    np.testing.assert_array_equal(np.asarray(out)[:, :64], np.asarray(plain))  # the image is unchanged
    panel = {tuple(c) for c in np.asarray(out)[:, 64:].reshape(-1, 3)}
    for color in class_colors([1, 2]):
        assert tuple(color) in panel
