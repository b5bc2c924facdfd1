"""The whole model against torchvision 0.29.1 itself, on the same seeded weights and inputs.

Three parts (the project's reference-suite issue):

1. Resize: our transform's resized sizes (and padded batch shapes) equal torchvision's
   GeneralizedRCNNTransform in eval mode, for 4,804 image sizes at 800/1333 and a coarser sweep
   at 512/853.
2. v1 and v2 on 41 image sizes, each image alone and in mixed-size batches: resized sizes,
   RPN proposals (as sets), detections (count, labels; matched by label and IoU: boxes, scores,
   pasted masks). Most run at min_size/max_size 320/533, where the RoI heads, not the backbone,
   dominate the cost; a few single images and batches run at the full 800/1333.
3. ResNet-101-FPN (torchvision's resnet_fpn_backbone), loaded by our from_torchvision.

Inputs are coffee.png cropped and resized to each size plus seeded noise; nothing is stored.
The largest differences over the whole module are printed at its end (quote those).

    python -m pytest -q -m reference tests/reference/test_model_reference.py --durations=10
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from reference_utils import (
    PROPOSAL_ATOL,
    PROPOSAL_FRACTION,
    Maxima,
    Run,
    coffee_image,
    pair_detections,
    our_model,
    paste_boxes,
    proposals_nearest,
    run_model,
    torchvision,
    torchvision_model,
    write_summary,
)
from torchvision.models.detection import MaskRCNN as TVMaskRCNN  # noqa: E402
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone  # noqa: E402
from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402
from torchvision.models.detection.transform import GeneralizedRCNNTransform  # noqa: E402

import maskrcnn  # noqa: E402
from maskrcnn.checkpoint.seeded import seeded_state_dict  # noqa: E402

# Acceptance limits: the fixture README's suggestion for an independent float32 implementation
# (tests/fixtures/torchvision_parity/README.md, "Tolerances").
BOX_ATOL = 1e-2  # px, see box_atol()
SCORE_ATOL = 1e-4
MASK_ATOL = 2 / 255
DETECTIONS_PER_IMG = 100  # box_detections_per_img, torchvision's default, in every setting here

MAXIMA = Maxima()


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    models.cache_clear()
    write_summary(request.config, "whole model vs torchvision 0.29.1, largest differences (where):", MAXIMA)


# ---------------------------------------------------------------------------------------------
# 1. Resize
# ---------------------------------------------------------------------------------------------

ASPECTS = [(4, 3), (3, 4), (1, 1), (16, 9)]  # w = h * num // den


def size_sweep(heights) -> list[tuple[int, int]]:
    return [(h, h * num // den) for num, den in ASPECTS for h in heights]


def tv_transform(min_size: int, max_size: int, channels: int) -> GeneralizedRCNNTransform:
    # A 1-channel transform (mean [0], std [1]) runs every line of torchvision's eval path
    # (normalize, _resize_image_and_masks -> interpolate(scale_factor, recompute_scale_factor),
    # batch_images) on a third of the pixels; the size arithmetic never looks at channels.
    # test_one_channel_transform_is_torchvisions_model_transform checks that it is the same.
    mean, std = ([0.0], [1.0]) if channels == 1 else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return GeneralizedRCNNTransform(min_size, max_size, mean, std).eval()


def zeros_image(channels: int, h: int, w: int) -> torch.Tensor:
    return torch.zeros(channels, 1, 1).expand(channels, h, w)  # stride 0: no input to allocate


def transform_sizes(transform, channels: int, sizes) -> list[tuple]:
    """(resized (h, w), padded batch shape) of each size, one image per call."""
    out = []
    with torch.no_grad():
        for h, w in sizes:
            image_list, _ = transform([zeros_image(channels, h, w)])
            batch = image_list.tensor if hasattr(image_list, "tensor") else image_list.tensors
            out.append((tuple(int(s) for s in image_list.image_sizes[0]), tuple(batch.shape[-2:])))
    return out


@pytest.fixture
def sweep_threads():
    """The sweep is ~5,500 small calls (normalize, resize and pad one image). With 2 intra-op
    threads each op pays OpenMP start-up and, on a busy machine, waits for its other thread
    (measured next to other work: 218 s with 2 threads, 99 s with 1). So ops run on 1 thread,
    and the sizes are split across as many Python threads as torch had intra-op threads (ops
    release the GIL). Note: torch's bilinear resize of exactly 3 channels copies its input 3
    times, 2/3 of our transform's time here; torchvision's model transform pays that too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield threads
    torch.set_num_threads(threads)


def transform_sizes_parallel(transform, channels: int, sizes, workers: int) -> list[tuple]:
    chunks = [sizes[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda chunk: transform_sizes(transform, channels, chunk), chunks))
    out = [None] * len(sizes)
    for i, part in enumerate(parts):
        out[i::workers] = part
    return out


RESIZE_SWEEPS = {
    "800-1333": (800, 1333, range(100, 1301)),  # 4,804 sizes
    "512-853": (512, 853, range(100, 1301, 7)),  # 688 sizes
}


@pytest.mark.parametrize("sweep", RESIZE_SWEEPS)
def test_resized_sizes_equal_torchvision(sweep, sweep_threads):
    min_size, max_size, heights = RESIZE_SWEEPS[sweep]
    sizes = size_sweep(heights)
    ours_transform = our_model("v1", min_size=min_size, max_size=max_size).transform
    ours = transform_sizes_parallel(ours_transform, 3, sizes, sweep_threads)
    theirs = transform_sizes_parallel(tv_transform(min_size, max_size, 1), 1, sizes, sweep_threads)
    differ = [(size, o, t) for size, o, t in zip(sizes, ours, theirs) if o != t]
    assert not differ, f"{len(differ)} of {len(sizes)} sizes differ (size, ours, torchvision), first: {differ[:5]}"


def test_one_channel_transform_is_torchvisions_model_transform(sweep_threads):
    """The cheap transform of the sweep gives what the model's own transform gives."""
    sizes = size_sweep(range(100, 1301, 97))
    model_transform = models("v1-800")[0].transform
    assert transform_sizes(model_transform, 3, sizes) == transform_sizes(tv_transform(800, 1333, 1), 1, sizes)


# ---------------------------------------------------------------------------------------------
# 2. The whole model
# ---------------------------------------------------------------------------------------------

SCORE_THRESH = {"v1": 0.34, "v2": 0.27, "r101": 0.3}

# The image sizes (h, w) of the issue, then 8 heights in each aspect ratio: 41 in all.
NAMED_SIZES = [(427, 640), (480, 640), (375, 500), (333, 500), (1080, 1920), (3000, 4000),
               (32, 32), (64, 2000), (2000, 64)]
SIZES = NAMED_SIZES + size_sweep((77, 200, 299, 401, 512, 613, 799, 1001))
# (3000 x 4000 runs alone only: what it costs is pasting 12-megapixel masks, as in a batch.)
BATCHES = [
    [(427, 640), (1080, 1920)],  # landscape; different resized widths
    [(32, 32), (64, 2000), (2000, 64)],  # extremes, portrait beside landscape: padding both ways
    [(375, 500), (1001, 750), (200, 150)],
    [(333, 500), (799, 599), (77, 136)],
]

# Where the cost goes, per image and side, at 320/533: the backbone ~20 GMAC, the v1 box head
# 13 GMAC per 1,000 proposals, v2's box head (4 conv layers per RoI) 116 GMAC per 1,000, and
# the mask head 0.5 GMAC per detection, so the RoI heads dominate. The sweep keeps 500 (v1) and
# 200 (v2) proposals per image; v2 at 0.27 would otherwise return its cap of 100 detections on
# most sizes. The defaults (1,000 proposals) run at full resolution.
SMALL = dict(min_size=320, max_size=533)
SETTINGS = {
    "v1-320": ("v1", dict(SMALL, rpn_post_nms_top_n_test=500)),
    "v2-320": ("v2", dict(SMALL, rpn_post_nms_top_n_test=200)),
    "v1-800": ("v1", {}),
    "v2-800": ("v2", {}),
}
FULL_SIZE_CASES = {  # setting -> images, run as one batch
    "v1-800": [[(375, 500)], [(1080, 1920), (333, 500)]],  # 800x1066; 750x1333 beside 800x1201
    "v2-800": [[(480, 640)]],  # 800x1066, 100 detections: the per-image cap
}


@functools.lru_cache(maxsize=None)
def models(setting: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(torchvision's, ours) for a setting, cached for the module (cleared at its end)."""
    if setting.startswith("r101"):
        return r101_models(setting)
    variant, options = SETTINGS[setting]
    options = dict(options, box_score_thresh=SCORE_THRESH[variant])
    return torchvision_model(variant, **options), our_model(variant, **options)


def image_for(size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    return coffee_image(h, w, seed=h * 7919 + w)  # the same image alone and in a batch


def box_atol(original: tuple[int, int], resized: tuple[int, int]) -> float:
    """BOX_ATOL in the coarser of the model's pixels and the original image's.

    The model works in resized pixels; boxes are then scaled by original / resized. A
    3000 x 4000 image at 320/533 is scaled up 9.4x on the way out, so float rounding of
    ~1e-3 px in the model becomes ~1e-2 px in the original (measured: 1.4e-2 px on 1080 x 1920
    with v2, 3.9e-3 px before the scaling). Images scaled up by the model keep 1e-2 original px."""
    ratio = max(original[0] / resized[0], original[1] / resized[1])
    return BOX_ATOL * max(1.0, ratio)


def family(case: str) -> str:
    return case.split("-")[0]  # "v1", "v2" or "r101"


def mask_difference(our_mask: torch.Tensor, ref_mask: torch.Tensor, boxes: list[torch.Tensor]) -> float:
    """max |ours - torchvision| of one pasted mask. torchvision's is exactly 0 outside its paste
    box (it pastes into zeros), so the difference is taken inside the union of the paste boxes,
    and ours must have no nonzero pixel outside it: one pass over the full image instead of
    three (a 3000 x 4000 mask is 12 megapixels)."""
    height, width = ref_mask.shape
    corners = torch.stack(boxes)
    x0, y0 = max(int(corners[:, 0].min()), 0), max(int(corners[:, 1].min()), 0)
    x1, y1 = min(int(corners[:, 2].max()) + 1, width), min(int(corners[:, 3].max()) + 1, height)
    inside_ours = our_mask[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else our_mask[:0, :0]
    assert int(our_mask.count_nonzero()) == int(inside_ours.count_nonzero()), "our mask leaks outside its paste box"
    if inside_ours.numel() == 0:
        return 0.0
    return (inside_ours - ref_mask[y0:y1, x0:x1]).abs().max().item()


def check_masks(case: str, ref: dict, ours: dict, ri: torch.Tensor, oi: torch.Tensor, ref_masks28: torch.Tensor,
                image_size) -> None:
    """Pasted masks within MASK_ATOL, one detection at a time.

    A pasted mask lands in integer pixels: torchvision's paste_masks_in_image grows the box by
    30/28 and truncates the corners to int64. When a corner lies within float rounding of an
    integer, a box difference of 1e-4 px moves our paste box by one pixel from torchvision's and
    the two masks then differ by a resampling (seen: up to 18/255). That is a difference of the
    box, which is checked above, not of the mask: for such a detection, torchvision's own 28 x 28
    probabilities are pasted into our box with torchvision's function, and ours must match that."""
    ref_paste, our_paste = paste_boxes(ref["boxes"]), paste_boxes(ours["boxes"])
    for i, j in zip(ri.tolist(), oi.tolist()):
        if torch.equal(ref_paste[i], our_paste[j]):
            diff = mask_difference(ours["masks"][j], ref["masks"][i], [ref_paste[i]])
            MAXIMA.update(f"{family(case)}: mask", diff, case)
        else:
            repasted = paste_masks_in_image(ref_masks28[i][None, None], ours["boxes"][j][None], image_size)[0, 0]
            diff = mask_difference(ours["masks"][j], repasted, [ref_paste[i], our_paste[j]])
            MAXIMA.update(f"{family(case)}: mask, paste box moved (repasted)", diff, case)
            MAXIMA.count("paste box moved by a pixel", f"{case} detection {i}")
        assert diff <= MASK_ATOL, f"{case}: mask of detection {i} differs by {diff * 255:.2f}/255"


def compare(case: str, images: list[torch.Tensor], ref: Run, ours: Run, score_thresh: float,
            box_scale: float = 1.0, score_atol: float = SCORE_ATOL) -> None:
    """Everything the issue asks for, for every image of one batch. `box_scale` (a factor on
    the box limit) and `score_atol` widen the limits for ResNet-101 only (see there)."""
    fam = family(case)
    assert ours.image_sizes == ref.image_sizes, case
    assert ours.batch_shape == ref.batch_shape, case
    for k, image in enumerate(images):
        original = tuple(image.shape[-2:])
        name = f"{case} image {k} ({original[0]}x{original[1]})" if len(images) > 1 else case

        # RPN proposals as sets: float rounding reorders near-equal objectness. The counts may
        # differ when fewer than rpn_post_nms_top_n survive NMS. Seen on v1 at 320/533 with
        # 1,000 proposals, 299x398: two level-1 anchors 2e-6 apart in logit swap places at rank
        # 1000 of the pre-NMS top-k (ours and torchvision's logits differ by ~1e-6); ours
        # survives NMS, torchvision's candidate is suppressed, so ours has 930 proposals and
        # torchvision 929 (3 more sizes alike). With a top-n cut reached, the swap shows as one
        # unmatched proposal instead. Each side's proposals must have counterparts on the other.
        theirs_p, ours_p = ref.proposals[k], ours.proposals[k]
        nearest = proposals_nearest(theirs_p, ours_p)
        close = nearest <= PROPOSAL_ATOL
        back = proposals_nearest(ours_p, theirs_p) <= PROPOSAL_ATOL
        MAXIMA.update(f"{fam}: proposals without counterpart", 1 - close.float().mean().item(), name)
        if close.any():
            MAXIMA.update(f"{fam}: proposal px (matched)", nearest[close].max().item(), name)
        if len(ours_p) != len(theirs_p):
            MAXIMA.count("proposal count differs", f"{name}: ours {len(ours_p)}, torchvision {len(theirs_p)}")
        assert close.float().mean() >= PROPOSAL_FRACTION, f"{name}: {int((~close).sum())} of {len(close)} proposals unmatched"
        assert back.float().mean() >= PROPOSAL_FRACTION, f"{name}: {int((~back).sum())} of our {len(back)} proposals unmatched"

        r, o = ref.detections[k], ours.detections[k]
        MAXIMA.update(f"{fam}: detections per image", len(r["boxes"]), name)
        ri, oi = pair_detections(r, o)
        # The same detections on both sides, but for one legitimate exception: a detection
        # whose score lies within float rounding (SCORE_ATOL) of a cut, box_score_thresh
        # (applied as score > thresh) or the per-image cap (the lowest score kept when
        # DETECTIONS_PER_IMG are returned), may be kept on one side only. Not seen here so far
        # (the events are listed in the summary); another CPU rounds differently.
        for side, dets, paired in (("torchvision", r, ri), ("ours", o, oi)):
            for i in sorted(set(range(len(dets["boxes"]))) - set(paired.tolist())):
                score = dets["scores"][i].item()
                at_thresh = abs(score - score_thresh) <= SCORE_ATOL
                at_cap = len(dets["boxes"]) == DETECTIONS_PER_IMG and score - dets["scores"].min().item() <= SCORE_ATOL
                assert at_thresh or at_cap, (
                    f"{name}: {side}'s detection {i} (label {int(dets['labels'][i])}, score {score:.6f}, "
                    f"box {[round(v, 2) for v in dets['boxes'][i].tolist()]}) has no counterpart; "
                    f"torchvision {len(r['boxes'])} detections, ours {len(o['boxes'])}")
                MAXIMA.count("detection at a cut on one side only", f"{name}: {side}'s, score {score:.6f}")
        if len(ri) == 0:
            continue
        box_diff = (o["boxes"][oi] - r["boxes"][ri]).abs().max().item()
        resized = ref.image_sizes[k]
        ratio = max(original[0] / resized[0], original[1] / resized[1])
        MAXIMA.update(f"{fam}: box px (original image)", box_diff, name)
        MAXIMA.update(f"{fam}: box px (model's resolution)", box_diff / ratio, name)
        limit = box_atol(original, resized) * box_scale
        assert box_diff <= limit, f"{name}: boxes differ by {box_diff:.3g} px (limit {limit:.3g})"
        score_diff = (o["scores"][oi] - r["scores"][ri]).abs().max().item()
        MAXIMA.update(f"{fam}: score", score_diff, name)
        assert score_diff <= score_atol, f"{name}: scores differ by {score_diff:.3g} (limit {score_atol:.3g})"
        check_masks(name, r, o, ri, oi, ref.masks28[k], original)


def run_both(setting: str, sizes: list[tuple[int, int]]) -> None:
    tv, ours = models(setting)
    images = [image_for(s) for s in sizes]
    label = " + ".join(f"{h}x{w}" for h, w in sizes)
    compare(f"{setting} {label}", images, run_model(tv, images), run_model(ours, images),
            score_thresh=SCORE_THRESH[SETTINGS[setting][0]])


def size_id(size) -> str:
    return f"{size[0]}x{size[1]}"


@pytest.mark.parametrize("size", SIZES, ids=size_id)
@pytest.mark.parametrize("setting", ["v1-320", "v2-320"])
def test_single_image_matches_torchvision(setting, size):
    run_both(setting, [size])


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: "+".join(map(size_id, b)))
@pytest.mark.parametrize("setting", ["v1-320", "v2-320"])
def test_mixed_size_batch_matches_torchvision(setting, batch):
    run_both(setting, batch)


@pytest.mark.parametrize(
    "setting,sizes",
    [(setting, sizes) for setting, cases in FULL_SIZE_CASES.items() for sizes in cases],
    ids=lambda x: x if isinstance(x, str) else "+".join(map(size_id, x)),
)
def test_full_resolution_matches_torchvision(setting, sizes):
    run_both(setting, sizes)


# ---------------------------------------------------------------------------------------------
# 3. ResNet-101-FPN
# ---------------------------------------------------------------------------------------------


def r101_models(setting: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    options = dict(box_score_thresh=SCORE_THRESH["r101"])
    if setting == "r101-320":
        options.update(SMALL)
    torch.manual_seed(0)  # torchvision initializes before loading; keep that reproducible too
    tv = TVMaskRCNN(resnet_fpn_backbone(backbone_name="resnet101", weights=None), num_classes=91, **options)
    keys = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in tv.state_dict().items()]
    state = seeded_state_dict(keys)
    tv.load_state_dict(state, strict=True)
    # resnet_fpn_backbone's default norm is FrozenBatchNorm2d with eps 1e-5. Such a state dict has
    # no num_batches_tracked, which from_torchvision takes for torchvision's published v1 weights
    # (eps 0.0), so the eps is given here.
    ours = maskrcnn.from_torchvision(state, "v1", norm_eps=1e-5, **options)
    return tv.eval(), ours.eval()


# ResNet-101 on the recipe's seeded weights is worse conditioned than ResNet-50: torchvision's
# own float32 result differs from its float64 result (same model, same input) by up to 2.3e-2 px
# in boxes (r101-800 427x640; 1.4e-2 px on r101-320 375x500) and 1.2e-4 in scores, and ours,
# whose float32 rounding differs, was 1.5e-2 px and 6.3e-5 from torchvision's float32 (2.7e-2 px
# from its float64; on r101-320 375x500, 8e-4 px from float64 where torchvision's float32 was
# 1.4e-2 px off). That noise floor, not our model, sets the limits here; the difference also
# moves with the thread count. R50's floor is ~5x lower (fixture README, Tolerances).
R101_BOX_ATOL = 4e-2  # px, in the coarser pixel grid as box_atol
R101_SCORE_ATOL = 4e-4


@pytest.mark.parametrize(
    "setting,sizes",
    [("r101-320", [(480, 640)]), ("r101-320", [(375, 500), (2000, 64)]), ("r101-800", [(427, 640)])],
    ids=lambda x: x if isinstance(x, str) else "+".join(map(size_id, x)),
)
def test_resnet101_fpn_matches_torchvision(setting, sizes):
    tv, ours = models(setting)
    images = [image_for(s) for s in sizes]
    case = f"{setting} " + " + ".join(map(size_id, sizes))
    compare(case, images, run_model(tv, images), run_model(ours, images), score_thresh=SCORE_THRESH["r101"],
            box_scale=R101_BOX_ATOL / BOX_ATOL, score_atol=R101_SCORE_ATOL)
