"""Box arithmetic against plain Python loops, float32 and float64."""
import math

import pytest
import torch

from maskrcnn.ops import (
    BBOX_XFORM_CLIP,
    BoxCoder,
    box_area,
    box_ioa,
    box_iou,
    clip_boxes,
    remove_small_boxes,
)

DTYPES = [torch.float32, torch.float64]


def random_boxes(n, size=50.0, seed=0, dtype=torch.float64, min_wh=0.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size - size * 0.2
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.5 + min_wh
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def tol(dtype):
    return dict(rtol=1e-6, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)


def ref_area(b):
    return (b[2] - b[0]) * (b[3] - b[1])


def ref_inter(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_area_and_iou_match_loops(dtype):
    b1 = random_boxes(13, seed=1, dtype=dtype)
    b2 = random_boxes(9, seed=2, dtype=dtype)
    # include a duplicate, a contained box and a disjoint box
    b2[0] = b1[0]
    b2[1] = torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=dtype)
    b1[1] = torch.tensor([0.0, 0.0, 10.0, 10.0], dtype=dtype)
    b2[2] = torch.tensor([500.0, 500.0, 510.0, 520.0], dtype=dtype)
    L1, L2 = b1.double().tolist(), b2.double().tolist()

    area = box_area(b1)
    assert area.dtype == dtype and area.shape == (13,)
    torch.testing.assert_close(area, torch.tensor([ref_area(b) for b in L1], dtype=dtype), **tol(dtype))

    iou = box_iou(b1, b2)
    assert iou.dtype == dtype and iou.shape == (13, 9)
    expected = torch.tensor(
        [[ref_inter(a, b) / (ref_area(a) + ref_area(b) - ref_inter(a, b)) for b in L2] for a in L1], dtype=dtype
    )
    torch.testing.assert_close(iou, expected, **tol(dtype))
    assert iou[0, 0] == 1
    assert iou[1, 1] == pytest.approx(1 / 100)
    assert (iou[:, 2] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_ioa_matches_loop(dtype):
    b1 = random_boxes(11, seed=3, dtype=dtype)
    b2 = random_boxes(7, seed=4, dtype=dtype)
    b1[0] = torch.tensor([2.0, 2.0, 4.0, 4.0], dtype=dtype)  # inside b2[0]
    b2[0] = torch.tensor([0.0, 0.0, 10.0, 10.0], dtype=dtype)
    L1, L2 = b1.double().tolist(), b2.double().tolist()
    expected = torch.tensor([[ref_inter(a, b) / max(ref_area(a), 1e-6) for b in L2] for a in L1], dtype=dtype)
    out = box_ioa(b1, b2)
    torch.testing.assert_close(out, expected, **tol(dtype))
    assert out[0, 0] == 1  # fully covered by the crowd region
    # ioa is not symmetric: the big box is covered 4 %
    assert box_ioa(b2[:1], b1[:1])[0, 0] == pytest.approx(0.04)


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_ioa_zero_area_box_is_finite(dtype):
    b1 = torch.tensor([[3.0, 3.0, 3.0, 5.0]], dtype=dtype)
    b2 = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=dtype)
    assert torch.isfinite(box_ioa(b1, b2)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_boxes_matches_loop(dtype):
    boxes = random_boxes(40, size=80.0, seed=5, dtype=dtype) - 10
    height, width = 37, 53
    expected = [
        [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
        for x1, y1, x2, y2 in boxes.double().tolist()
    ]
    out = clip_boxes(boxes, (height, width))
    assert out.dtype == dtype and out.shape == boxes.shape
    torch.testing.assert_close(out, torch.tensor(expected, dtype=dtype), rtol=0, atol=0)
    # batched (..., 4) layout: the per-class (R, K, 4) boxes of the box head
    out3 = clip_boxes(boxes.reshape(10, 4, 4), (height, width))
    torch.testing.assert_close(out3, out.reshape(10, 4, 4), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_remove_small_boxes_matches_loop(dtype):
    boxes = random_boxes(60, size=8.0, seed=6, dtype=dtype)
    boxes[0] = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=dtype)  # exactly min_size: kept
    boxes[1] = torch.tensor([0.0, 0.0, 2.0, 1.5], dtype=dtype)  # short: dropped
    boxes[2] = torch.tensor([5.0, 0.0, 4.0, 3.0], dtype=dtype)  # inverted: dropped
    min_size = 2.0
    expected = [(x2 - x1) >= min_size and (y2 - y1) >= min_size for x1, y1, x2, y2 in boxes.tolist()]
    keep = remove_small_boxes(boxes, min_size)
    assert keep.dtype == torch.bool
    assert keep.tolist() == expected
    assert keep[:3].tolist() == [True, False, False]
    assert 0 < sum(expected) < len(expected)


# ----------------------------------------------------------------------------- BoxCoder


def ref_encode(gt, ref, weights):
    wx, wy, ww, wh = weights
    out = []
    for g, r in zip(gt, ref):
        rw, rh = r[2] - r[0], r[3] - r[1]
        rx, ry = r[0] + 0.5 * rw, r[1] + 0.5 * rh
        gw, gh = g[2] - g[0], g[3] - g[1]
        gx, gy = g[0] + 0.5 * gw, g[1] + 0.5 * gh
        out.append([wx * (gx - rx) / rw, wy * (gy - ry) / rh, ww * math.log(gw / rw), wh * math.log(gh / rh)])
    return out


def ref_decode(deltas, ref, weights, clip=BBOX_XFORM_CLIP):
    """deltas: list of R lists of 4K numbers -> R x K x 4."""
    wx, wy, ww, wh = weights
    out = []
    for d, r in zip(deltas, ref):
        rw, rh = r[2] - r[0], r[3] - r[1]
        rx, ry = r[0] + 0.5 * rw, r[1] + 0.5 * rh
        per_class = []
        for k in range(len(d) // 4):
            dx, dy, dw, dh = d[4 * k: 4 * k + 4]
            dx, dy = dx / wx, dy / wy
            dw, dh = min(dw / ww, clip), min(dh / wh, clip)
            cx, cy = dx * rw + rx, dy * rh + ry
            w, h = math.exp(dw) * rw, math.exp(dh) * rh
            per_class.append([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h])
        out.append(per_class)
    return out


WEIGHTS = [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_encode_matches_loop_and_round_trips(dtype, weights):
    coder = BoxCoder(weights)
    ref = random_boxes(30, seed=7, dtype=dtype, min_wh=1.0)
    gt = random_boxes(30, seed=8, dtype=dtype, min_wh=1.0)
    deltas = coder.encode(gt, ref)
    assert deltas.shape == (30, 4) and deltas.dtype == dtype
    torch.testing.assert_close(
        deltas, torch.tensor(ref_encode(gt.double().tolist(), ref.double().tolist(), weights), dtype=dtype),
        rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-4 if dtype == torch.float32 else 1e-10,
    )
    decoded = coder.decode(deltas, ref)
    assert decoded.shape == (30, 1, 4)
    torch.testing.assert_close(decoded[:, 0], gt, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_decode_matches_loop_per_class_layout(dtype, weights):
    coder = BoxCoder(weights)
    num, k = 12, 5
    g = torch.Generator().manual_seed(9)
    ref = random_boxes(num, seed=10, dtype=dtype, min_wh=1.0)
    deltas = (torch.randn(num, 4 * k, generator=g, dtype=torch.float64) * 2).to(dtype)
    out = coder.decode(deltas, ref)
    assert out.shape == (num, k, 4) and out.dtype == dtype
    expected = torch.tensor(ref_decode(deltas.double().tolist(), ref.double().tolist(), weights), dtype=dtype)
    torch.testing.assert_close(out, expected, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-4 if dtype == torch.float32 else 1e-9)
    # class k of the (R, 4K) layout is columns 4k..4k+3: decoding them alone gives box k
    for cls in (0, 3):
        single = coder.decode(deltas[:, 4 * cls: 4 * cls + 4], ref)[:, 0]
        torch.testing.assert_close(out[:, cls], single, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_decode_clamps_log_scale(dtype, weights):
    coder = BoxCoder(weights)
    ref = torch.tensor([[10.0, 20.0, 26.0, 28.0]], dtype=dtype)  # w 16, h 8, center (18, 24)
    ww, wh = weights[2], weights[3]
    # dw way past the clip, dh just under it, and a huge delta that would overflow exp()
    deltas = torch.tensor([[0.0, 0.0, 50.0 * ww, (BBOX_XFORM_CLIP - 0.5) * wh,
                            0.0, 0.0, 1e6 * ww, -3.0 * wh]], dtype=dtype)
    out = coder.decode(deltas, ref)
    assert torch.isfinite(out).all()
    # clamped: width = 16 * exp(log(1000/16)) = 1000
    w0 = out[0, 0, 2] - out[0, 0, 0]
    h0 = out[0, 0, 3] - out[0, 0, 1]
    assert w0.item() == pytest.approx(1000.0, rel=1e-5)
    assert h0.item() == pytest.approx(8 * math.exp(BBOX_XFORM_CLIP - 0.5), rel=1e-5)
    assert (out[0, 1, 2] - out[0, 1, 0]).item() == pytest.approx(1000.0, rel=1e-5)
    assert (out[0, 1, 3] - out[0, 1, 1]).item() == pytest.approx(8 * math.exp(-3.0), rel=1e-5)
    # centers unchanged (dx = dy = 0)
    torch.testing.assert_close((out[0, :, 0] + out[0, :, 2]) / 2, torch.full((2,), 18.0, dtype=dtype))
    torch.testing.assert_close((out[0, :, 1] + out[0, :, 3]) / 2, torch.full((2,), 24.0, dtype=dtype))
    assert BBOX_XFORM_CLIP == pytest.approx(math.log(1000.0 / 16))


def test_decode_empty():
    # an image with no proposals / detections: (0, 4K) deltas must decode to (0, K, 4)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    out = coder.decode(torch.zeros(0, 8), torch.zeros(0, 4))
    assert out.shape == (0, 2, 4)
