"""RoIAlign, RoIPool and RoIWarp in vectorized PyTorch.

RoIAlign averages bilinear samples taken on a regular grid inside each output bin. Each bin is
a weighted sum of feature-map cells: every sample reads its four neighbouring cells with
torchvision's bilinear weights, divided by the bin's sample count. That sum is one
`F.embedding_bag(mode="sum", per_sample_weights=...)` over the channels-last map viewed as a
table of (N * H * W) rows of C channels: a fused gather of contiguous channel vectors whose
backward is a scatter-add into the same rows. It is an order of magnitude faster than sampling
with `grid_sample` and averaging (forward and backward), needs no per-image loop, and follows
torchvision's edge rules directly: a sample more than one cell outside the map contributes 0,
one within a cell outside reads the edge cells, and on the last row or column both neighbours
are that cell.

Conventions (both supported):
    aligned=False (torchvision, the original Mask R-CNN): box corners are scaled to the feature map
        as they are, and a box is at least 1x1 cell.
    aligned=True (Detectron2 "ROIAlignV2"): 0.5 is subtracted after scaling, so a box is measured
        between pixel centers; no minimum size.
sampling_ratio > 0 takes that many samples per bin side; 0 (or negative) takes
ceil(roi_size / output_size) samples, per RoI, and a RoI for which that is <= 0 (an empty or
inverted box with aligned=True, or a non-finite box) pools to 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Bound on the (bins x taps) index and weight entries built at once, to cap memory.
_MAX_ELEMENTS_PER_CHUNK = 1 << 24


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """features (N, C, H, W); rois (R, 5) as (batch_index, x1, y1, x2, y2) in input pixels.
    Returns (R, C, ph, pw), with channels-last strides."""
    ph, pw = _pair(output_size)
    num_rois = rois.shape[0]
    _, channels, height, width = features.shape
    # Sampling positions need float32 at least: in bfloat16 a grid coordinate on a 200-cell map
    # is off by up to a cell. Reduced-precision features (autocast) are sampled in float32 too,
    # and the result is float32 whether or not this call has RoIs, so that the pooler's
    # per-level parts always agree in dtype.
    dtype = torch.promote_types(features.dtype, torch.float32)
    if num_rois == 0:
        return features.new_zeros((0, channels, ph, pw), dtype=dtype)
    features = features.to(dtype)
    rois = rois.to(dtype)

    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / ph
    bin_w = roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio)
        grid_w = torch.full_like(roi_w, sampling_ratio)
        max_grid_h = max_grid_w = sampling_ratio
    else:
        # Not clamped: an empty or inverted box (possible with aligned=True) gets an empty grid
        # and pools to 0, as in torchvision's kernels. So does a box with a NaN or infinite
        # coordinate (from NaN features upstream) instead of crashing int() below.
        grid_h = torch.ceil(roi_h / ph)
        grid_w = torch.ceil(roi_w / pw)
        finite = torch.isfinite(grid_h) & torch.isfinite(grid_w)
        grid_h = torch.where(finite, grid_h, torch.zeros_like(grid_h))
        grid_w = torch.where(finite, grid_w, torch.zeros_like(grid_w))
        max_grid_h = max(int(grid_h.max()), 1)
        max_grid_w = max(int(grid_w.max()), 1)

    # The map as a table of channel vectors, rows indexed (b * H + y) * W + x (a view when the
    # features are channels-last already, as the backbone's are).
    table = features.permute(0, 2, 3, 1).reshape(-1, channels)
    batch_index = rois[:, 0].long()
    taps_per_roi = ph * pw * max_grid_h * max_grid_w * 4
    chunk = max(1, _MAX_ELEMENTS_PER_CHUNK // taps_per_roi)
    parts = []
    for start in range(0, num_rois, chunk):
        # A loop over chunks of RoIs, which bounds the index tensors (one pass in the usual case).
        s = slice(start, start + chunk)
        rows, row_weights = _axis_taps(y1[s], bin_h[s], grid_h[s], ph, max_grid_h, height)
        cols, col_weights = _axis_taps(x1[s], bin_w[s], grid_w[s], pw, max_grid_w, width)
        r = rows.shape[0]
        # (r, ph, pw, gh * 2, gw * 2): every sample's four cells and weights, per bin
        index = ((batch_index[s] * height)[:, None, None, None, None] + rows[:, :, None, :, None]) * width \
            + cols[:, None, :, None, :]
        weight = row_weights[:, :, None, :, None] * col_weights[:, None, :, None, :]
        # torchvision divides each bin's sum by its sample count (also counting samples that
        # fell outside the map)
        weight = weight / (grid_h[s] * grid_w[s]).clamp(min=1)[:, None, None, None, None]
        pooled = F.embedding_bag(index.reshape(r * ph * pw, -1), table, mode="sum",
                                 per_sample_weights=weight.reshape(r * ph * pw, -1))
        parts.append(pooled.view(r, ph, pw, channels))
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out.permute(0, 3, 1, 2)  # (R, C, ph, pw) view of channels-last memory


def _axis_taps(start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, max_grid: int,
               size: int) -> tuple[Tensor, Tensor]:
    """Along one axis, for each RoI, bin and sample: the two neighbouring cells and their
    bilinear weights, with torchvision's edge rule. Returns int64 cells and weights, both
    (R, bins, max_grid * 2), samples' (low, high) pairs side by side; a sample that does not
    count (outside [-1, size], beyond this RoI's grid, or not finite) has weight 0 at cell 0."""
    b = torch.arange(bins, device=start.device, dtype=start.dtype)
    i = torch.arange(max_grid, device=start.device, dtype=start.dtype)
    coords = (start[:, None, None] + b[None, :, None] * bin_size[:, None, None]
              + (i[None, None, :] + 0.5) * (bin_size / grid.clamp(min=1))[:, None, None])  # (R, bins, g)
    valid = (coords >= -1.0) & (coords <= size) & (i < grid[:, None, None])
    c = coords.clamp(min=0)
    low = torch.floor(c)
    at_end = low >= size - 1  # the last cell: both neighbours are that cell
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    c = torch.where(at_end, low, c)
    frac = c - low
    zero = torch.zeros_like(frac)
    weights = torch.stack((torch.where(valid, 1 - frac, zero), torch.where(valid, frac, zero)), dim=-1)
    low = torch.where(valid, low, zero).long()
    high = torch.where(at_end | ~valid, low, low + 1)
    cells = torch.stack((low, high), dim=-1)
    return cells.flatten(2), weights.flatten(2)


def restore_order(parts: list[Tensor], indices: list[Tensor]) -> Tensor:
    """Concatenate results computed for subsets of rows (`parts[k]` for rows `indices[k]`, which
    together cover every row once) back into row order: one gather, differentiable."""
    if len(parts) == 1:
        return parts[0]  # a single part covers every row, in order (nonzero is sorted)
    rows = sum(p.shape[0] for p in parts)
    out = torch.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype, device=parts[0].device,
                      memory_format=torch.channels_last)
    for part, idx in zip(parts, indices):
        out.index_copy_(0, idx, part)
    return out


def _round_half_away(values: Tensor) -> Tensor:
    """C's round(): to the nearest integer, halves away from zero (2.5 -> 3, -0.5 -> -1), as int64.
    torch.round rounds halves to even, which moves box corners on half-integers. Exact: the
    fractional part v - trunc(v) is computed without rounding error."""
    whole = torch.trunc(values)
    up = (values - whole).abs() >= 0.5
    return torch.where(up, whole + torch.sign(values), whole).long()


def roi_pool(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Max pooling over quantized bins (Fast R-CNN's RoIPool), torchvision's rounding rules: box
    corners scaled and rounded half away from zero, a box at least 1x1 cell (end - start + 1),
    bin b covering cells floor(b * size / n) .. ceil((b + 1) * size / n) - 1, clipped to the map.
    features (N, C, H, W); rois (R, 5) -> (R, C, ph, pw). Empty bins give 0.
    `sampling_ratio` and `aligned` are accepted and ignored (a max over whole cells has no
    sampling points, a quantized box no half-pixel offset), so a `MultiScaleRoIAlign` calls it
    exactly as it calls `roi_align`."""
    ph, pw = _pair(output_size)
    num_rois = rois.shape[0]
    _, channels, height, width = features.shape
    # float32 at least, as in roi_align: box rounding, and one dtype for every pooler level
    dtype = torch.promote_types(features.dtype, torch.float32)
    if num_rois == 0:
        return features.new_zeros((0, channels, ph, pw), dtype=dtype)
    features = features.to(dtype)
    rois = rois.to(dtype)
    start_w = _round_half_away(rois[:, 1] * spatial_scale)
    start_h = _round_half_away(rois[:, 2] * spatial_scale)
    end_w = _round_half_away(rois[:, 3] * spatial_scale)
    end_h = _round_half_away(rois[:, 4] * spatial_scale)
    roi_w = (end_w - start_w + 1).clamp(min=1).to(features.dtype)
    roi_h = (end_h - start_h + 1).clamp(min=1).to(features.dtype)

    def bin_edges(start: Tensor, size: Tensor, bins: int, limit: int) -> tuple[Tensor, Tensor]:
        b = torch.arange(bins, device=rois.device, dtype=features.dtype)
        bin_size = size[:, None] / bins
        lo = torch.floor(b[None] * bin_size).long() + start[:, None]
        hi = torch.ceil((b[None] + 1) * bin_size).long() + start[:, None]
        return lo.clamp(0, limit), hi.clamp(0, limit)

    hs, he = bin_edges(start_h, roi_h, ph, height)  # (R, ph)
    ws, we = bin_edges(start_w, roi_w, pw, width)  # (R, pw)
    kh = max(int((he - hs).max()), 1)
    kw = max(int((we - ws).max()), 1)
    rows = hs[:, :, None] + torch.arange(kh, device=rois.device)  # (R, ph, kh)
    cols = ws[:, :, None] + torch.arange(kw, device=rois.device)  # (R, pw, kw)
    row_ok = rows < he[:, :, None]
    col_ok = cols < we[:, :, None]
    rows = rows.clamp(max=height - 1)
    cols = cols.clamp(max=width - 1)

    batch_index = rois[:, 0].long()
    out = features.new_zeros((num_rois, channels, ph, pw))
    chunk = max(1, _MAX_ELEMENTS_PER_CHUNK // max(1, channels * ph * kh * pw * kw))
    for start in range(0, num_rois, chunk):
        s = slice(start, start + chunk)
        # (r, C, ph, pw, kh, kw) gather of every cell of every bin
        vals = features[
            batch_index[s][:, None, None, None, None, None],
            torch.arange(channels, device=rois.device)[None, :, None, None, None, None],
            rows[s][:, None, :, None, :, None],
            cols[s][:, None, None, :, None, :],
        ]
        ok = row_ok[s][:, None, :, None, :, None] & col_ok[s][:, None, None, :, None, :]
        vals = vals.masked_fill(~ok, -math.inf)
        # (r, C, ph, pw, kh, kw) -> (r, C, ph, pw, kh*kw): a bin's cells in row-major order. max()
        # takes the first of tied maxima and its backward routes the gradient to that one cell,
        # as torchvision's argmax does; amax() split it among the ties (found by the torchvision
        # reference suite on quantized features).
        pooled = vals.flatten(start_dim=4).max(dim=4).values
        out[s] = torch.where(torch.isinf(pooled) & (pooled < 0), torch.zeros_like(pooled), pooled)
    return out


def roi_warp(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """The Mask R-CNN paper's RoIWarp (from MNC, Dai et al. 2016): the box is quantized as in
    RoIPool, then its bins are sampled bilinearly and averaged as in RoIAlign. It isolates what
    the paper's Table 2c measures: the quantization of the box, not the max over cells.

    Box corners are scaled to the feature map and rounded half away from zero (RoIPool's
    rounding), then `roi_align` (aligned=False: cell i sits at coordinate i, a box at least 1x1
    cell) samples the quantized box [round(x1 s), round(x2 s)]. `aligned` is ignored: once the
    corners are on whole cells there is no half-pixel offset left to choose. The gradient
    flows to the features (as RoIAlign's); the rounding passes none to the boxes.
    features (N, C, H, W); rois (R, 5) -> (R, C, ph, pw)."""
    # corners in at least float32, as roi_align's sampling (bfloat16 cannot hold cell 257)
    rois = rois.to(torch.promote_types(features.dtype, torch.float32))
    corners = _round_half_away(rois[:, 1:] * spatial_scale).to(rois.dtype)
    quantized = torch.cat([rois[:, :1], corners], dim=1)
    return roi_align(features, quantized, output_size, 1.0, sampling_ratio, False)
