"""The keypoint branch: heatmap targets, decoding, the loss, and the model with keypoints (with and
without the mask branch). torchvision parity is in tests/reference/test_keypoint_reference.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from maskrcnn.modeling import ModelConfig, build_model
from maskrcnn.modeling.roi_heads.keypoint_head import KeypointHead, keypoint_loss
from maskrcnn.ops.keypoints import heatmaps_to_keypoints, keypoints_to_heatmap, scale_keypoints

from .test_model import SMALL, synthetic_sample

KEYPOINT_SMALL = dict(SMALL, num_keypoints=5, keypoint_head_channels=16)


def slow_heatmap_targets(keypoints, rois, size):
    """One keypoint at a time, written from the paper's definition: the cell of the RoI's S x S
    grid that holds the keypoint (the right / bottom edge in the last cell)."""
    targets = torch.zeros(keypoints.shape[:2], dtype=torch.int64)
    valid = torch.zeros(keypoints.shape[:2], dtype=torch.bool)
    for r, (x0, y0, x1, y1) in enumerate(rois.tolist()):
        for k, (x, y, v) in enumerate(keypoints[r].tolist()):
            if v <= 0 or not (x0 <= x <= x1 and y0 <= y <= y1):
                continue
            cx = size - 1 if x == x1 else math.floor((x - x0) * (size / (x1 - x0)))
            cy = size - 1 if y == y1 else math.floor((y - y0) * (size / (y1 - y0)))
            targets[r, k], valid[r, k] = cy * size + cx, True
    return targets, valid


def random_rois_and_keypoints(seed, rois=20, keypoints=6):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(rois, 2, generator=g) * 100
    wh = 4 + torch.rand(rois, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + wh], 1)
    kp = torch.zeros(rois, keypoints, 3)
    kp[..., :2] = xy[:, None] + (torch.rand(rois, keypoints, 2, generator=g) * 1.3 - 0.15) * wh[:, None]
    kp[..., 2] = torch.randint(0, 3, (rois, keypoints), generator=g).float()
    kp[0, 0, :2] = boxes[0, 2:]  # the bottom-right corner itself
    kp[0, 0, 2] = 2
    return boxes, kp


def test_heatmap_targets_equal_the_slow_definition():
    boxes, kp = random_rois_and_keypoints(0)
    targets, valid = keypoints_to_heatmap(kp, boxes, 56)
    slow_targets, slow_valid = slow_heatmap_targets(kp, boxes, 56)
    assert torch.equal(valid, slow_valid)
    assert torch.equal(targets[valid], slow_targets[valid])
    assert valid[0, 0] and targets[0, 0] == 56 * 56 - 1
    assert 10 < valid.sum() < valid.numel()  # both kinds occur


def test_decoding_a_single_peak_gives_its_cell_centre_and_value():
    maps = torch.zeros(2, 3, 56, 56)
    for k, (y, x) in enumerate([(10, 20), (0, 55), (40, 3)]):
        maps[:, k, y, x] = 5.0 + k
    # a box exactly 56 px wide and high: the resize is the identity, cell (y, x) -> (x + .5, y + .5)
    boxes = torch.tensor([[100.0, 50.0, 156.0, 106.0], [0.0, 0.0, 56.0, 56.0]])
    keypoints, scores = heatmaps_to_keypoints(maps, boxes)
    expected = torch.tensor([[20.5, 10.5], [55.5, 0.5], [3.5, 40.5]])
    assert torch.allclose(keypoints[0, :, :2], expected + torch.tensor([100.0, 50.0]))
    assert torch.allclose(keypoints[1, :, :2], expected)
    assert torch.equal(keypoints[..., 2], torch.ones(2, 3))
    assert torch.allclose(scores, torch.tensor([5.0, 6.0, 7.0]).expand(2, 3))


def test_decoding_scales_back_a_box_of_fractional_size():
    # 55.5 px: the map is resized to ceil = 56 cells, each 55.5 / 56 px wide
    maps = torch.zeros(1, 1, 56, 56)
    maps[0, 0, 30, 12] = 1.0
    keypoints, _ = heatmaps_to_keypoints(maps, torch.tensor([[10.0, 20.0, 65.5, 75.5]]))
    assert torch.allclose(keypoints[0, 0, :2], torch.tensor([10 + 12.5 * 55.5 / 56, 20 + 30.5 * 55.5 / 56]))


def test_scale_keypoints_keeps_visibility():
    kp = torch.tensor([[[10.0, 20.0, 2.0], [0.0, 0.0, 0.0]]])
    out = scale_keypoints(kp, (100, 200), (50, 400))
    assert torch.equal(out, torch.tensor([[[20.0, 10.0, 2.0], [0.0, 0.0, 0.0]]]))


def slow_keypoint_loss(logits, boxes, keypoints):
    """Mean over labelled keypoints inside their RoI of -log softmax(logits over S*S) at the cell."""
    size = logits.shape[-1]
    targets, valid = slow_heatmap_targets(keypoints, boxes, size)
    terms = [-F.log_softmax(logits[r, k].reshape(-1), 0)[targets[r, k]]
             for r in range(logits.shape[0]) for k in range(logits.shape[1]) if valid[r, k]]
    return torch.stack(terms).mean()


def test_keypoint_loss_equals_the_slow_reference_and_gradchecks():
    boxes, kp = random_rois_and_keypoints(1, rois=6, keypoints=4)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    # two images: 4 + 2 RoIs matched to their image's gt (here: gt i for RoI i)
    split = [boxes[:4], boxes[4:]], [kp[:4].double(), kp[4:].double()], [torch.arange(4), torch.arange(2)]
    loss = keypoint_loss(logits, *split)
    assert torch.allclose(loss, slow_keypoint_loss(logits, boxes, kp.double()))
    # the gradient on a smaller case (each input costs two evaluations)
    small = logits.detach()[:, :2, :4, :4].clone().requires_grad_(True)
    split = [boxes[:4], boxes[4:]], [kp[:4, :2].double(), kp[4:, :2].double()], [torch.arange(4), torch.arange(2)]
    assert torch.autograd.gradcheck(lambda x: keypoint_loss(x, *split), (small,))


def test_keypoint_loss_without_labelled_keypoints_is_zero_with_a_gradient():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])
    loss = keypoint_loss(logits, [boxes], [torch.zeros(1, 3, 3)], [torch.zeros(2, dtype=torch.int64)])
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None


def test_keypoint_head_gives_56x56_heatmaps_per_keypoint():
    head = KeypointHead(in_channels=8, num_keypoints=7, conv_dims=(16,) * 8)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in head.convs.modules()) == 8
    assert head(torch.randn(3, 8, 14, 14)).shape == (3, 7, 56, 56)


def keypoint_sample(seed=0):
    image, target = synthetic_sample(seed)
    kp = torch.zeros(2, 5, 3)
    for i, (x1, y1, x2, y2) in enumerate(target["boxes"].tolist()):
        # corners and centre of each rectangle, the last one unlabelled on the second
        kp[i] = torch.tensor([[x1, y1, 2], [x2, y1, 2], [x2, y2, 2], [x1, y2, 1], [(x1 + x2) / 2, (y1 + y2) / 2, 2]])
    kp[1, 4, 2] = 0
    return image, {**target, "keypoints": kp}


@pytest.mark.parametrize("variant, mask_on", [("v1", False), ("v2", True)])
def test_keypoint_model_trains_and_detects_with_and_without_masks(variant, mask_on):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**KEYPOINT_SMALL, "mask_on": mask_on, "variant": variant}))
    assert model.roi_heads.has_mask == mask_on and model.roi_heads.has_keypoints
    # v2 puts batch norm in the heads, the keypoint head's convs included
    assert (model.roi_heads.keypoint_head.convs[0].norm is not None) == (variant == "v2")
    image, target = keypoint_sample()
    if not mask_on:
        target = {k: v for k, v in target.items() if k != "masks"}  # not needed without masks
    model.train()
    losses = model([image], [target]).losses
    assert ("loss_mask" in losses) == mask_on
    assert losses["loss_keypoint"] > 0
    losses["loss_keypoint"].backward()
    head = model.roi_heads.keypoint_head
    assert head.deconv.weight.grad.abs().sum() > 0 and head.convs[0].conv.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        det = model([image, image[:, :80, :100]]).detections
    for d, (h, w) in zip(det, [(96, 128), (80, 100)]):
        assert d.keypoints.shape == (len(d), 5, 3) and d.keypoint_scores.shape == (len(d), 5)
        assert (d.masks is not None) == mask_on
        # keypoints lie in their boxes, in the original image's pixels
        inside = ((d.keypoints[..., 0] >= d.boxes[:, None, 0] - 1e-3) & (d.keypoints[..., 0] <= d.boxes[:, None, 2] + 1e-3)
                  & (d.keypoints[..., 1] >= d.boxes[:, None, 1] - 1e-3) & (d.keypoints[..., 1] <= d.boxes[:, None, 3] + 1e-3))
        assert inside.all()


def test_keypoint_head_trains_only_on_rois_of_gt_with_keypoints():
    # the second instance has no labelled keypoint (as a non-person class): its positive RoIs
    # must not reach the keypoint head, the first one's must
    from maskrcnn.ops import box_iou

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**KEYPOINT_SMALL, "mask_on": False})).train()
    image, target = keypoint_sample()
    target = {k: v for k, v in target.items() if k != "masks"}
    target["keypoints"][1, :, 2] = 0
    seen = []
    model.roi_heads.keypoint_pooler.register_forward_hook(lambda m, inputs, out: seen.append(inputs[1][0]))
    assert model([image], [target]).losses["loss_keypoint"] > 0
    from maskrcnn.modeling.transform import scale_boxes

    iou = box_iou(seen[0], scale_boxes(target["boxes"], (96, 128), (128, 170)))  # the model's resize
    assert len(seen[0]) > 0 and (iou[:, 0] >= 0.5).all() and (iou[:, 1] < 0.5).all()


def test_missing_or_malformed_keypoint_targets_name_the_target():
    model = build_model(ModelConfig.from_dict({**KEYPOINT_SMALL, "mask_on": False})).train()
    image, target = keypoint_sample()
    with pytest.raises(ValueError, match="target 0 has no 'keypoints'"):
        model([image], [{k: v for k, v in target.items() if k != "keypoints"}])
    with pytest.raises(ValueError, match=r"target 0: keypoints must be a float \(2, 5, 3\)"):
        model([image], [dict(target, keypoints=target["keypoints"][:, :4])])


def test_keypoint_options_are_checked():
    with pytest.raises(ValueError, match="keypoint_names has 2 names but num_keypoints is 5"):
        build_model(ModelConfig.from_dict({**KEYPOINT_SMALL, "keypoint_names": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"keypoint_skeleton pair \[1, 6\]"):
        build_model(ModelConfig.from_dict({**KEYPOINT_SMALL, "keypoint_skeleton": [[1, 6]]}))
