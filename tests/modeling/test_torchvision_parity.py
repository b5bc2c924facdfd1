"""Our model on torchvision's checkpoints reproduces torchvision's own outputs.

The weights are rebuilt from the fixtures' recipe (checked against the stored SHA-256 of every
tensor), loaded with `from_torchvision`, and run on coffee.png; the acceptance limits are the
ones the fixture README suggests for an independent float32 implementation.
"""
import hashlib
import json

import numpy as np
import pytest
import torch

import maskrcnn
from maskrcnn.checkpoint.seeded import seeded_state_dict
from maskrcnn.ops import box_iou

from testing_utils import PARITY, load_coffee, parity_keys

SCORE_THRESH = {"v1": 0.34, "v2": 0.27}  # the fixtures' box_score_thresh
LEVELS = ["0", "1", "2", "3", "pool"]


def recipe_state_dict(variant: str) -> dict:
    state = seeded_state_dict(parity_keys(variant))
    checksums = json.loads((PARITY / f"{variant}_checksums.json").read_text())
    assert set(state) == set(checksums)
    for key, tensor in state.items():
        digest = hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
        assert digest == checksums[key]["sha256"], f"recipe tensor {key} differs from the fixture's"
    return state


def run_stages(model, images):
    """Everything the fixture records, from one pass of the staged inference path; the FPN
    levels, proposals and mask logits are read with forward hooks on the stages."""
    seen = {}
    hooks = [
        model.backbone.register_forward_hook(lambda m, i, out: seen.__setitem__("features", out)),
        model.rpn.register_forward_hook(lambda m, i, out: seen.__setitem__("proposals", out[0])),
        model.roi_heads.mask_head.register_forward_hook(lambda m, i, out: seen.__setitem__("mask_logits", out)),
    ]
    try:
        with torch.no_grad():
            batch, _ = model.preprocess(images)
            resized = model.detect(batch)
            detections = model.postprocess(resized, batch.image_sizes, [tuple(img.shape[-2:]) for img in images])
    finally:
        for hook in hooks:
            hook.remove()
    labels = torch.cat([d.labels for d in resized])
    logits = seen["mask_logits"][torch.arange(labels.numel()), labels]
    return {
        "image_list": batch,
        "features": seen["features"],
        "proposals": seen["proposals"],
        "detections": detections,
        "mask_logits": logits.split([len(d) for d in detections]),
    }


def match_detections(ref_boxes, ref_labels, boxes, labels):
    """Index of our detection for each reference one: same label, highest IoU."""
    iou = box_iou(ref_boxes, boxes)
    iou[ref_labels[:, None] != labels[None, :]] = -1
    best = iou.max(dim=1)
    assert (best.values > 0.9).all(), f"unmatched reference detections: {torch.nonzero(best.values <= 0.9).flatten().tolist()}"
    assert best.indices.unique().numel() == best.indices.numel(), "two reference detections matched one of ours"
    return best.indices


def check_detections(ref, det):
    """Same count and labels; matched by label and IoU, boxes, scores and masks within limits.
    Returns the matching, for checks on other per-detection outputs."""
    ref_boxes = torch.from_numpy(ref["boxes"])
    ref_labels = torch.from_numpy(ref["labels"])
    assert len(det) == len(ref_boxes)
    assert sorted(det.labels.tolist()) == sorted(ref_labels.tolist())
    m = match_detections(ref_boxes, ref_labels, det.boxes, det.labels)
    torch.testing.assert_close(det.boxes[m], ref_boxes, atol=1e-2, rtol=0)
    torch.testing.assert_close(det.scores[m], torch.from_numpy(ref["scores"]), atol=1e-4, rtol=0)
    masks_u8 = torch.round(det.masks[m] * 255)
    assert (masks_u8 - torch.from_numpy(ref["masks"]).float()).abs().max() <= 2
    return m


def check_internals(ref, out, m):
    """Mask logits, proposals, resized size and FPN statistics of a single-image run."""
    torch.testing.assert_close(out["mask_logits"][0][m], torch.from_numpy(ref["mask_logits28"]), atol=2e-3, rtol=0)

    # Proposals as a set: >= 995 of 1000 have a counterpart within 0.05 px in every coordinate.
    ours = out["proposals"][0]
    theirs = torch.from_numpy(ref["proposals"])
    assert ours.shape == theirs.shape
    nearest = (theirs[:, None, :] - ours[None, :, :]).abs().amax(dim=2).amin(dim=1)
    assert (nearest <= 0.05).sum() >= 995

    assert list(out["image_list"].image_sizes[0]) == ref["resized_size"].tolist()
    assert list(out["image_list"].tensor.shape) == ref["batch_shape"].tolist()
    for level, feature in zip(LEVELS, out["features"]):
        f = feature[0].double()
        assert list(feature.shape) == ref[f"feat_{level}_shape"].tolist()
        std = ref[f"feat_{level}_std"][0]
        assert abs(f.mean().item() - ref[f"feat_{level}_mean"][0]) <= 1e-6 * std
        assert abs(f.std(unbiased=False).item() / std - 1) <= 1e-6
        chanmean = f.mean(dim=(1, 2)).numpy()
        assert np.abs(chanmean - ref[f"feat_{level}_chanmean"][0]).max() <= 1e-5 * std


@pytest.fixture(scope="module", params=["v1", "v2"])
def parity_model(request):
    variant = request.param
    model = maskrcnn.from_torchvision(recipe_state_dict(variant), variant=variant, box_score_thresh=SCORE_THRESH[variant])
    return variant, model, np.load(PARITY / f"{variant}_coffee.npz")


def test_single_image_matches_torchvision(parity_model):
    variant, model, ref = parity_model
    out = run_stages(model, [load_coffee()])
    m = check_detections(ref, out["detections"][0])
    check_internals(ref, out, m)


def test_batch_of_different_sizes_matches_torchvision(parity_model):
    """The public call on a batch: coffee.png beside a smaller image still gives the fixture's
    detections, and the other image gets what it gets alone (both pad to 800 x 1216)."""
    variant, model, ref = parity_model
    coffee = load_coffee()
    other = coffee[:, 7:397, 11:590].flip(-1).contiguous()  # 390 x 579 -> 800 x 1187
    with torch.no_grad():
        batched = model([other, coffee]).detections
        alone = model([other]).detections[0]
    det = batched[1]
    assert det.boxes.dtype == torch.float32 and det.labels.dtype == torch.int64
    assert det.masks.shape == (len(det), *coffee.shape[-2:])
    assert torch.equal(det["labels"], det.labels)  # dict-style access for torchvision users
    check_detections(ref, det)

    assert len(batched[0]) == len(alone) > 0
    m = match_detections(alone.boxes, alone.labels, batched[0].boxes, batched[0].labels)
    torch.testing.assert_close(batched[0].boxes[m], alone.boxes, atol=1e-2, rtol=0)
    torch.testing.assert_close(batched[0].scores[m], alone.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(batched[0].masks[m], alone.masks, atol=2 / 255, rtol=0)
