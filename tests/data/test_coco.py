"""CocoDataset: mask decoding against pycocotools, label mapping, negatives, crowd, image modes,
and one test per kind of bad data (the message must name the file / image id / annotation id)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data import CocoDataset, DataError, collate_fn

from .conftest import ann, write_coco

H, W = 40, 50


def blank(h: int = H, w: int = W) -> np.ndarray:
    return np.full((h, w, 3), 90, dtype=np.uint8)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: alternating run lengths over column-major pixels, zeros first."""
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0] + runs if flat[0] else runs}


def test_polygon_and_both_rle_kinds_decode_like_pycocotools(tmp_path, rng):
    blob = np.zeros((H, W), dtype=np.uint8)
    blob[8:30, 20:44] = rng.random((22, 24)) > 0.3
    compressed = mask_utils.encode(np.asfortranarray(blob))
    uncompressed = uncompressed_rle(blob)
    polys = [[2.0, 3.0, 15.5, 4.0, 9.0, 18.0], [30.0, 30.0, 45.0, 31.0, 44.0, 38.0, 31.0, 37.0]]
    anns = [
        ann(1, 7, polys, [2, 3, 43, 35]),
        ann(2, 7, uncompressed, list(mask_utils.toBbox(compressed))),
        ann(3, 7, {"size": [H, W], "counts": compressed["counts"].decode()}, list(mask_utils.toBbox(compressed))),
    ]
    path = write_coco(tmp_path, [(7, "a.png", blank())], anns)
    image, target = CocoDataset(path, tmp_path / "images")[0]

    expected = [
        mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W))),
        mask_utils.decode(mask_utils.frPyObjects(uncompressed, H, W)),
        mask_utils.decode(compressed),
    ]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, H, W)
    for got, want in zip(target["masks"], expected):
        assert np.array_equal(got.numpy(), want)
    assert np.array_equal(expected[1], blob) and np.array_equal(expected[2], blob)
    # boxes are the JSON bbox converted to xyxy
    assert torch.equal(target["boxes"][0], torch.tensor([2.0, 3.0, 45.0, 38.0]))
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert target["image_id"] == 7 and target["orig_size"] == (H, W)


def test_category_ids_map_to_contiguous_labels_and_back(tmp_path, square_ann):
    cats = [{"id": 90, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    anns = [square_ann(1, 1, category_id=90), square_ann(2, 1, x=20, category_id=3),
            square_ann(3, 1, x=30, category_id=7)]
    path = write_coco(tmp_path, [(1, "a.png", blank())], anns, cats)
    ds = CocoDataset(path, tmp_path / "images")
    assert ds.class_names == ["cat", "dog", "zebra"]  # ordered by category id
    assert ds.category_id_to_label == {3: 1, 7: 2, 90: 3}
    assert ds.num_classes == 3
    for cid in (3, 7, 90):
        assert ds.label_to_category_id[ds.category_id_to_label[cid]] == cid
    _, target = ds[0]
    assert target["labels"].dtype == torch.int64
    assert [ds.label_to_category_id[int(l)] for l in target["labels"]] == [90, 3, 7]


def test_image_without_annotations_is_kept_with_empty_tensors(tmp_path, square_ann):
    path = write_coco(tmp_path, [(1, "a.png", blank()), (2, "b.png", blank(30, 20))], [square_ann(1, 1)])
    ds = CocoDataset(path, tmp_path / "images")
    assert len(ds) == 2
    image, target = ds[1]
    assert image.shape == (3, 30, 20)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, 30, 20) and target["masks"].dtype == torch.uint8
    assert target["iscrowd"].shape == (0,) and target["iscrowd"].dtype == torch.bool
    images, targets = collate_fn([ds[0], ds[1]])
    assert len(images) == 2 and targets[1]["image_id"] == 2


def test_crowd_regions_are_flagged(tmp_path, square_ann):
    crowd = np.zeros((H, W), dtype=np.uint8)
    crowd[20:35, 5:40] = 1
    anns = [square_ann(1, 1), ann(2, 1, uncompressed_rle(crowd), [5, 20, 35, 15], iscrowd=1),
            ann(3, 1, [], [30, 2, 10, 6], iscrowd=1)]  # a crowd box without a mask: the box is the region
    path = write_coco(tmp_path, [(1, "a.png", blank())], anns)
    _, target = CocoDataset(path, tmp_path / "images")[0]
    assert target["iscrowd"].tolist() == [False, True, True]
    assert np.array_equal(target["masks"][1].numpy(), crowd)
    box_region = np.zeros((H, W), dtype=np.uint8)
    box_region[2:8, 30:40] = 1
    assert np.array_equal(target["masks"][2].numpy(), box_region)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_image_modes_are_converted_to_rgb_float(tmp_path, mode):
    (tmp_path / "images").mkdir()
    if mode == "I;16":
        img = Image.fromarray(np.array([[0, 32768], [65535, 1000]], dtype=np.uint16))
    else:
        img = Image.fromarray(np.arange(4, dtype=np.uint8).reshape(2, 2) * 80).convert(mode)
    img.save(tmp_path / "images" / "x.png")
    (tmp_path / "a.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.png", "height": 2, "width": 2}],
        "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    image, _ = CocoDataset(tmp_path / "a.json", tmp_path / "images")[0]
    assert image.shape == (3, 2, 2) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    if mode == "I;16":  # scaled by the 16-bit range, not clipped at 255
        assert image[0, 0, 1] == pytest.approx(32768 / 65535) and image[0, 1, 0] == 1.0
    else:
        assert image[0, 1, 1] == pytest.approx(240 / 255, abs=1 / 255)


def test_exif_orientation_is_applied(tmp_path):
    (tmp_path / "images").mkdir()
    stored = np.zeros((20, 30, 3), dtype=np.uint8)
    stored[:5, :5] = 255  # bright top-left corner in the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(tmp_path / "images" / "r.jpg", exif=exif, quality=95)
    (tmp_path / "a.json").write_text(json.dumps({  # annotated on the displayed, 30x20 picture
        "images": [{"id": 1, "file_name": "r.jpg", "height": 30, "width": 20}],
        "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    image, _ = CocoDataset(tmp_path / "a.json", tmp_path / "images")[0]
    assert image.shape == (3, 30, 20)
    assert image[:, :5, -5:].mean() > 0.9 and image[:, :5, :5].mean() < 0.1  # corner moved to top-right


# ---------------------------------------------------------------------- bad data, one test each

def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [{"id": 1,}]}')
    with pytest.raises(DataError, match=r"broken\.json.*malformed JSON at line 1 column"):
        CocoDataset(path, tmp_path)


def test_missing_image_file_names_file_and_image_id(tmp_path, square_ann):
    path = write_coco(tmp_path, [(5, "a.png", blank())], [square_ann(1, 5)])
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(DataError, match=r"image id 5.*a\.png.*not found"):
        CocoDataset(path, tmp_path / "images")  # checked before training or evaluation starts
    ds = CocoDataset(path, tmp_path / "images", check_files=False)  # or only when loaded
    with pytest.raises(DataError, match=r"image id 5.*a\.png.*not found"):
        ds[0]


@pytest.mark.parametrize("content", [b"this is not an image", "truncated"])
def test_unreadable_image_names_file_and_image_id(tmp_path, square_ann, content):
    path = write_coco(tmp_path, [(5, "a.png", blank())], [square_ann(1, 5)])
    if content == "truncated":
        content = (tmp_path / "images" / "a.png").read_bytes()[:60]
    (tmp_path / "images" / "a.png").write_bytes(content)
    with pytest.raises(DataError, match=r"image id 5.*a\.png.*cannot read image"):
        CocoDataset(path, tmp_path / "images")[0]


def test_polygon_with_fewer_than_3_points(tmp_path):
    bad = ann(12, 3, [[5.0, 5.0, 15.0, 15.0]], [5, 5, 10, 10])
    path = write_coco(tmp_path, [(3, "c.png", blank())], [bad])
    with pytest.raises(DataError, match=r"(?s)annotations\.json.*annotation id 12 \(image id 3, 'c\.png'\).*2 points"):
        CocoDataset(path, tmp_path / "images")


def test_box_outside_the_image(tmp_path, square_ann):
    path = write_coco(tmp_path, [(3, "c.png", blank())], [square_ann(13, 3, x=W - 5)])
    with pytest.raises(DataError, match=r"(?s)annotation id 13 \(image id 3, 'c\.png'\).*outside the 50x40 image"):
        CocoDataset(path, tmp_path / "images")


def test_box_slightly_outside_is_tolerated_and_clipped(tmp_path, square_ann):
    path = write_coco(tmp_path, [(3, "c.png", blank())], [square_ann(13, 3, x=W - 9)])  # 1 px over
    _, target = CocoDataset(path, tmp_path / "images")[0]
    assert target["boxes"][0, 2] == W


def test_unknown_category_id(tmp_path, square_ann):
    path = write_coco(tmp_path, [(3, "c.png", blank())], [square_ann(14, 3, category_id=42)])
    with pytest.raises(DataError, match=r"(?s)annotation id 14 \(image id 3, 'c\.png'\).*unknown category id 42"):
        CocoDataset(path, tmp_path / "images")


@pytest.mark.parametrize("field", ["bbox", "area"])
def test_zero_area_annotation(tmp_path, square_ann, field):
    bad = square_ann(15, 3)
    if field == "bbox":
        bad["bbox"] = [5, 5, 0, 10]
    else:
        bad["area"] = 0
    path = write_coco(tmp_path, [(3, "c.png", blank())], [bad])
    with pytest.raises(DataError, match=r"(?s)annotation id 15 \(image id 3, 'c\.png'\).*zero-area"):
        CocoDataset(path, tmp_path / "images")


def test_image_size_in_json_differs_from_file(tmp_path, square_ann):
    path = write_coco(tmp_path, [(3, "c.png", blank())], [square_ann(1, 3)])
    Image.fromarray(blank(41, 50)).save(tmp_path / "images" / "c.png")
    with pytest.raises(DataError, match=r"(?s)1 bad image.*image id 3.*c\.png: file is 50x41 .* says 50x40"):
        CocoDataset(path, tmp_path / "images")
    ds = CocoDataset(path, tmp_path / "images", check_files=False)
    with pytest.raises(DataError, match=r"c\.png \(image id 3\): file is 50x41 .* says 50x40"):
        ds[0]
    with pytest.raises(DataError, match=r"(?s)1 bad image.*image id 3"):
        ds.verify_images()


def test_all_bad_annotations_are_listed_in_one_error(tmp_path, square_ann):
    anns = [square_ann(1, 3, category_id=9), square_ann(2, 3, x=100), square_ann(3, 3)]
    path = write_coco(tmp_path, [(3, "c.png", blank())], anns)
    with pytest.raises(DataError, match=r"2 bad annotations") as info:
        CocoDataset(path, tmp_path / "images")
    assert "annotation id 1 " in str(info.value) and "annotation id 2 " in str(info.value)
    assert "annotation id 3 " not in str(info.value)


def test_skip_bad_drops_and_counts_bad_annotations_and_images(tmp_path, square_ann):
    anns = [square_ann(1, 1, category_id=9), square_ann(2, 1), square_ann(3, 2, x=200), square_ann(4, 3)]
    path = write_coco(tmp_path, [(1, "a.png", blank()), (2, "b.png", blank()), (3, "c.png", blank())], anns)
    (tmp_path / "images" / "b.png").unlink()
    checked = CocoDataset(path, tmp_path / "images", skip_bad=True)  # b.png dropped up front
    assert checked.image_ids == [1, 3] and len(checked.skipped) == 3
    assert "image id 2 ('b.png')" in [w for w, _ in checked.skipped]
    ds = CocoDataset(path, tmp_path / "images", skip_bad=True, check_files=False)
    assert len(ds.skipped) == 2 and {w.split(" (")[0] for w, _ in ds.skipped} == {"annotation id 1", "annotation id 3"}
    _, t0 = ds[0]
    assert t0["boxes"].shape == (1, 4)  # annotation 2 survives beside the dropped one
    with pytest.warns(UserWarning, match="image id 2"):
        _, t1 = ds[1]  # b.png is missing: replaced by the next good sample
    assert t1["image_id"] == 3 and len(ds.skipped) == 3
    ds[1]  # the bad image is remembered, not counted twice
    assert len(ds.skipped) == 3

    fresh = CocoDataset(path, tmp_path / "images", skip_bad=True, check_files=False)
    problems = fresh.verify_images(num_workers=2)
    assert len(problems) == 1 and len(fresh) == 2 and fresh.image_ids == [1, 3]
    assert len(fresh.skipped) == 3


def test_works_in_a_dataloader(tmp_path, square_ann):
    path = write_coco(tmp_path, [(i, f"{i}.png", blank()) for i in range(1, 5)], [square_ann(1, 2)])
    loader = torch.utils.data.DataLoader(CocoDataset(path, tmp_path / "images"), batch_size=2, collate_fn=collate_fn)
    batches = list(loader)
    assert len(batches) == 2 and [t["image_id"] for t in batches[0][1]] == [1, 2]
