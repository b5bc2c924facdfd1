"""The paper's head switches in the C4 model: the ones that apply (mask_loss, class-agnostic
masks, roi_extractor, mask_on) reach its res5 head; the others are refused by name."""
import pytest
import torch

from maskrcnn.modeling import ModelConfig
from maskrcnn.modeling.config_checks import ModelConfigError
from maskrcnn.modeling.roi_heads.mask_head import mask_loss
from maskrcnn.ops import roi_pool

from .test_c4 import SMALL_C4, small_c4
from .test_model import synthetic_sample

BOXES = torch.tensor([[4.0, 6.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0], [0.0, 0.0, 128.0, 96.0]])


def sampled_positives(model, image, target, monkeypatch):
    """The losses of one training step, and what the mask branch saw: the positive RoIs, their
    labels and matched gt, the resized gt masks and the backbone features (recomputed)."""
    heads = model.roi_heads
    sampled = []
    original = heads.sample_proposals
    monkeypatch.setattr(heads, "sample_proposals", lambda *a: sampled.append(original(*a)) or sampled[-1])
    losses = model([image], [target]).losses
    props, labels, matched, _ = sampled[0]
    positive = torch.nonzero(labels[0] > 0).squeeze(1)
    assert positive.numel() > 0
    batch, resized = model.preprocess([image], [target])
    return losses, props[0][positive], labels[0][positive], matched[0][positive], resized[0]["masks"], batch


@pytest.mark.parametrize("loss, agnostic", [("softmax", False), ("sigmoid", True)])
def test_c4_mask_loss_and_class_agnostic_masks(loss, agnostic, monkeypatch):
    model = small_c4(mask_loss=loss, class_agnostic_masks=agnostic).train()
    heads = model.roi_heads
    assert heads.mask_loss == loss
    assert heads.mask_head.predictor.out_channels == (1 if agnostic else 4)  # 4 classes with background
    image, target = synthetic_sample()
    losses, props, labels, matched, gt_masks, batch = sampled_positives(model, image, target, monkeypatch)
    with torch.no_grad():  # frozen batch norm: res5 of the positives = the positives' rows of res5
        features = model.backbone(batch.tensor)
        logits = heads.mask_head(heads.res5_features(features, [props]))
        kinds = ("sigmoid",) if agnostic else ("sigmoid", "softmax")  # a softmax needs a channel per class
        slow = {kind: mask_loss(logits, labels, [props], [gt_masks], [matched], 0, kind) for kind in kinds}
    torch.testing.assert_close(losses["loss_mask"], slow[loss], rtol=1e-5, atol=1e-6)
    if not agnostic:  # the two losses are far apart: the test sees which one was taken
        assert (slow["softmax"] - slow["sigmoid"]).abs() > 0.05

    # inference: each detection's 14x14 probabilities are its class's softmax share / sigmoid
    model.eval()
    with torch.no_grad():
        features = model.backbone(batch.tensor)
        det = heads.detect(features, [BOXES], batch.image_sizes, score_thresh=0.0)[0]
        assert det.masks.shape[1:] == (14, 14) and len(det.boxes) > 0
        logits = heads.mask_head(heads.res5_features(features, [det.boxes]))
    rows = torch.arange(len(det.boxes))
    if loss == "softmax":
        expected = logits.softmax(dim=1)[rows, det.labels]
    else:
        expected = logits[:, 0].sigmoid()  # the one class-agnostic channel, for every label
    torch.testing.assert_close(det.masks, expected, rtol=1e-5, atol=1e-6)


def test_c4_roi_extractor_and_detection_only():
    model = small_c4(roi_extractor="pool", mask_on=False).eval()
    heads = model.roi_heads
    assert heads.mask_head is None and not heads.has_mask
    image, _ = synthetic_sample()
    with torch.no_grad():
        features = model.backbone(model.preprocess([image])[0].tensor)
        rois = torch.cat([torch.zeros(len(BOXES), 1), BOXES], 1)
        # RoIPool of C4 (stride 16) at 14x14, then res5
        expected = heads.res5(roi_pool(features[0], rois, 14, spatial_scale=1 / 16))
        torch.testing.assert_close(heads.res5_features(features, [BOXES]), expected)
        det = model([image]).detections[0]
    assert det.masks is None and det.boxes.shape[1] == 4


@pytest.mark.parametrize("option, value", [("mask_head", "mlp"), ("num_keypoints", 17), ("head_norm", "gn"),
                                           ("variant", "v2")])
def test_c4_refuses_the_switches_it_has_no_use_for(option, value):
    with pytest.raises(ModelConfigError, match=f"^{option} .* does not apply to architecture 'c4'") as error:
        ModelConfig.from_dict({**SMALL_C4, option: value})
    assert error.value.key == option
    ModelConfig.from_dict({**SMALL_C4, "architecture": "fpn", option: value})  # an FPN model takes it
