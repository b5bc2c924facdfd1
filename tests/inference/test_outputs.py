"""Output formats: COCO RLE and results, label maps, Kaggle RLE CSV, atomic writers.

The Kaggle RLE codec itself is tested in tests/test_io.py, beside maskrcnn/io/."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from maskrcnn.inference.colors import instance_colors
from maskrcnn.inference.outputs import (
    label_map,
    mask_to_rle,
    masks_to_rles,
    read_rle_csv,
    rle_to_mask,
    to_coco_results,
    write_coco_json,
    write_label_map_png,
    write_rle_csv,
)

from testing_utils import LITERAL_MASK, LITERAL_RLE


def _random_masks(rng, num, h, w):
    masks = rng.random((num, h, w)) < rng.random((num, 1, 1))  # assorted densities
    masks[0] = False  # an empty mask
    if num > 1:
        masks[1] = True  # a full one
    return masks


# ------------------------------------------------------------------------------ COCO RLE


def test_coco_rle_round_trip():
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, 6, 13, 17)
    rles = masks_to_rles(masks)
    for mask, rle in zip(masks, rles):
        assert rle["size"] == [13, 17] and isinstance(rle["counts"], str)
        json.dumps(rle)  # JSON-ready
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
        assert mask_to_rle(torch.from_numpy(mask)) == rle
    # bytes counts and uncompressed list counts decode too
    assert rle_to_mask({"size": [13, 17], "counts": rles[2]["counts"].encode()}).sum() == masks[2].sum()
    np.testing.assert_array_equal(rle_to_mask({"size": [2, 2], "counts": [1, 2, 1]}), [[False, True], [True, False]])


def test_coco_rle_thresholds_probabilities():
    probs = np.array([[0.2, 0.5], [0.7, 0.49]], dtype=np.float32)
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(probs)), probs >= 0.5)


def test_to_coco_results_bbox_area_segmentation():
    rng = np.random.default_rng(1)
    masks = torch.from_numpy(_random_masks(rng, 3, 20, 30))
    boxes = torch.tensor([[1.0, 2.0, 11.0, 7.5], [0.0, 0.0, 30.0, 20.0], [5.25, 6.0, 6.25, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.1])
    labels = torch.tensor([1, 2, 1])
    res = to_coco_results(np.int64(42), boxes, scores, labels, masks, category_ids={1: 18, 2: 1})
    assert [r["category_id"] for r in res] == [18, 1, 18]
    assert res[0]["bbox"] == [1.0, 2.0, 10.0, 5.5] and res[2]["bbox"] == [5.25, 6.0, 1.0, 3.0]
    assert [r["area"] for r in res] == [int(m.sum()) for m in masks]
    assert res[1]["area"] == 600
    assert res[0]["image_id"] == 42 and type(res[0]["image_id"]) is int
    assert res[0]["score"] == pytest.approx(0.9)
    for r, m in zip(res, masks):
        np.testing.assert_array_equal(rle_to_mask(r["segmentation"]), m.numpy())
    json.dumps(res)

    # pycocotools accepts them as results
    gt = COCO()
    gt.dataset = {"images": [{"id": 42, "height": 20, "width": 30}],
                  "categories": [{"id": 1, "name": "a"}, {"id": 18, "name": "b"}], "annotations": []}
    gt.createIndex()
    dt = gt.loadRes(res)
    assert len(dt.anns) == 3

    # sequence lookup, no masks, and a clear error for an unknown label
    plain = to_coco_results("img", boxes, scores, labels, category_ids=[0, 7, 9])
    assert [r["category_id"] for r in plain] == [7, 9, 7] and "segmentation" not in plain[0]
    with pytest.raises(KeyError, match="label 2"):
        to_coco_results(1, boxes, scores, labels, category_ids={1: 1})
    assert to_coco_results(1, torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0), torch.zeros((0, 5, 5), dtype=torch.bool)) == []


# ------------------------------------------------------------------------------ label map


def _label_map_reference(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Slow and obvious: visit pixels, give each to the best (score, then lower index) instance."""
    num, h, w = masks.shape
    out = np.zeros((h, w), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            best = None
            for i in range(num):
                if masks[i, y, x] and (best is None or scores[i] > scores[best]):
                    best = i
            out[y, x] = 0 if best is None else best + 1
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_map_matches_reference(seed):
    rng = np.random.default_rng(seed)
    masks = _random_masks(rng, 7, 9, 11)
    scores = rng.choice([0.3, 0.5, 0.9], size=7)  # repeated values exercise the tie rule
    expected = _label_map_reference(masks, scores)
    got = label_map(masks, scores)
    assert isinstance(got, np.ndarray) and got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    got_t = label_map(torch.from_numpy(masks), torch.from_numpy(scores))
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_array_equal(got_t.numpy(), expected)
    # float probabilities are binarized at 0.5
    np.testing.assert_array_equal(label_map(masks.astype(np.float32) * 0.8, scores), expected)


def test_label_map_agrees_with_masks_and_scores():
    rng = np.random.default_rng(3)
    masks = _random_masks(rng, 5, 16, 16)
    scores = rng.random(5)
    lm = label_map(masks, scores)
    np.testing.assert_array_equal(lm > 0, masks.any(0))  # covered exactly where some mask is
    for y, x in zip(*np.nonzero(lm)):
        owner = lm[y, x] - 1
        assert masks[owner, y, x]
        assert scores[owner] == scores[masks[:, y, x]].max()
    assert label_map(np.zeros((0, 3, 4), bool), np.zeros(0)).shape == (3, 4)


def test_label_map_png_8_and_16_bit(tmp_path):
    small = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_label_map_png(tmp_path / "small.png", small)
    with Image.open(tmp_path / "small.png") as im:
        assert im.mode == "P"  # ids as pixel values, shown in colour (not near-black grays)
        np.testing.assert_array_equal(np.asarray(im), small)
        rgb = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])  # background stays black
    for i in range(1, 12):  # id i is the i-th instance colour
        np.testing.assert_array_equal(rgb[small == i][0], instance_colors(i)[i - 1])

    big = (np.arange(12, dtype=np.int32).reshape(3, 4) * 100)  # up to 1100 > 255
    write_label_map_png(tmp_path / "big.png", torch.from_numpy(big))
    with Image.open(tmp_path / "big.png") as im:
        assert im.mode in ("I;16", "I")
        np.testing.assert_array_equal(np.asarray(im), big)

    with pytest.raises(ValueError):
        write_label_map_png(tmp_path / "bad.png", np.full((2, 2), 70000))
    assert not (tmp_path / "bad.png").exists()


# ------------------------------------------------------------------------------ CSV


def test_rle_csv_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    a = _random_masks(rng, 3, 6, 5)  # masks[0] is empty: dropped from the CSV
    rows = [("a", a), ("b", np.zeros((0, 6, 5), bool)), ("c", None), ("lit", LITERAL_MASK)]
    path = tmp_path / "sub.csv"
    assert write_rle_csv(path, iter(rows)) == 2 + 1 + 1 + 1

    lines = path.read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels"
    assert "b," in lines and "c," in lines and f"lit,{LITERAL_RLE}" in lines

    shapes = {"a": (6, 5), "b": (6, 5), "c": (6, 5), "lit": (4, 4)}
    back = read_rle_csv(path, shapes)
    assert list(back) == ["a", "b", "c", "lit"]
    np.testing.assert_array_equal(back["a"], a[1:])
    assert back["b"].shape == (0, 6, 5) and back["c"].shape == (0, 6, 5)
    np.testing.assert_array_equal(back["lit"], LITERAL_MASK[None])


def test_rle_csv_read_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("ImageId,EncodedPixels\nx,1 2\ny,1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 3, image 'y'"):
        read_rle_csv(path, (4, 4))
    path.write_text("id,rle\n")
    with pytest.raises(ValueError, match="header"):
        read_rle_csv(path, (4, 4))
    path.write_text("\ufeffImageId,EncodedPixels\nz,\n")  # BOM from a spreadsheet program
    assert read_rle_csv(path, {"z": (2, 2)})["z"].shape == (0, 2, 2)


def test_writers_are_atomic(tmp_path):
    path = tmp_path / "sub.csv"
    write_rle_csv(path, [("old", None)])
    before = path.read_text()

    def rows():
        yield "new", LITERAL_MASK
        raise RuntimeError("model crashed on the second image")

    with pytest.raises(RuntimeError):
        write_rle_csv(path, rows())
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]


def test_coco_json_round_trip(tmp_path):
    res = to_coco_results(3, torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([0.5]),
                          torch.tensor([1]), torch.ones((1, 2, 2), dtype=torch.bool))
    res[0]["extra"] = np.float32(1.5)  # numpy scalars are written as numbers
    write_coco_json(tmp_path / "r" / "results.json", res)
    back = json.loads((tmp_path / "r" / "results.json").read_text())
    assert back[0]["extra"] == 1.5
    del res[0]["extra"], back[0]["extra"]
    assert back == res
