"""End-to-end behaviour of the model on a small configuration (STYLE: tests that catch real bugs)."""
import pytest
import torch

import maskrcnn
from maskrcnn.modeling import ModelConfig, build_model
from maskrcnn.ops import batched_nms, roi_align
from maskrcnn.structures import Detections

SMALL = dict(
    variant="v1", depth=18, base_width=8, fpn_channels=32, representation_size=64, mask_head_channels=16,
    trainable_backbone_layers=5, min_size=128, max_size=192, num_classes=4,
    rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=200, rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=100, box_batch_size_per_image=64, anchor_sizes=(16, 32, 64, 128, 256),
)
LOSS_NAMES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


def small_model(seed: int = 0, **overrides) -> maskrcnn.MaskRCNN:
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_dict({**SMALL, **overrides}))


def synthetic_sample(seed: int = 0, size=(96, 128)):
    """An image with two filled rectangles and their exact targets."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    image = torch.rand(3, h, w, generator=g) * 0.2
    boxes = torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 30.0, 120.0, 90.0]])
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        masks[i, y1:y2, x1:x2] = 1
        image[i % 3, y1:y2, x1:x2] = 0.9
    return image, {"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks}


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_training_forward_returns_the_five_losses(variant):
    model = small_model(variant=variant).train()
    image, target = synthetic_sample()
    out = model([image], [target])
    assert set(out.losses) == LOSS_NAMES
    assert out.detections is None  # training mode: detections only when asked
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.losses.values())


def test_losses_and_detections_in_either_mode():
    model = small_model()
    image, target = synthetic_sample()
    for training in (True, False):
        model.train(training)
        out = model([image], [target], detections=True)
        assert set(out.losses) == LOSS_NAMES
        assert len(out.detections) == 1
        assert out.detections[0].masks.shape[-2:] == image.shape[-2:]


def test_empty_targets_give_zero_box_and_mask_loss_and_finite_rpn_loss():
    model = small_model().train()
    image, _ = synthetic_sample()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, *image.shape[-2:], dtype=torch.uint8)}
    losses = model([image], [empty]).losses
    assert losses["loss_box_reg"].item() == 0
    assert losses["loss_mask"].item() == 0
    assert losses["loss_rpn_box_reg"].item() == 0
    assert torch.isfinite(losses["loss_objectness"]) and losses["loss_objectness"] > 0
    assert torch.isfinite(losses["loss_classifier"]) and losses["loss_classifier"] > 0
    sum(losses.values()).backward()  # and the graph is differentiable


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_every_trainable_parameter_receives_a_gradient(variant):
    model = small_model(variant=variant).train()
    image, target = synthetic_sample()
    losses = model([image, image.flip(-1)], [target, {**target, "boxes": target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([128, 0, 128, 0]), "masks": target["masks"].flip(-1)}]).losses
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing
    zero = [n for n, p in model.named_parameters() if p.requires_grad and p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


def test_frozen_layers_get_no_gradient():
    model = small_model(trainable_backbone_layers=3)
    assert not any(p.requires_grad for p in model.backbone.body.conv1.parameters())
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.body.layer2.parameters())


def test_batched_inference_equals_one_by_one():
    model = small_model(box_score_thresh=0.0).eval()
    # different sizes that resize and pad to the same 128 x 192 batch
    images = [synthetic_sample(0, (96, 128))[0], synthetic_sample(1, (90, 120))[0], synthetic_sample(2, (96, 140))[0]]
    with torch.no_grad():
        batched = model(images).detections
        alone = [model([img]).detections[0] for img in images]
    for b, a in zip(batched, alone):
        assert len(a) > 0
        assert torch.equal(b.labels, a.labels)
        torch.testing.assert_close(b.boxes, a.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(b.masks, a.masks, atol=1e-4, rtol=0)


def test_a_few_steps_on_one_image_drive_the_loss_down():
    model = small_model(seed=1).train()
    image, target = synthetic_sample()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    torch.manual_seed(0)
    history = []
    for _ in range(15):
        total = sum(model([image], [target]).losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert sum(history[-3:]) / 3 < 0.75 * sum(history[:3]) / 3, history


def test_targets_are_not_mutated():
    model = small_model().train()
    image, target = synthetic_sample()
    before = {k: v.clone() for k, v in target.items()}
    model([image], [target])
    assert all(torch.equal(before[k], target[k]) for k in before)


@pytest.mark.parametrize(
    "images, message",
    [
        (lambda img: [img[0]], "expected 3 dimensions"),
        (lambda img: [img[:1]], "1 channels"),
        (lambda img: [(img * 255).to(torch.uint8)], "dtype torch.uint8"),
        (lambda img: [], "empty"),
        (lambda img: [img.permute(1, 2, 0)], "channels"),
    ],
)
def test_bad_images_get_clear_errors(images, message):
    model = small_model().eval()
    image, _ = synthetic_sample()
    with pytest.raises((ValueError, TypeError), match=message):
        model(images(image))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: {**t, "boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 30.0, 300.0, 90.0]])}, "outside"),
        (lambda t: {**t, "boxes": torch.tensor([[10.0, 12.0, 10.0, 60.0], [60.0, 30.0, 120.0, 90.0]])}, "zero or negative width"),
        (lambda t: {**t, "labels": torch.tensor([1, 4])}, "label 4 is out of range 1..3"),
        (lambda t: {**t, "labels": torch.tensor([0, 1])}, "label 0 is out of range"),
        (lambda t: {**t, "masks": t["masks"][:, :50]}, "masks must be"),
        (lambda t: {**t, "boxes": t["boxes"][:, :3]}, "boxes must be a float"),
        (lambda t: {k: v for k, v in t.items() if k != "masks"}, "no 'masks'"),
        (lambda t: {**t, "boxes": torch.tensor([[10.0, 12.0, float("nan"), 60.0], [60.0, 30.0, 120.0, 90.0]])}, "NaN"),
    ],
)
def test_bad_targets_get_clear_errors(change, message):
    model = small_model().train()
    image, target = synthetic_sample()
    with pytest.raises(ValueError, match=message):
        model([image], [change(target)])


def test_crowd_regions_are_never_positives():
    model = small_model().train()
    image, target = synthetic_sample()
    target = {**target, "iscrowd": torch.tensor([False, True])}
    torch.manual_seed(0)
    props, labels, matched, _ = model.roi_heads.sample_proposals(
        [torch.tensor([[60.0, 30.0, 120.0, 90.0], [61.0, 31.0, 119.0, 89.0], [0.0, 0.0, 30.0, 30.0]])], [target]
    )
    # the crowd box's twins are ignored, the crowd box is not added as a gt proposal
    positives = props[0][labels[0] > 0]
    assert positives.shape[0] == 1 and torch.equal(positives[0], target["boxes"][0])
    assert not any(torch.equal(p, torch.tensor([61.0, 31.0, 119.0, 89.0])) for p in props[0])


def test_norm_eps_is_configurable():
    model = small_model(norm_eps=0.0)
    assert model.backbone.body.bn1.eps == 0.0


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_pixels_give_no_detections_not_a_crash(bad_value):
    model = small_model(box_score_thresh=0.0).eval()
    image, _ = synthetic_sample()
    image[:, 10:20, 10:20] = bad_value
    with torch.no_grad():
        det = model([image]).detections[0]
    assert len(det) == 0 and det.masks.shape == (0, *image.shape[-2:])


# The staged inference path: forward is preprocess -> detect -> postprocess, and the operators
# (NMS, RoIAlign) are module attributes that can be swapped without touching model code.
def _images():
    a, _ = synthetic_sample(0, size=(96, 128))
    b, _ = synthetic_sample(1, size=(120, 80))
    return [a, b]


def _assert_same(d1, d2):
    for x, y in zip(d1, d2):
        assert torch.equal(x.boxes, y.boxes) and torch.equal(x.scores, y.scores)
        assert torch.equal(x.labels, y.labels) and torch.equal(x.masks, y.masks)


def test_forward_equals_the_three_steps():
    model = small_model(box_score_thresh=0.0).eval()
    images = _images()
    with torch.no_grad():
        expected = model(images).detections
        batch, _ = model.preprocess(images)
        resized = model.detect(batch)
        got = model.postprocess(resized, batch.image_sizes, [tuple(i.shape[-2:]) for i in images])
    assert all(isinstance(d, Detections) for d in resized)
    assert all(d.masks.shape[-2:] == (28, 28) for d in resized)  # unpasted, resized coordinates
    assert len(expected[0]) > 0
    _assert_same(expected, got)


def test_run_with_targets_gives_losses_and_detections_of_the_same_pass():
    model = small_model().eval()
    image, target = synthetic_sample()
    with torch.no_grad():
        torch.manual_seed(0)  # the same RPN and RoI sampling in both
        batch, resized_targets = model.preprocess([image], [target])
        detections, losses = model.run(batch, resized_targets, detections=True)
        torch.manual_seed(0)
        out = model([image], [target], detections=True)
    assert set(losses) == set(out.losses)
    for k in losses:
        torch.testing.assert_close(losses[k], out.losses[k], rtol=0, atol=0)
    assert len(detections) == 1


def test_operators_are_swappable_module_attributes():
    model = small_model(box_score_thresh=0.0).eval()
    images = _images()
    with torch.no_grad():
        expected = model(images).detections
    calls = {"rpn": 0, "box": 0, "align": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    model.rpn.nms = counting("rpn", batched_nms)
    model.roi_heads.nms = counting("box", batched_nms)
    model.roi_heads.box_pooler.roi_align = counting("align", roi_align)
    model.roi_heads.mask_pooler.roi_align = counting("align", roi_align)
    with torch.no_grad():
        got = model(images).detections
    assert calls["rpn"] == 2 and calls["box"] == 2  # once per image
    assert calls["align"] == 2 * 4  # box and mask pooler, four levels each
    _assert_same(expected, got)


def test_thin_strips_and_single_pixels_predict():
    # 2 x 5000 resizes to 1 row (not 0); 1 x 1 to the full short side
    model = small_model(box_score_thresh=0.0).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 2, 5000), torch.rand(3, 1, 1), torch.rand(3, 3000, 3)]).detections
    assert [d.masks.shape[-2:] for d in out] == [(2, 5000), (1, 1), (3000, 3)]
    for d in out:
        assert torch.isfinite(d.boxes).all() and (d.boxes[:, 2:] <= torch.tensor([5000.0, 3000.0])).all()
