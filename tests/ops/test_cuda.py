"""The ops on CUDA give what they give on CPU (the CPU results are checked against the reference
loops in the other files). Deselected by default: run with `-m cuda` on a machine with a GPU."""
import pytest
import torch

from maskrcnn.ops import (
    BoxCoder,
    MultiScaleRoIAlign,
    batched_nms,
    box_iou,
    mask_targets,
    nms,
    paste_masks,
    roi_align,
    roi_pool,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _boxes(n, size, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 1.2 - size * 0.1
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.5
    return torch.cat([xy, xy + wh], 1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_ops_and_nms_on_cuda(dtype):
    boxes = _boxes(500, 100, 0, dtype)
    scores = torch.rand(500, generator=torch.Generator().manual_seed(1), dtype=dtype)
    groups = torch.randint(0, 20, (500,), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(box_iou(boxes.cuda(), boxes.cuda()).cpu(), box_iou(boxes, boxes))
    assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), nms(boxes, scores, 0.5))
    assert torch.equal(batched_nms(boxes.cuda(), scores.cuda(), groups.cuda(), 0.5).cpu(),
                       batched_nms(boxes, scores, groups, 0.5))
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = torch.randn(500, 12, generator=torch.Generator().manual_seed(3), dtype=dtype)
    torch.testing.assert_close(coder.decode(deltas.cuda(), boxes.cuda()).cpu(), coder.decode(deltas, boxes))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_and_pool_on_cuda(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(4)
    features = torch.randn(2, 8, 25, 30, generator=g, dtype=torch.float64)
    boxes = _boxes(40, 100, 5, torch.float64)
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).to(torch.float64), boxes], 1)
    f_cuda = features.cuda().requires_grad_()
    f_cpu = features.clone().requires_grad_()
    out_cuda = roi_align(f_cuda, rois.cuda(), (7, 5), 0.25, sampling_ratio, aligned)
    out_cpu = roi_align(f_cpu, rois, (7, 5), 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(out_cuda.cpu(), out_cpu)
    grad = torch.randn(out_cpu.shape, generator=g, dtype=torch.float64)
    out_cuda.backward(grad.cuda())
    out_cpu.backward(grad)
    torch.testing.assert_close(f_cuda.grad.cpu(), f_cpu.grad)
    torch.testing.assert_close(roi_pool(features.cuda(), rois.cuda(), 7, 0.25).cpu(),
                               roi_pool(features, rois, 7, 0.25))


def test_pooler_masks_on_cuda():
    g = torch.Generator().manual_seed(6)
    strides = [4, 8, 16, 32]
    features = [torch.randn(2, 4, 128 // s, 160 // s, generator=g) for s in strides]
    boxes = [_boxes(30, 128, 7), _boxes(20, 128, 8)]
    pooler = MultiScaleRoIAlign(strides=strides, output_size=7, sampling_ratio=2)
    torch.testing.assert_close(pooler([f.cuda() for f in features], [b.cuda() for b in boxes]).cpu(),
                               pooler(features, boxes), rtol=1e-4, atol=1e-5)
    masks = torch.rand(30, 28, 28, generator=g)
    torch.testing.assert_close(paste_masks(masks.cuda(), boxes[0].cuda(), (128, 160)).cpu(),
                               paste_masks(masks, boxes[0], (128, 160)), rtol=1e-4, atol=1e-5)
    gt = torch.rand(5, 128, 160, generator=g) > 0.5
    matched = torch.randint(0, 5, (30,), generator=g)
    torch.testing.assert_close(mask_targets(gt.cuda(), boxes[0].cuda(), matched.cuda(), 28).cpu(),
                               mask_targets(gt, boxes[0], matched, 28), rtol=1e-4, atol=1e-5)
