"""Our model on Detectron2's checkpoints reproduces Detectron2's own outputs.

The weights are rebuilt from the fixture's recipe (checked against the stored SHA-256 of every
tensor), loaded with `from_detectron2`, and run on coffee.png; the acceptance limits are the ones
the fixture README (tests/fixtures/detectron2_parity/README.md) suggests for an independent
float32 implementation. Detectron2 itself is not needed: the fixture is the reference.
"""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn.checkpoint.seeded import DETECTRON2_RECIPE, seeded_state_dict
from maskrcnn.modeling.transform import detectron2_resized_size, pillow_bilinear_resize
from maskrcnn.ops import box_iou, paste_masks_detectron2
from maskrcnn.structures import Detections

from testing_utils import FIXTURES

D2 = FIXTURES / "detectron2_parity"
META = json.loads((D2 / "meta.json").read_text())
SCORE_THRESH = META["thresholds"]["MODEL.ROI_HEADS.SCORE_THRESH_TEST"]  # 0.31
LEVELS = ["p2", "p3", "p4", "p5", "p6"]


def load_coffee() -> torch.Tensor:
    """The model's input: RGB float (3, H, W) in [0, 1] (the model makes Detectron2's BGR 0..255)."""
    array = np.array(Image.open(D2 / "coffee.png").convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def recipe_state_dict() -> dict:
    keys = json.loads((D2 / "keys.json").read_text())
    state = seeded_state_dict(keys, DETECTRON2_RECIPE)
    checksums = json.loads((D2 / "checksums.json").read_text())
    assert list(state) == [k for k, _, _ in keys] and set(state) == set(checksums)
    for key, tensor in state.items():
        digest = hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
        assert digest == checksums[key]["sha256"], f"recipe tensor {key} differs from the fixture's"
    return state


@pytest.fixture(scope="module")
def ref():
    return np.load(D2 / "d2_r50fpn_coffee.npz")


@pytest.fixture(scope="module")
def model():
    return maskrcnn.from_detectron2(recipe_state_dict(), box_score_thresh=SCORE_THRESH)


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
    # the heads count classes from 1; the mask predictor has no background channel
    labels = torch.cat([d.labels for d in resized])
    logits = seen["mask_logits"][torch.arange(labels.numel()), labels - 1]
    return {
        "image_list": batch,
        "features": seen["features"],
        "proposals": seen["proposals"],
        "resized": resized,
        "detections": detections,
        "mask_logits": logits.split([len(d) for d in detections]),
    }


def match_detections(ref_boxes, ref_labels, boxes, labels):
    """Index of our detection for each reference one: same class, highest IoU."""
    iou = box_iou(ref_boxes, boxes)
    iou[ref_labels[:, None] != labels[None, :]] = -1
    best = iou.max(dim=1)
    assert (best.values > 0.9).all(), f"unmatched reference detections: {torch.nonzero(best.values <= 0.9).flatten().tolist()}"
    assert best.indices.unique().numel() == best.indices.numel(), "two reference detections matched one of ours"
    return best.indices


def check_masks(masks, ref_masks):
    """Binary masks (mask >= 0.5, as Detectron2): at most 3 differing pixels per detection, 20 per
    image, and only where our pasted probability is within 1e-3 of 0.5."""
    flipped = (masks >= 0.5) != ref_masks.bool()
    differ = flipped.flatten(1).sum(dim=1)
    assert differ.max() <= 3 and differ.sum() <= 20, f"mask pixels differ: {differ.tolist()}"
    if masks.is_floating_point() and flipped.any():
        assert (masks[flipped] - 0.5).abs().max() <= 1e-3


def check_detections(ref, det):
    """Same count and classes (Detectron2's index 0..79); matched by class and IoU, boxes,
    scores and masks within the README's limits. Returns the matching."""
    ref_boxes = torch.from_numpy(ref["boxes"])
    ref_labels = torch.from_numpy(ref["classes"])
    assert len(det) == len(ref_boxes) == 56
    assert sorted(det.labels.tolist()) == sorted(ref_labels.tolist())
    m = match_detections(ref_boxes, ref_labels, det.boxes, det.labels)
    torch.testing.assert_close(det.boxes[m], ref_boxes, atol=2e-3, rtol=0)
    torch.testing.assert_close(det.scores[m], torch.from_numpy(ref["scores"]), atol=1e-4, rtol=0)
    check_masks(det.masks[m], torch.from_numpy(ref["masks"]))
    return m


def check_internals(ref, out, m):
    """Boxes before the rescale, mask logits, proposals, sizes and FPN statistics of one image."""
    torch.testing.assert_close(out["resized"][0].boxes[m], torch.from_numpy(ref["boxes_resized"]), atol=4e-3, rtol=0)
    torch.testing.assert_close(out["mask_logits"][0][m], torch.from_numpy(ref["mask_logits28"]), atol=1e-3, rtol=0)

    # Proposals as a set: >= 995 of 1000 have a counterpart within 0.01 px in every coordinate.
    ours = out["proposals"][0]
    theirs = torch.from_numpy(ref["proposals"])
    assert ours.shape == theirs.shape
    nearest = (theirs[:, None, :] - ours[None, :, :]).abs().amax(dim=2).amin(dim=1)
    assert (nearest <= 0.01).sum() >= 995

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


def test_resize_is_detectron2s_to_the_byte():
    """Detectron2's size rule (round half up) and Pillow's uint8 bilinear, against the SHA-256
    of the fixture's resized BGR image."""
    assert detectron2_resized_size(400, 600, 800, 1333) == (800, 1200)
    assert detectron2_resized_size(300, 451, 800, 1333) == (800, 1203)  # torchvision: 1202
    assert detectron2_resized_size(100, 1000, 800, 1333) == (133, 1333)
    assert detectron2_resized_size(1, 5000, 800, 1333) == (1, 1333)  # 0.27 rows: at least one
    rgb = np.array(Image.open(D2 / "coffee.png").convert("RGB"))
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1])).permute(2, 0, 1)
    resized = pillow_bilinear_resize(bgr, (800, 1200)).permute(1, 2, 0).contiguous().numpy()
    assert hashlib.sha256(resized.tobytes()).hexdigest() == META["input"]["resized_sha256"][0]


def test_postprocess_rebuilds_the_fixture_bit_exactly(model, ref):
    """The README: `boxes` from `boxes_resized` by the rescale, `masks` from `mask_logits28`
    and `boxes` by the paste, both bit for bit; no network involved."""
    n = len(ref["boxes"])
    resized = Detections(boxes=torch.from_numpy(ref["boxes_resized"]), scores=torch.from_numpy(ref["scores"]),
                         labels=torch.from_numpy(ref["classes"]) + 1,
                         masks=torch.from_numpy(ref["mask_logits28"]).sigmoid())
    [det] = model.postprocess([resized], [(800, 1200)], [(400, 600)])
    assert torch.equal(det.boxes, torch.from_numpy(ref["boxes"]))
    assert torch.equal(det.labels, torch.from_numpy(ref["classes"]))
    assert det.masks.shape == (n, 400, 600) and det.masks.dtype == torch.float32
    assert torch.equal(det.masks >= 0.5, torch.from_numpy(ref["masks"]).bool())
    direct = paste_masks_detectron2(resized.masks, det.boxes, (400, 600))
    assert torch.equal(direct, det.masks)


def test_single_image_matches_detectron2(model, ref):
    out = run_stages(model, [load_coffee()])
    m = check_detections(ref, out["detections"][0])
    check_internals(ref, out, m)


def test_batch_of_different_sizes_matches_detectron2(model, ref):
    """The public call on three images of different sizes (all pad to 800 x 1216): coffee.png
    gives the fixture's detections, and each other image what it gets alone."""
    coffee = load_coffee()
    small = torch.nn.functional.interpolate(coffee[None], size=(300, 451), mode="bilinear")[0]
    small = (small * 255).round() / 255  # 8-bit pixels, as from a file: 300 x 451 -> 800 x 1203
    crop = coffee[:, 7:397, 11:590].flip(-1).contiguous()  # 390 x 579 -> 800 x 1188
    with torch.no_grad():
        batched = model([crop, coffee, small]).detections
        alone = [model([crop]).detections[0], model([small]).detections[0]]
    det = batched[1]
    assert det.boxes.dtype == torch.float32 and det.labels.dtype == torch.int64
    assert det.masks.shape == (len(det), *coffee.shape[-2:])
    check_detections(ref, det)

    for got, want in zip((batched[0], batched[2]), alone):
        assert len(got) == len(want) > 0
        m = match_detections(want.boxes, want.labels, got.boxes, got.labels)
        torch.testing.assert_close(got.boxes[m], want.boxes, atol=2e-3, rtol=0)
        torch.testing.assert_close(got.scores[m], want.scores, atol=1e-4, rtol=0)
        check_masks(got.masks[m] >= 0.5, want.masks >= 0.5)
