"""Mask pasting against torchvision's per-mask algorithm, and mask targets against per-RoI RoIAlign."""
import pytest
import torch
import torch.nn.functional as F

from maskrcnn.ops import mask_targets, paste_masks, roi_align

DTYPES = [torch.float32, torch.float64]


def ref_paste_masks(masks, boxes, image_size, padding=1):
    """torchvision's paste_masks_in_image, one mask at a time."""
    im_h, im_w = image_size
    m = masks.shape[-1]
    # expand_masks: pad by `padding` cells, and the box grows by the same factor
    scale = float(m + 2 * padding) / m
    padded = F.pad(masks, (padding,) * 4)
    # expand_boxes, in the boxes' dtype, then .to(int64) truncates toward zero
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    expanded = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).to(torch.int64)
    out = torch.zeros((masks.shape[0], im_h, im_w), dtype=masks.dtype)
    for i in range(masks.shape[0]):
        x0, y0, x1, y1 = expanded[i].tolist()
        w = max(int(x1 - x0 + 1), 1)
        h = max(int(y1 - y0 + 1), 1)
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        xa, xb = max(x0, 0), min(x1 + 1, im_w)
        ya, yb = max(y0, 0), min(y1 + 1, im_h)
        if xb > xa and yb > ya:
            out[i, ya:yb, xa:xb] = resized[ya - y0:yb - y0, xa - x0:xb - x0]
    return out


def random_boxes(n, image_h, image_w, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x1 = r(n) * image_w * 1.2 - image_w * 0.2
    y1 = r(n) * image_h * 1.2 - image_h * 0.2
    w = r(n) * image_w * 0.8
    h = r(n) * image_h * 0.8
    tiny = torch.arange(n) % 4 == 1
    w[tiny] = r(int(tiny.sum())) * 1.5
    h[tiny] = r(int(tiny.sum())) * 1.5
    boxes = torch.stack([x1, y1, x1 + w, y1 + h], 1)
    boxes[0] = torch.tensor([-15.3, -12.8, image_w + 9.1, image_h + 7.7])  # bigger than the image
    boxes[2] = torch.tensor([image_w - 3.2, image_h - 2.6, image_w + 20.4, image_h + 11.9])  # corner
    boxes[3] = torch.tensor([7.0, 9.0, 7.0, 9.0])  # a point
    boxes[5] = torch.tensor([image_w + 5.0, 3.0, image_w + 15.0, 10.0])  # fully outside
    boxes[6] = torch.tensor([-0.4, -0.6, 0.3, 0.2])  # tiny, straddling 0 (truncation toward zero)
    return boxes.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [7, 28])
@pytest.mark.parametrize("padding", [1, 2])
def test_paste_masks_matches_torchvision_loop(dtype, m, padding):
    image_size = (37, 45)
    g = torch.Generator().manual_seed(m + padding)
    masks = torch.rand(24, m, m, generator=g, dtype=torch.float64).to(dtype)
    boxes = random_boxes(24, *image_size, seed=m, dtype=dtype)
    out = paste_masks(masks, boxes, image_size, padding=padding)
    assert out.shape == (24, *image_size) and out.dtype == dtype
    expected = ref_paste_masks(masks, boxes, image_size, padding=padding)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert (out[5] == 0).all()  # box outside the image
    assert (out[0] > 0).float().mean() > 0.5  # box covering the image


def test_paste_masks_box_dtype_is_kept():
    # A float64 box corner just below an integer truncates to the integer below; rounding the
    # box to float32 first would land it on the integer.
    masks = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    boxes = torch.tensor([[4.0, 4.0, 12.0 - 1e-9, 12.0 - 1e-9]], dtype=torch.float64)
    # expanded by 6/4 about the center 8 - 5e-10: x1 = 8 - 5e-10 + (6 - 7.5e-10) = 14 - 1.25e-9 -> 13,
    # where the float32 box (12.0) would give 14
    torch.testing.assert_close(paste_masks(masks, boxes, (20, 20)), ref_paste_masks(masks, boxes, (20, 20)),
                               rtol=0, atol=1e-5)


def test_paste_masks_hand_example():
    # A 2x2 mask of ones in box (2, 2, 6, 6): padded to 4x4 (ring of zeros), box grown by 4/2 = 2
    # about its center (4, 4) to (0, 0, 8, 8); an integer box 9 pixels wide. Resizing the padded
    # mask 4 -> 9 pixels: output pixel d samples source (d + 0.5) * 4/9 - 0.5. Pixel 4 (the center)
    # samples 1.5 -> between the two ones: 1.0. Pixel 0 samples -0.28 -> clamped to 0 -> 0.0.
    masks = torch.ones(1, 2, 2)
    out = paste_masks(masks, torch.tensor([[2.0, 2.0, 6.0, 6.0]]), (10, 10))[0]
    assert out[4, 4].item() == pytest.approx(1.0)
    assert out[0, 0].item() == 0.0
    assert (out[9, :] == 0).all() and (out[:, 9] == 0).all()  # outside the 9x9 box
    # pixel 2 samples 2.5 * 4/9 - 0.5 = 0.6111: 0.6111 of the way from 0 to 1 -> 0.6111 per axis
    assert out[4, 2].item() == pytest.approx(2.5 * 4 / 9 - 0.5, abs=1e-6)
    assert out[2, 2].item() == pytest.approx((2.5 * 4 / 9 - 0.5) ** 2, abs=1e-6)


def test_paste_masks_empty():
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6))
    assert out.shape == (0, 5, 6)


# ----------------------------------------------------------------------------- mask targets


@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_targets_equal_per_roi_roi_align(dtype):
    g = torch.Generator().manual_seed(3)
    height, width, num_gt = 40, 52, 5
    gt_masks = (torch.rand(num_gt, height, width, generator=g) > 0.5).to(torch.uint8)
    boxes = random_boxes(20, height, width, seed=4, dtype=dtype)
    matched = torch.randint(0, num_gt, (20,), generator=g)
    out = mask_targets(gt_masks, boxes, matched, 14)
    assert out.shape == (20, 14, 14) and out.dtype == dtype
    for i in range(20):
        roi = torch.cat([torch.zeros(1, dtype=dtype), boxes[i]])[None]
        single = gt_masks[matched[i]][None, None].to(dtype)
        expected = roi_align(single, roi, 14, 1.0, sampling_ratio=0, aligned=False)[0, 0]
        torch.testing.assert_close(out[i], expected, rtol=1e-6, atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1 + 1e-6


def test_mask_targets_hand_example():
    # Columns 0..9 of a 20x20 mask are foreground. A RoI over the whole mask, 4x4 target:
    # bins 5 pixels wide, adaptive sampling ceil(20 / 4) = 5 samples per bin side, at
    # x = 0.5 .. 4.5 (bin 0), 5.5 .. 9.5 (bin 1), 10.5 .. 14.5 (bin 2), 15.5 .. 19.5 (bin 3).
    # x = 9.5 reads halfway between column 9 (1) and 10 (0): 0.5, so bin 1 = (4 + 0.5) / 5 = 0.9;
    # x = 10.5 reads between 10 and 11: 0. Rows are all alike.
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[:, :, :10] = True
    out = mask_targets(mask, torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([0]), 4)[0]
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.9, 0.0, 0.0]] * 4))
    empty = mask_targets(mask, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 28)
    assert empty.shape == (0, 28, 28)
