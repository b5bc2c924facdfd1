"""The synthetic shapes dataset is real COCO on disk, deterministic, and occlusion-correct."""
from __future__ import annotations

import json

import pytest

from maskrcnn.data import CocoDataset, generate_shapes_dataset, shapes_category_ids

from .conftest import box_of_mask


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    ann = generate_shapes_dataset(root, 40, seed=1, max_shapes=6, empty_fraction=0.1)
    return ann, CocoDataset(ann, root / "images")


def test_loads_through_coco_dataset_with_non_contiguous_ids(shapes):
    ann, ds = shapes
    data = json.loads(ann.read_text())
    assert [c["id"] for c in data["categories"]] == [1, 3, 7] == shapes_category_ids(3)
    assert ds.class_names == ["circle", "square", "triangle"] and len(ds) == 40
    assert ann.name == "annotations.json" and (ann.parent / "images" / "000001.png").is_file()
    counts = [len(ds[i][1]["labels"]) for i in range(len(ds))]
    assert 0 in counts and max(counts) > 2  # negatives and crowded images both present


def test_masks_are_disjoint_and_match_boxes_and_pixels(shapes):
    ann, ds = shapes
    data = json.loads(ann.read_text())
    by_id = {a["id"]: a for a in data["annotations"]}
    for i in range(len(ds)):
        image, target = ds[i]
        masks = target["masks"]
        if len(masks) == 0:
            continue
        assert masks.sum(0).max() <= 1  # each pixel belongs to at most one instance
        for box, mask in zip(target["boxes"], masks):
            assert mask.sum() >= 40
            assert box.tolist() == box_of_mask(mask)
            # occlusion-correct: the visible pixels of an instance all have its one flat colour
            colors = image[:, mask.bool()]
            assert (colors - colors[:, :1]).abs().max() < 1e-6
    for a in by_id.values():
        assert a["area"] > 0 and a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_shapes_dataset(tmp_path / "a", 5, seed=7)
    b = generate_shapes_dataset(tmp_path / "b", 5, seed=7)
    c = generate_shapes_dataset(tmp_path / "c", 5, seed=8)
    assert a.read_bytes().replace(b"/a", b"") == b.read_bytes().replace(b"/b", b"")
    for k in range(1, 6):
        name = f"images/{k:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a.read_text() != c.read_text()
    # image i depends only on (seed, i): a longer run starts with the same images
    generate_shapes_dataset(tmp_path / "d", 8, seed=7)
    assert (tmp_path / "d/images/000003.png").read_bytes() == (tmp_path / "a/images/000003.png").read_bytes()


def test_other_classes_and_sizes(tmp_path):
    ann = generate_shapes_dataset(tmp_path, 6, image_size=(64, 96), seed=0,
                                  classes=("star", "cross", "circle", "square"), size_range=(12, 30))
    ds = CocoDataset(ann, tmp_path / "images")
    assert ds.class_names == ["star", "cross", "circle", "square"]
    assert ds.category_ids == [1, 3, 7, 13]
    assert ds[0][0].shape == (3, 64, 96)
    with pytest.raises(ValueError, match="hexagon"):
        generate_shapes_dataset(tmp_path, 1, classes=("hexagon",))
