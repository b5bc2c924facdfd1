"""Helpers shared by the tests (importable as `testing_utils`; pytest puts tests/ on the path)."""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "torchvision_parity"

# A 4x4 mask and its Kaggle RLE, worked out by hand: the column-major order reads column 0
# top to bottom (pixels 1-4), then column 1 (5-8), ...; runs are pixels 4-6, 9-10 and 15-16.
LITERAL_MASK = np.array(
    [[0, 1, 1, 0],
     [0, 1, 1, 0],
     [0, 0, 0, 1],
     [1, 0, 0, 1]], dtype=bool)
LITERAL_RLE = "4 3 9 2 15 2"


def need_export() -> None:
    """Skip, saying why, where this torch cannot export to ONNX (torch < 2.6): the package's own
    reason, so the skip and the error a user gets say the same."""
    import pytest

    from maskrcnn.export.onnx import export_unsupported_reason

    reason = export_unsupported_reason()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)


def load_coffee() -> torch.Tensor:
    """coffee.png as the fixtures' input: RGB uint8 -> float32 (3, H, W) / 255."""
    array = np.array(Image.open(PARITY / "coffee.png").convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def parity_keys(variant: str) -> list:
    return json.loads((PARITY / f"{variant}_keys.json").read_text())


# A narrow Detectron2 R-50-FPN Mask R-CNN (80 COCO classes), for fast end-to-end tests.
SMALL_DETECTRON2 = dict(base_width=8, fpn_channels=16, representation_size=32, mask_head_channels=16)


def small_detectron2_state_dict(num_classes: int = 81) -> dict:
    """SMALL_DETECTRON2 weights in Detectron2's names (the parity fixture's key list, narrow
    shapes), seeded by the fixture's recipe."""
    from maskrcnn.checkpoint.detectron2 import detectron2_key_to_ours
    from maskrcnn.checkpoint.seeded import DETECTRON2_RECIPE, seeded_state_dict
    from maskrcnn.modeling.build import DETECTRON2_OPTIONS, ModelConfig, build_model

    config = ModelConfig.from_dict({**DETECTRON2_OPTIONS, **SMALL_DETECTRON2, "num_classes": num_classes})
    own = build_model(config).state_dict()
    names = [k for k, _, _ in json.loads((FIXTURES / "detectron2_parity" / "keys.json").read_text())]
    return seeded_state_dict([[k, list(own[detectron2_key_to_ours(k)].shape), "float32"] for k in names],
                             DETECTRON2_RECIPE)


def spread_output_layers(model) -> None:
    """Seeded output layers (4 classes) that spread the scores on both sides of 0.5 and give
    masks of varying shape: untrained heads score every box about 1/K. Draws from torch's
    global generator, so seed it first."""
    with torch.no_grad():
        box = model.roi_heads.box_predictor
        box.cls_score.weight.normal_(0, 2.0)
        box.cls_score.bias.copy_(torch.tensor([0.0, 1.0, 0.8, 0.6]))
        box.bbox_pred.weight.normal_(0, 0.05)
        mask = model.roi_heads.mask_head.predictor
        mask.weight.normal_(0, 0.5)
        mask.bias.zero_()


def coco_results_near(gt, seed: int) -> list[dict]:
    """COCO results near a pycocotools COCO ground truth, for comparing evaluators: each object
    found with a shifted mask (its box and area from that mask), some missed, some under another
    class, keypoints moved, plus false positives; scores at random."""
    import pycocotools.mask as mask_util

    rng = np.random.default_rng(seed)
    images = {im["id"]: im for im in gt.dataset["images"]}
    cat_ids = sorted(gt.getCatIds())
    num_keypoints = max([len(c.get("keypoints", [])) for c in gt.dataset["categories"]])
    results = []

    def random_keypoints(image):
        xs, ys = rng.uniform(0, image["width"], num_keypoints), rng.uniform(0, image["height"], num_keypoints)
        return [float(v) for v in np.column_stack([xs, ys, np.ones(num_keypoints)]).reshape(-1)]

    def add(image_id, category_id, mask, keypoints=None):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        entry = {"image_id": image_id, "category_id": category_id, "score": float(rng.uniform(0.05, 1.0)),
                 "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                 "bbox": [float(v) for v in mask_util.toBbox(rle)]}
        if keypoints is not None:
            entry["keypoints"] = keypoints
        results.append(entry)

    for ann in gt.dataset["annotations"]:
        if rng.uniform() < 0.1:
            continue  # missed
        mask = np.roll(gt.annToMask(ann), tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
        category = ann["category_id"] if rng.uniform() > 0.15 else int(rng.choice(cat_ids))
        keypoints = None
        if "keypoints" in ann:
            kp = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)
            kp[:, :2] += rng.normal(0, 2.0, (len(kp), 2))
            kp[:, 2] = 1
            keypoints = [float(v) for v in kp.reshape(-1)]
        elif num_keypoints:
            keypoints = random_keypoints(images[ann["image_id"]])
        add(ann["image_id"], category, mask, keypoints)
    for image_id, image in images.items():  # false positives
        for _ in range(int(rng.integers(0, 3))):
            h, w = image["height"], image["width"]
            y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
            mask = np.zeros((h, w), bool)
            mask[y: y + int(rng.integers(5, 40)), x: x + int(rng.integers(5, 40))] = True
            add(image_id, int(rng.choice(cat_ids)), mask, random_keypoints(image) if num_keypoints else None)
    return results
