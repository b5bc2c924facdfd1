"""`maskrcnn inspect` on a synthetic COCO dataset: the four PNGs and their counts."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from maskrcnn.cli import main as cli_main
from maskrcnn.data import generate_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    ann = generate_shapes_dataset(root, 2, image_size=(96, 96), seed=0, empty_fraction=0.0)
    return ann, root / "images"


def test_inspect_writes_the_four_images(shapes, tmp_path, capsys):
    ann, images = shapes
    out = tmp_path / "inspect"
    code = cli_main(["inspect", "--data", str(ann), "--images", str(images), "--image-id", "2",
                     "--preset", "maskrcnn_resnet18_small", "--out", str(out), "--max-masks", "8"])
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["image_id"] == 2
    h, w = stats["resized_size"]  # the small preset resizes the short side to 256
    assert (h, w) == (256, 256)
    for name in ("anchors.png", "proposals.png", "rois.png"):
        assert Image.open(out / name).size == (w, h)
    # P2..P6, 3 aspect ratios per location; every gt has at least one positive anchor
    assert [a["count"] for a in stats["anchors"]] == [64 * 64 * 3, 32 * 32 * 3, 16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3]
    assert sum(a["positive"] for a in stats["anchors"]) >= stats["gt"] > 0
    rois = stats["rois"]
    assert rois["positive"] >= stats["gt"]  # the gt boxes themselves are sampled as positives
    assert rois["positive"] + rois["negative"] == rois["sampled"] <= 512
    assert rois["positive"] <= 128  # 25 % of 512
    assert stats["mask_targets"] == min(8, rois["positive"]) and stats["mask_size"] == 28
    sheet = Image.open(out / "mask_targets.png")
    assert sheet.width > 4 * 84 * 2  # four (crop | target) pairs per row


def test_unknown_image_id(shapes, tmp_path, capsys):
    ann, images = shapes
    code = cli_main(["inspect", "--data", str(ann), "--images", str(images), "--image-id", "99",
                     "--preset", "maskrcnn_resnet18_small", "--out", str(tmp_path)])
    assert code == 2 and "image id 99 is not in" in capsys.readouterr().err


def test_inspect_a_c4_model(shapes, tmp_path):
    """C4: one feature map (stride 16) with 15 anchors per cell, and 14x14 mask targets."""
    from maskrcnn.data import CocoDataset
    from maskrcnn.inference.inspect import inspect_sample
    from maskrcnn.modeling import ModelConfig, build_model

    ann, images = shapes
    dataset = CocoDataset(ann, images)
    image, target = dataset[0]
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="c4", depth=18, base_width=8, num_classes=dataset.num_classes + 1,
                                    min_size=128, max_size=128, anchor_sizes=(16, 32, 64, 128, 256),
                                    rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100))
    stats = inspect_sample(model, image, target, tmp_path, max_masks=4)
    (level,) = stats["anchors"]
    assert level["level"] == "C4" and level["size"] == [16, 32, 64, 128, 256] and level["grid"] == [8, 8]
    assert level["count"] == 8 * 8 * 15 and level["positive"] >= stats["gt"] > 0
    assert stats["mask_size"] == 14 and stats["mask_targets"] == min(4, stats["rois"]["positive"])
    assert [Image.open(tmp_path / name).size for name in ("anchors.png", "rois.png")] == [(128, 128)] * 2
    assert Image.open(tmp_path / "mask_targets.png").width > 0
