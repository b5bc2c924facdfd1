"""Overlays: size, where pixels change, colors, captions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.inference.draw import draw_instances, instance_colors
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
    colors = instance_colors(3).astype(int)
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
    colors = instance_colors(3)
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
