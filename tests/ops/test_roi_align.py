"""RoIAlign, RoIPool and RoIWarp against loop transcriptions of torchvision's compiled CPU kernels,
a hand-computed grid in both conventions, and float64 gradcheck."""
import importlib
import math

import numpy as np
import pytest
import torch

from maskrcnn.ops import roi_align, roi_pool, roi_warp

DTYPES = [torch.float32, torch.float64]

roi_align_module = importlib.import_module("maskrcnn.ops.roi_align")


def _np_dtype(dtype):
    return np.float32 if dtype == torch.float32 else np.float64


def ref_bilinear(fmap, y, x):
    """fmap (C, H, W) numpy; one sample of torchvision's bilinear_interpolate."""
    _, height, width = fmap.shape
    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
        return np.zeros(fmap.shape[0], dtype=fmap.dtype)
    y = max(y, 0)
    x = max(x, 0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = type(y)(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = type(x)(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * fmap[:, y_low, x_low] + hy * lx * fmap[:, y_low, x_high]
            + ly * hx * fmap[:, y_high, x_low] + ly * lx * fmap[:, y_high, x_high])


def ref_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Per RoI, per bin, per sample, as torchvision's roi_align_forward_kernel_impl; arithmetic on
    coordinates in the input's dtype (numpy scalars), like the kernel's T."""
    t = _np_dtype(features.dtype)
    feats = features.numpy()
    ph_n, pw_n = output_size
    out = np.zeros((rois.shape[0], features.shape[1], ph_n, pw_n), dtype=np.float64)
    scale = t(spatial_scale)
    for n, roi in enumerate(rois.numpy().astype(t)):
        fmap = feats[int(roi[0])]
        offset = t(0.5) if aligned else t(0.0)
        start_w = roi[1] * scale - offset
        start_h = roi[2] * scale - offset
        end_w = roi[3] * scale - offset
        end_h = roi[4] * scale - offset
        roi_w = end_w - start_w
        roi_h = end_h - start_h
        if not aligned:  # malformed RoIs forced to 1x1
            roi_w = max(roi_w, t(1.0))
            roi_h = max(roi_h, t(1.0))
        bin_h = roi_h / t(ph_n)
        bin_w = roi_w / t(pw_n)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / t(ph_n)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / t(pw_n)))
        count = max(grid_h * grid_w, 1)  # an empty grid gives 0
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = np.zeros(features.shape[1], dtype=np.float64)
                for iy in range(grid_h):
                    y = start_h + ph * bin_h + t(iy + 0.5) * bin_h / t(grid_h)
                    for ix in range(grid_w):
                        x = start_w + pw * bin_w + t(ix + 0.5) * bin_w / t(grid_w)
                        acc += ref_bilinear(fmap, y, x)
                out[n, :, ph, pw] = acc / count
    return torch.from_numpy(out).to(features.dtype)


def ref_roi_pool(features, rois, output_size, spatial_scale):
    """torchvision's roi_pool_forward_kernel_impl, one bin at a time."""
    t = _np_dtype(features.dtype)
    feats = features.numpy()
    ph_n, pw_n = output_size
    _, channels, height, width = features.shape

    def c_round(v):  # C's round(): half away from zero
        v = float(v)
        return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

    out = np.zeros((rois.shape[0], channels, ph_n, pw_n), dtype=np.float64)
    scale = t(spatial_scale)
    for n, roi in enumerate(rois.numpy().astype(t)):
        fmap = feats[int(roi[0])]
        sw, sh = c_round(roi[1] * scale), c_round(roi[2] * scale)
        ew, eh = c_round(roi[3] * scale), c_round(roi[4] * scale)
        roi_w = max(ew - sw + 1, 1)
        roi_h = max(eh - sh + 1, 1)
        bin_h = t(roi_h) / t(ph_n)
        bin_w = t(roi_w) / t(pw_n)
        for ph in range(ph_n):
            for pw in range(pw_n):
                hs = int(math.floor(t(ph) * bin_h))
                ws = int(math.floor(t(pw) * bin_w))
                he = int(math.ceil(t(ph + 1) * bin_h))
                we = int(math.ceil(t(pw + 1) * bin_w))
                hs = min(max(hs + sh, 0), height)
                he = min(max(he + sh, 0), height)
                ws = min(max(ws + sw, 0), width)
                we = min(max(we + sw, 0), width)
                for c in range(channels):
                    if he <= hs or we <= ws:
                        out[n, c, ph, pw] = 0.0
                        continue
                    best = -np.finfo(np.float32).max
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if fmap[c, h, w] > best:
                                best = fmap[c, h, w]
                    out[n, c, ph, pw] = best
    return torch.from_numpy(out).to(features.dtype)


def random_rois(num, image_h, image_w, num_images, seed, dtype):
    """RoIs in image pixels: ordinary ones, ones hanging over every edge, tiny ones (< 1 feature
    cell), zero-size ones and one inverted box."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x1 = r(num) * image_w * 1.3 - image_w * 0.2
    y1 = r(num) * image_h * 1.3 - image_h * 0.2
    w = r(num) * image_w * 0.7
    h = r(num) * image_h * 0.7
    tiny = torch.arange(num) % 5 == 1
    w[tiny] = r(int(tiny.sum())) * 0.6
    h[tiny] = r(int(tiny.sum())) * 0.6
    boxes = torch.stack([x1, y1, x1 + w, y1 + h], 1)
    boxes[2] = torch.tensor([3.3, 2.7, 3.3, 9.1])  # zero width
    boxes[3] = torch.tensor([5.2, 4.1, 5.2, 4.1])  # a point
    boxes[4] = torch.tensor([9.4, 8.2, 7.6, 11.3])  # inverted in x
    boxes[5] = torch.tensor([-7.3, -5.1, image_w + 6.2, image_h + 4.4])  # covers everything
    index = torch.randint(0, num_images, (num, 1), generator=g).to(torch.float64)
    return torch.cat([index, boxes], 1).to(dtype)


def random_features(shape, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _tol(dtype):
    return dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- RoIAlign


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25])
def test_roi_align_matches_kernel_loop(dtype, aligned, sampling_ratio, spatial_scale):
    height, width = 9, 11
    features = random_features((2, 3, height, width), 11, dtype)
    rois = random_rois(24, height / spatial_scale, width / spatial_scale, 2, seed=12, dtype=dtype)
    output_size = (3, 4)  # not square: catches a swapped height/width
    out = roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    assert out.shape == (24, 3, 3, 4) and out.dtype == dtype
    expected = ref_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    torch.testing.assert_close(out, expected, **_tol(dtype))


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_square_output_and_int_size(aligned):
    features = random_features((1, 2, 8, 8), 13, torch.float64)
    rois = random_rois(10, 8, 8, 1, seed=14, dtype=torch.float64)
    out = roi_align(features, rois, 5, 1.0, 0, aligned)
    torch.testing.assert_close(out, ref_roi_align(features, rois, (5, 5), 1.0, 0, aligned), **_tol(torch.float64))


def test_roi_align_sampling_ratio_negative_is_adaptive():
    features = random_features((1, 2, 8, 8), 15, torch.float64)
    rois = random_rois(8, 16, 16, 1, seed=16, dtype=torch.float64)
    torch.testing.assert_close(roi_align(features, rois, 2, 0.5, -1), roi_align(features, rois, 2, 0.5, 0))


def test_roi_align_empty_and_batch_order():
    features = random_features((2, 2, 6, 6), 17, torch.float32)
    assert roi_align(features, torch.zeros(0, 5), 7, 0.25, 2).shape == (0, 2, 7, 7)
    rois = random_rois(9, 6, 6, 2, seed=18, dtype=torch.float32)
    out = roi_align(features, rois, 2, 1.0, 2)
    for i in range(9):  # batched equals one by one
        torch.testing.assert_close(out[i:i + 1], roi_align(features, rois[i:i + 1], 2, 1.0, 2))


def test_roi_align_hand_computed_grid():
    # A 4x4 map with f[y, x] = 4y + x:
    #      x: 0   1   2   3
    #   y=0:  0   1   2   3
    #   y=1:  4   5   6   7
    #   y=2:  8   9  10  11
    #   y=3: 12  13  14  15
    # f is linear, so a bilinear sample at (y, x) inside the map is exactly 4y + x, and a bin's
    # average is 4 * mean(y) + mean(x) over its (clamped) sample coordinates.
    fmap = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)

    # Box (x1, y1, x2, y2) = (1, 0, 3, 2), 2x2 output, 2x2 samples per bin, scale 1.
    roi = torch.tensor([[0.0, 1.0, 0.0, 3.0, 2.0]], dtype=torch.float64)
    # aligned=False: box 2x2 cells, bins 1x1, samples at offsets 0.25, 0.75 inside each bin.
    #   bin (0,0): y in {0.25, 0.75} -> mean 0.5; x in {1.25, 1.75} -> mean 1.5: 4*0.5 + 1.5 = 3.5
    #   bin (0,1): x mean 2.5: 2 + 2.5 = 4.5
    #   bin (1,0): y in {1.25, 1.75} -> mean 1.5: 6 + 1.5 = 7.5
    #   bin (1,1): 6 + 2.5 = 8.5
    out = roi_align(fmap, roi, 2, 1.0, 2, aligned=False)
    torch.testing.assert_close(out[0, 0], torch.tensor([[3.5, 4.5], [7.5, 8.5]], dtype=torch.float64))
    # aligned=True: box shifted by -0.5 -> (0.5, -0.5, 2.5, 1.5); bins still 1x1.
    #   bin (0,0): y in {-0.25, 0.25}, and y <= 0 reads row 0 -> {0, 0.25}, mean 0.125;
    #              x in {0.75, 1.25} -> mean 1.0: 4*0.125 + 1.0 = 1.5
    #   bin (0,1): x in {1.75, 2.25} -> mean 2.0: 0.5 + 2.0 = 2.5
    #   bin (1,0): y in {0.75, 1.25} -> mean 1.0: 4 + 1 = 5.0
    #   bin (1,1): 4 + 2 = 6.0
    out = roi_align(fmap, roi, 2, 1.0, 2, aligned=True)
    torch.testing.assert_close(out[0, 0], torch.tensor([[1.5, 2.5], [5.0, 6.0]], dtype=torch.float64))

    # Box hanging over the far corner: (3, 3, 6, 6) aligned=False / (3.5, 3.5, 6.5, 6.5)
    # aligned=True (both are (3, 3, 6, 6) on the map), 1x1 output, 2x2 samples.
    # Samples at 3.75 and 5.25 per axis. 5.25 > 4 = W lies outside [-1, W]: contributes 0.
    # 3.75 lies in [H-1, H]: clamped to row/column 3. Only (3.75, 3.75) -> f(3, 3) = 15 counts,
    # and the average still divides by 4 samples: 15 / 4 = 3.75.
    out = roi_align(fmap, torch.tensor([[0.0, 3.0, 3.0, 6.0, 6.0]], dtype=torch.float64), 1, 1.0, 2, False)
    assert out.item() == pytest.approx(3.75, abs=1e-12)
    out = roi_align(fmap, torch.tensor([[0.0, 3.5, 3.5, 6.5, 6.5]], dtype=torch.float64), 1, 1.0, 2, True)
    assert out.item() == pytest.approx(3.75, abs=1e-12)

    # Samples exactly on the validity limits -1 and W = 4 still count (the test is y < -1 or
    # y > H), one sample per bin: box (3, 3, 5, 5) samples (4, 4), clamped to f(3, 3) = 15;
    # box (x -2..0, y 0..2) samples (y=1, x=-1), clamped to x = 0: f(1, 0) = 4.
    on_edge = torch.tensor([[0.0, 3.0, 3.0, 5.0, 5.0], [0.0, -2.0, 0.0, 0.0, 2.0]], dtype=torch.float64)
    assert roi_align(fmap, on_edge, 1, 1.0, 1, False).flatten().tolist() == [15.0, 4.0]

    # Adaptive sampling: box (0, 0, 4, 4), 1x1 output -> ceil(4 / 1) = 4 samples per axis.
    # aligned=False: samples at 0.5, 1.5, 2.5, 3.5 (3.5 clamps to 3) -> mean 7.5 / 4 = 1.875
    #   per axis: 4 * 1.875 + 1.875 = 9.375
    # aligned=True: box (-0.5, -0.5, 3.5, 3.5), samples at 0, 1, 2, 3 -> mean 1.5: 4*1.5 + 1.5 = 7.5
    box = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
    assert roi_align(fmap, box, 1, 1.0, 0, False).item() == pytest.approx(9.375, abs=1e-12)
    assert roi_align(fmap, box, 1, 1.0, 0, True).item() == pytest.approx(7.5, abs=1e-12)

    # Tiny box (1.2, 1.2, 1.4, 1.4), 1x1 output, 2x2 samples:
    # aligned=False: grown to 1x1 cell -> (1.2, 1.2)-(2.2, 2.2), samples 1.45, 1.95 -> mean 1.7:
    #   4 * 1.7 + 1.7 = 8.5
    # aligned=True: (0.7, 0.7)-(0.9, 0.9), samples 0.75, 0.85 -> mean 0.8: 4 * 0.8 + 0.8 = 4.0
    tiny = torch.tensor([[0.0, 1.2, 1.2, 1.4, 1.4]], dtype=torch.float64)
    assert roi_align(fmap, tiny, 1, 1.0, 2, False).item() == pytest.approx(8.5, abs=1e-12)
    assert roi_align(fmap, tiny, 1, 1.0, 2, True).item() == pytest.approx(4.0, abs=1e-12)

    # Zero-size box with adaptive sampling, aligned=True: ceil(0 / 1) = 0 samples -> output 0
    # (torchvision: empty grid, count clamped to 1). aligned=False grows it to 1x1 instead.
    point = torch.tensor([[0.0, 2.25, 1.25, 2.25, 1.25]], dtype=torch.float64)
    assert roi_align(fmap, point, 1, 1.0, 0, True).item() == 0.0
    # aligned=False: (2.25, 1.25)-(3.25, 2.25), 1 sample at (1.75, 2.75): 4 * 1.75 + 2.75 = 9.75
    assert roi_align(fmap, point, 1, 1.0, 0, False).item() == pytest.approx(9.75, abs=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_non_finite_rois_pool_to_zero(aligned, sampling_ratio):
    # NaN features upstream give NaN boxes: no crash, no NaN, and the finite RoI is unaffected
    features = random_features((1, 2, 8, 8), 30, torch.float32)
    nan, inf = float("nan"), float("inf")
    rois = torch.tensor([[0, 1.3, 1.1, 5.2, 5.7], [0, nan, 1.0, 5.0, 5.0], [0, 1.0, 1.0, inf, 5.0],
                         [0, 1.0, -inf, 5.0, 5.0], [0, nan, nan, nan, nan]])
    out = roi_align(features, rois, 2, 1.0, sampling_ratio, aligned)
    assert (out[1:] == 0).all()
    torch.testing.assert_close(out[:1], roi_align(features, rois[:1], 2, 1.0, sampling_ratio, aligned))


def _gradcheck_rois():
    # feature-map coordinates chosen so that no sample lands on an integer or on a map edge
    return torch.tensor([
        [0, 0.31, 0.43, 4.57, 3.29],
        [1, 1.13, 2.27, 6.41, 5.67],
        [0, -0.71, 3.37, 2.21, 7.53],  # hangs over the left edge
        [1, 5.19, 0.23, 7.63, 1.11],   # hangs over the right edge, tiny in y
        [1, 2.53, 2.61, 2.87, 2.79],   # tiny
    ], dtype=torch.float64)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_gradcheck(aligned, sampling_ratio):
    features = random_features((2, 2, 6, 7), 19, torch.float64).requires_grad_()
    rois = _gradcheck_rois()
    assert torch.autograd.gradcheck(
        lambda f: roi_align(f, rois, (2, 3), 1.0, sampling_ratio, aligned), (features,), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_backward_matches_loop_jacobian(aligned):
    # RoIAlign is linear in the features: the gradient of sum(out * g) is the reference forward
    # applied to unit maps. Compare the autograd gradient with that, in float32 too.
    for dtype in DTYPES:
        features = random_features((2, 1, 5, 6), 20, dtype).requires_grad_()
        rois = random_rois(8, 10, 12, 2, seed=21, dtype=dtype)
        g = random_features((8, 1, 2, 2), 22, dtype)
        out = roi_align(features, rois, 2, 0.5, 0, aligned)
        (grad,) = torch.autograd.grad((out * g).sum(), features)
        expected = torch.zeros(features.numel(), dtype=torch.float64)
        for k in range(features.numel()):
            unit = torch.zeros(features.numel(), dtype=dtype)
            unit[k] = 1
            ref = ref_roi_align(unit.reshape(features.shape), rois, (2, 2), 0.5, 0, aligned)
            expected[k] = (ref.double() * g.double()).sum()
        torch.testing.assert_close(grad, expected.reshape(features.shape).to(dtype), **_tol(dtype))


# ----------------------------------------------------------------------------- RoIPool


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25])
def test_roi_pool_matches_kernel_loop(dtype, spatial_scale):
    height, width = 9, 11
    features = random_features((2, 3, height, width), 23, dtype)
    rois = random_rois(24, height / spatial_scale, width / spatial_scale, 2, seed=24, dtype=dtype)
    out = roi_pool(features, rois, (3, 4), spatial_scale)
    assert out.shape == (24, 3, 3, 4) and out.dtype == dtype
    torch.testing.assert_close(out, ref_roi_pool(features, rois, (3, 4), spatial_scale), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool_rounds_half_away_from_zero(dtype):
    # torchvision rounds box corners with C's round(): 0.5 -> 1, 1.5 -> 2, 2.5 -> 3, -0.5 -> -1.
    # Round-half-to-even (torch.round) would give 0, 2, 2, 0 and pool other cells.
    features = random_features((1, 1, 6, 6), 25, dtype)
    rois = torch.tensor([
        [0, 0.5, 0.5, 2.5, 2.5],
        [0, -0.5, 1.5, 0.5, 4.5],
        [0, 2.5, 2.5, 2.5, 2.5],
        [0, 1.25, 0.75, 4.75, 3.25],  # on a 0.5 grid after scale 2
        # just below / above a half: 0.49999997 -> 0, 1.5000001 -> 2 (float32 neighbours of .5)
        [0, 0.49999997, 0.49999997, 1.5000001, 3.4999998],
    ], dtype=dtype)
    for scale in (1.0, 2.0, 0.5):
        out = roi_pool(features, rois, (2, 2), scale)
        torch.testing.assert_close(out, ref_roi_pool(features, rois, (2, 2), scale), rtol=0, atol=0)
    # box (0.5, 0.5)-(2.5, 2.5) covers cells 1..3 (both ends rounded up), 1x1 output: max over them
    out = roi_pool(features, rois[:1], 1, 1.0)
    assert out.item() == features[0, 0, 1:4, 1:4].max().item()


def test_roi_pool_empty_bins_and_outside():
    features = random_features((1, 2, 4, 4), 26, torch.float64) - 10  # all negative: 0 is not a max
    rois = torch.tensor([
        [0, 10.0, 10.0, 12.0, 12.0],  # entirely outside: every bin empty -> 0
        [0, 3.0, 3.0, 5.0, 5.0],      # partly outside: bins beyond the map are empty
    ], dtype=torch.float64)
    out = roi_pool(features, rois, 3, 1.0)
    torch.testing.assert_close(out, ref_roi_pool(features, rois, (3, 3), 1.0), rtol=0, atol=0)
    assert (out[0] == 0).all()
    assert (out[1, :, 0, 0] < 0).all() and (out[1, :, 2, 2] == 0).all()
    assert roi_pool(features, torch.zeros(0, 5, dtype=torch.float64), 3).shape == (0, 2, 3, 3)


def test_roi_pool_gradcheck():
    # distinct values (a permutation scaled by 0.01) so that each bin's max is unique and
    # stays the max under gradcheck's perturbation
    g = torch.Generator().manual_seed(27)
    features = (torch.randperm(2 * 2 * 6 * 7, generator=g).to(torch.float64) * 0.01).reshape(2, 2, 6, 7)
    features.requires_grad_()
    rois = torch.tensor([
        [0, 0.3, 0.4, 4.6, 3.3],
        [1, 1.1, 2.2, 6.4, 5.7],
        [0, -1.7, 3.4, 2.2, 7.5],
        [1, 5.2, 0.2, 9.6, 1.1],
        [1, 2.4, 2.6, 2.6, 2.4],
    ], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, rois, (2, 3), 1.0), (features,), eps=1e-6, atol=1e-6)
    # and the gradient goes to the argmax cell only
    out = roi_pool(features, rois[:1], 1, 1.0)
    (grad,) = torch.autograd.grad(out.sum(), features)
    assert grad.sum() == 2 and (grad > 0).sum() == 2


def test_chunking_gives_the_same_result(monkeypatch):
    # Big batches are processed in chunks of RoIs; force tiny chunks and compare.
    features = random_features((2, 3, 9, 11), 28, torch.float64)
    rois = random_rois(24, 18, 22, 2, seed=29, dtype=torch.float64)
    align = roi_align(features, rois, (3, 4), 0.5, 0, False)
    pool = roi_pool(features, rois, (3, 4), 0.5)
    monkeypatch.setattr(roi_align_module, "_MAX_ELEMENTS_PER_CHUNK", 500)
    torch.testing.assert_close(roi_align(features, rois, (3, 4), 0.5, 0, False), align, rtol=0, atol=0)
    torch.testing.assert_close(roi_pool(features, rois, (3, 4), 0.5), pool, rtol=0, atol=0)
    torch.testing.assert_close(align, ref_roi_align(features, rois, (3, 4), 0.5, 0, False), **_tol(torch.float64))


def test_roi_pool_gradient_goes_to_the_first_maximum_of_a_bin():
    # Tied maxima: the whole gradient goes to the first tied cell in row-major order, as
    # torchvision's argmax does (an even split among ties would also pass gradcheck's sum).
    features = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    features[0, 0, 1, 2] = features[0, 0, 2, 1] = features[0, 0, 3, 3] = 5.0
    features.requires_grad_()
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]], dtype=torch.float64)
    out = roi_pool(features, rois, 1, 1.0)
    assert out.item() == 5.0
    (grad,) = torch.autograd.grad(out.sum(), features)
    expected = torch.zeros_like(grad)
    expected[0, 0, 1, 2] = 1.0  # row 1 comes before rows 2 and 3
    assert torch.equal(grad, expected)


# ----------------------------------------------------------------------------- RoIWarp


def ref_roi_warp(features, rois, output_size, spatial_scale, sampling_ratio):
    """RoIWarp one RoI at a time: corners rounded with C's round() on the feature grid, then
    the RoIAlign loop (aligned=False) on the quantized box."""
    t = _np_dtype(features.dtype)

    def c_round(v):
        v = float(v)
        return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

    quantized = torch.tensor(
        [[float(r[0])] + [c_round(t(v) * t(spatial_scale)) for v in r[1:].tolist()] for r in rois],
        dtype=torch.float64).reshape(-1, 5)
    return ref_roi_align(features, quantized.to(features.dtype), output_size, 1.0, sampling_ratio, False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.25])
def test_roi_warp_matches_loop(dtype, sampling_ratio, spatial_scale):
    height, width = 9, 11
    features = random_features((2, 3, height, width), 31, dtype)
    rois = random_rois(24, height / spatial_scale, width / spatial_scale, 2, seed=32, dtype=dtype)
    out = roi_warp(features, rois, (3, 4), spatial_scale, sampling_ratio)
    assert out.shape == (24, 3, 3, 4) and out.dtype == dtype
    torch.testing.assert_close(out, ref_roi_warp(features, rois, (3, 4), spatial_scale, sampling_ratio), **_tol(dtype))


def test_roi_warp_hand_computed_misalignment():
    # A map whose value is its column index: bilinear sampling reads the x coordinate itself.
    # Box x from 0.4 to 4.4, two bins, one sample each: RoIAlign samples at x = 1.4 and 3.4;
    # RoIWarp first rounds the box to 0..4 and samples at 1 and 3, 0.4 cells off (the
    # misalignment of Table 2c). RoIPool takes the max of cells 0..2 and 2..4: 2 and 4.
    features = torch.arange(6, dtype=torch.float64).repeat(1, 1, 4, 1)  # (1, 1, 4, 6), value = x
    rois = torch.tensor([[0, 0.4, 0.0, 4.4, 3.0]], dtype=torch.float64)
    align = roi_align(features, rois, (1, 2), 1.0, 1, False)
    warp = roi_warp(features, rois, (1, 2), 1.0, 1, False)
    pool = roi_pool(features, rois, (1, 2), 1.0)
    torch.testing.assert_close(align.flatten(), torch.tensor([1.4, 3.4], dtype=torch.float64))
    torch.testing.assert_close(warp.flatten(), torch.tensor([1.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(pool.flatten(), torch.tensor([2.0, 4.0], dtype=torch.float64))
    # a box already on whole cells is not moved: RoIWarp == RoIAlign there
    on_grid = torch.tensor([[0, 1.0, 0.0, 5.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(roi_warp(features, on_grid, 3, 1.0, 2), roi_align(features, on_grid, 3, 1.0, 2))
    # aligned is ignored: the quantized box has no half-pixel offset to choose
    torch.testing.assert_close(roi_warp(features, rois, 2, 1.0, 2, True), roi_warp(features, rois, 2, 1.0, 2, False))


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_warp_gradcheck(sampling_ratio):
    features = random_features((2, 2, 6, 7), 33, torch.float64).requires_grad_()
    rois = _gradcheck_rois()
    assert torch.autograd.gradcheck(
        lambda f: roi_warp(f, rois, (2, 3), 0.5, sampling_ratio), (features,), eps=1e-6, atol=1e-6
    )


def test_roi_pool_accepts_the_roi_align_signature():
    # the pooler calls every extractor as f(features, rois, size, scale, sampling_ratio, aligned)
    features = random_features((1, 2, 6, 6), 34, torch.float64)
    rois = random_rois(6, 6, 6, 1, seed=35, dtype=torch.float64)
    torch.testing.assert_close(roi_pool(features, rois, 2, 1.0, 2, True), roi_pool(features, rois, 2, 1.0), rtol=0, atol=0)
