"""The paper's ablation switches (issue 11) and the detection-only mode: each against a slow
reference or a hand-computed case, with a float64 gradcheck where there is a backward."""
import math

import pytest
import torch

from maskrcnn.engine.config import ConfigError, load_config
from maskrcnn.modeling import ModelConfig, build_model
from maskrcnn.modeling.roi_heads.mask_head import MaskHead, MLPMaskHead, mask_loss, mask_probabilities, select_class
from maskrcnn.ops import MultiScaleRoIAlign, assign_fpn_levels, mask_targets, roi_align, roi_pool, roi_warp

from modeling.test_model import LOSS_NAMES, SMALL, small_model, synthetic_sample


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("extractor, op", [("align", roi_align), ("pool", roi_pool), ("warp", roi_warp)])
def test_roi_extractor_sets_both_poolers_operator(extractor, op):
    heads = small_model(roi_extractor=extractor).roi_heads
    assert heads.box_pooler.roi_align is op and heads.mask_pooler.roi_align is op


def test_switches_build_the_heads_they_name():
    heads = small_model(mask_head="mlp").roi_heads
    assert isinstance(heads.mask_head, MLPMaskHead)
    assert [fc.out_features for fc in heads.mask_head.fcs] == [SMALL["representation_size"]] * 2
    assert heads.mask_head.predictor.out_features == SMALL["num_classes"] * 28 * 28
    agnostic = small_model(class_agnostic_masks=True).roi_heads.mask_head
    assert isinstance(agnostic, MaskHead) and agnostic.predictor.out_channels == 1
    assert small_model(mask_loss="softmax").roi_heads.mask_loss == "softmax"
    detector = small_model(mask_on=False)
    assert not detector.roi_heads.has_mask
    assert not any("mask" in k for k in detector.state_dict())


@pytest.mark.parametrize("option, message", [
    (dict(roi_extractor="roialign"), "roi_extractor must be one of 'align', 'pool', 'warp', got 'roialign'"),
    (dict(mask_loss="bce"), "mask_loss must be one of"),
    (dict(mask_head="conv"), "mask_head must be one of"),
    (dict(mask_loss="softmax", class_agnostic_masks=True), "needs class-specific masks"),
    (dict(mask_loss="softmax", background_last=True), "needs a background mask channel"),
])
def test_bad_switch_values_are_named(option, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**SMALL, **option})


def test_switches_are_yaml_config_options():
    cfg = load_config(None, ["model.roi_extractor=warp", "model.mask_loss=softmax", "model.mask_head=mlp",
                             "model.mask_on=false", "model.class_agnostic_masks=false"])
    assert cfg.model_overrides() == dict(roi_extractor="warp", mask_loss="softmax", mask_head="mlp",
                                         mask_on=False, class_agnostic_masks=False)
    with pytest.raises(ConfigError, match="model: roi_extractor must be one of"):
        load_config(None, ["model.roi_extractor=pooling"])
    with pytest.raises(ConfigError, match="model.mask_on: expected true or false"):
        load_config(None, ["model.mask_on=maybe"])


# ----------------------------------------------------------------------------- poolers


@pytest.mark.parametrize("op", [roi_pool, roi_warp])
def test_multiscale_pooler_with_another_operator_equals_one_box_at_a_time(op):
    # the pooler's level split and reordering, with each box pooled alone from its level
    g = torch.Generator().manual_seed(0)
    strides = [4, 8, 16, 32]
    features = [torch.randn(2, 3, 64 // s, 96 // s, generator=g, dtype=torch.float64) for s in strides]
    xy = torch.rand(20, 2, generator=g, dtype=torch.float64) * torch.tensor([80.0, 50.0])
    wh = torch.rand(20, 2, generator=g, dtype=torch.float64) * 60 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    per_image = [boxes[:12], boxes[12:]]
    pooler = MultiScaleRoIAlign(strides=strides, output_size=5, sampling_ratio=2, roi_align=op)
    out = pooler(features, per_image)
    levels = assign_fpn_levels(boxes, 2, 5)
    for i, box in enumerate(boxes):
        image = 0 if i < 12 else 1
        level = int(levels[i])
        roi = torch.cat([torch.tensor([float(image)], dtype=torch.float64), box])[None]
        expected = op(features[level], roi, 5, 1.0 / strides[level], 2, False)
        torch.testing.assert_close(out[i:i + 1], expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- mask losses


def _mask_case(num_classes=4, seed=0):
    """Two images' positive RoIs, their labels, gt masks and matches; the RoIs are jittered gt
    boxes, so the targets have soft edges."""
    g = torch.Generator().manual_seed(seed)
    gt_masks, proposals, matched = [], [], []
    for n in (3, 2):
        masks = torch.zeros(2, 40, 50, dtype=torch.uint8)
        masks[0, 5:30, 8:35] = 1
        masks[1, 12:38, 20:48] = 1
        masks[1, 20:26, 30:36] = 0  # a hole
        idx = torch.randint(0, 2, (n,), generator=g)
        base = torch.tensor([[8.0, 5.0, 35.0, 30.0], [20.0, 12.0, 48.0, 38.0]])[idx]
        proposals.append(base + torch.randn(n, 4, generator=g) * 2)
        gt_masks.append(masks)
        matched.append(idx)
    labels = torch.randint(1, num_classes, (5,), generator=g)
    logits = torch.randn(5, num_classes, 7, 7, generator=g, dtype=torch.float64)
    return logits, labels, proposals, gt_masks, matched


def test_softmax_mask_loss_equals_a_pixel_loop():
    logits, labels, proposals, gt_masks, matched = _mask_case()
    loss = mask_loss(logits, labels, proposals, gt_masks, matched, loss="softmax")
    targets = torch.cat([mask_targets(m, p, i, 7) for m, p, i in zip(gt_masks, proposals, matched)]).double()
    total, count = 0.0, 0
    for r in range(logits.shape[0]):
        for y in range(7):
            for x in range(7):
                z = [float(v) for v in logits[r, :, y, x]]
                log_sum = math.log(sum(math.exp(v) for v in z))
                t = float(targets[r, y, x])
                total -= t * (z[int(labels[r])] - log_sum) + (1 - t) * (z[0] - log_sum)
                count += 1
    assert ((targets > 0) & (targets < 1)).any()  # the case has soft edges
    torch.testing.assert_close(loss, torch.tensor(total / count, dtype=torch.float64))


def test_softmax_mask_loss_with_hard_targets_is_cross_entropy():
    # binary targets: the multinomial loss is FCN's per-pixel cross-entropy against the map
    # "gt class inside the mask, background outside"
    # (a mask edge inside an RoI is always resampled soft: here the gt masks are all object or
    # all background, and RoIs alternate between them)
    _, labels, proposals, _, _ = _mask_case(seed=1)
    full_and_empty = torch.stack([torch.ones(40, 50), torch.zeros(40, 50)]).to(torch.uint8)
    gt_masks = [full_and_empty, full_and_empty]
    idx = [torch.tensor([0, 1, 0]), torch.tensor([1, 0])]
    boxes = proposals
    logits = torch.randn(5, 4, 7, 7, dtype=torch.float64)
    targets = torch.cat([mask_targets(m, b, i, 7) for m, b, i in zip(gt_masks, boxes, idx)])
    # 0 and 1 up to the float32 rounding of RoIAlign's bilinear weights (they sum to 1 within an ulp)
    torch.testing.assert_close(targets, targets.round(), rtol=0, atol=1e-6)
    assert set(targets.round().unique().tolist()) == {0.0, 1.0}
    class_map = torch.where(targets > 0.5, labels[:, None, None], torch.zeros_like(labels)[:, None, None])
    expected = torch.nn.functional.cross_entropy(logits, class_map)
    torch.testing.assert_close(mask_loss(logits, labels, boxes, gt_masks, idx, loss="softmax"), expected)


def test_sigmoid_masks_do_not_compete_and_softmax_masks_do():
    # the paper's point in Table 2b: with softmax, another class's mask logit changes this
    # class's mask; with per-class sigmoids it cannot
    logits = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    label = torch.tensor([2])
    raised = logits.clone()
    raised[:, 3] = 5.0
    sig = mask_probabilities(logits, label), mask_probabilities(raised, label)
    soft = mask_probabilities(logits, label, loss="softmax"), mask_probabilities(raised, label, loss="softmax")
    torch.testing.assert_close(sig[0], sig[1])
    torch.testing.assert_close(soft[0], torch.full((1, 2, 2), 0.25, dtype=torch.float64))
    torch.testing.assert_close(soft[1], torch.full((1, 2, 2), 1 / (3 + math.exp(5)), dtype=torch.float64))


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_mask_loss_gradcheck(loss):
    logits, labels, proposals, gt_masks, matched = _mask_case(seed=2)
    logits = logits[:, :, :4, :4].contiguous().requires_grad_()
    loss_fn = lambda z: mask_loss(z, labels, proposals, gt_masks, matched, loss=loss)  # noqa: E731
    assert loss_fn(logits).dtype == torch.float64  # float32 targets do not round the loss
    assert torch.autograd.gradcheck(loss_fn, (logits,), eps=1e-6, atol=1e-7, fast_mode=True)


def test_class_agnostic_mask_is_read_for_every_label():
    logits = torch.randn(3, 1, 5, 5)
    labels = torch.tensor([1, 3, 2])
    torch.testing.assert_close(select_class(logits, labels), logits[:, 0])
    # and the loss trains that one channel for every class: a per-class sigmoid BCE on it
    logits, labels, proposals, gt_masks, matched = _mask_case(seed=3)
    one = logits[:, :1]
    targets = torch.cat([mask_targets(m, p, i, 7) for m, p, i in zip(gt_masks, proposals, matched)])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(one[:, 0], targets.double())
    torch.testing.assert_close(mask_loss(one, labels, proposals, gt_masks, matched), expected)


# ----------------------------------------------------------------------------- MLP head


def test_mlp_mask_head_equals_its_layers_by_hand_and_gradcheck():
    torch.manual_seed(0)
    head = MLPMaskHead(in_channels=2, num_classes=3, pooled_size=4, fc_dims=(6, 5), mask_size=3).double()
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    out = head(x)
    assert out.shape == (4, 3, 3, 3)
    w1, w2, w3 = (fc.weight for fc in (*head.fcs, head.predictor))
    b1, b2, b3 = (fc.bias for fc in (*head.fcs, head.predictor))
    flat = x.reshape(4, 32)
    hidden = torch.clamp(torch.clamp(flat @ w1.T + b1, min=0) @ w2.T + b2, min=0)
    torch.testing.assert_close(out, (hidden @ w3.T + b3).reshape(4, 3, 3, 3))
    small = MLPMaskHead(in_channels=1, num_classes=2, pooled_size=2, fc_dims=(3,), mask_size=2).double()
    assert torch.autograd.gradcheck(small, (torch.randn(2, 1, 2, 2, dtype=torch.float64, requires_grad=True),),
                                    eps=1e-6, atol=1e-6)
    # class-agnostic and Detectron2-layout channel counts
    assert MLPMaskHead(in_channels=2, num_classes=3, pooled_size=4, class_agnostic=True).num_masks == 1
    assert MLPMaskHead(in_channels=2, num_classes=3, pooled_size=4, background_channel=False).num_masks == 2


# ----------------------------------------------------------------------------- whole model


@pytest.mark.parametrize("option", [dict(roi_extractor="pool"), dict(roi_extractor="warp"), dict(mask_loss="softmax"),
                                    dict(class_agnostic_masks=True), dict(mask_head="mlp")])
def test_every_switch_trains_and_predicts(option):
    model = small_model(**option, box_detections_per_img=10).train()
    image, target = synthetic_sample()
    out = model([image], [target], detections=True)
    assert set(out.losses) == LOSS_NAMES and all(torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()
    mask_params = [p for n, p in model.named_parameters() if "mask_head" in n]
    assert mask_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in mask_params)
    det = out.detections[0]
    assert det.masks.shape == (len(det.boxes), *image.shape[-2:])
    assert float(det.masks.detach().min()) >= 0 and float(det.masks.detach().max()) <= 1


def test_softmax_model_masks_are_the_softmax_share_of_the_box_class():
    model = small_model(mask_loss="softmax").eval()
    image, _ = synthetic_sample()
    with torch.no_grad():
        features = model.backbone(model.preprocess([image])[0].tensor)
        boxes = [torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 30.0, 120.0, 90.0]])]
        labels = torch.tensor([1, 3])
        heads = model.roi_heads
        logits = heads.mask_head(heads.mask_pooler(features, boxes))
        expected = torch.stack([logits[0].softmax(0)[1], logits[1].softmax(0)[3]])
        dets = heads.detect(features, boxes, [(128, 171)])
    torch.testing.assert_close(mask_probabilities(logits, labels, loss="softmax"), expected)
    assert dets[0].masks is not None and dets[0].masks.shape[-2:] == (28, 28)


def test_detection_only_model_trains_without_masks_and_predicts_boxes():
    model = small_model(mask_on=False).train()
    image, target = synthetic_sample()
    no_masks = {k: v for k, v in target.items() if k != "masks"}
    out = model([image], [no_masks], detections=True)
    assert set(out.losses) == LOSS_NAMES - {"loss_mask"}
    sum(out.losses.values()).backward()
    assert out.detections[0].masks is None and len(out.detections[0].boxes) > 0
    # given masks are still checked, and a mask model still needs them
    bad = dict(target, masks=target["masks"][:1])
    with pytest.raises(ValueError, match="masks must be"):
        model([image], [bad])
    with pytest.raises(ValueError, match="has no 'masks'"):
        small_model().train()([image], [no_masks])


def test_detection_only_boxes_equal_the_mask_model_with_the_same_weights():
    # the mask branch adds nothing at inference to the box path: same weights, same boxes
    full = small_model(seed=1).eval()
    boxes_only = small_model(seed=2, mask_on=False).eval()
    missing, unexpected = boxes_only.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all("mask" in k for k in unexpected)
    image, _ = synthetic_sample()
    with torch.no_grad():
        a, b = full([image]).detections[0], boxes_only([image]).detections[0]
    torch.testing.assert_close(b.boxes, a.boxes, rtol=0, atol=0)
    torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=0)
    assert b.masks is None


def test_the_export_names_the_switches_it_does_not_implement():
    from maskrcnn.export.graph import InferenceGraph

    with pytest.raises(NotImplementedError, match="roi_extractor='pool', mask_head='mlp'"):
        InferenceGraph(small_model(roi_extractor="pool", mask_head="mlp"))
    with pytest.raises(ValueError, match="mask branch"):
        InferenceGraph(small_model(mask_on=False))
    InferenceGraph(small_model())  # defaults unchanged
