"""Converters: each format round-trips through COCO JSON and CocoDataset to the same masks."""
from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data import (
    CocoDataset, DataError, convert_main, labelme_to_coco, mask_pngs_to_coco, rle_csv_to_coco,
)
from maskrcnn.io import encode_kaggle_rle

H, W = 36, 48


def save_image(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 50, dtype=np.uint8)).save(path)


def random_mask(rng, h=H, w=W):
    m = np.zeros((h, w), dtype=np.uint8)
    y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
    m[y:y + rng.integers(3, 10), x:x + rng.integers(3, 10)] = 1
    m[rng.random((h, w)) > 0.97] = 1  # scattered single pixels: many short runs
    return m


# ---------------------------------------------------------------------- LabelMe

def labelme_file(folder, name, shapes, h=H, w=W):
    save_image(folder / f"{name}.png", h, w)
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": f"{name}.png",
           "imageData": None, "imageHeight": h, "imageWidth": w}
    (folder / f"{name}.json").write_text(json.dumps(doc))


def shape(label, points, kind="polygon", group_id=None, **extra):
    return {"label": label, "points": points, "group_id": group_id, "shape_type": kind, "flags": {}, **extra}


def test_labelme_round_trip(tmp_path):
    src = tmp_path / "lm"
    tri = [[2, 2], [20, 3], [10, 15]]
    part_a, part_b = [[25, 2], [35, 2], [35, 10]], [[25, 20], [40, 20], [40, 30], [25, 30]]
    blob = np.zeros((6, 5), dtype=np.uint8)
    blob[1:5, 1:4] = 1
    png = io.BytesIO()
    Image.fromarray(blob * 255).save(png, format="PNG")
    labelme_file(src, "one", [
        shape("cat", tri),
        shape("dog", [[5, 20], [15, 30]], kind="rectangle"),
        shape("dog", part_a, group_id=1), shape("dog", part_b, group_id=1),  # one object, two parts
        shape("cat", [[30, 5]], kind="point"),  # not a region: ignored
        shape("cat", [[40, 2], [44, 7]], kind="mask", mask=base64.b64encode(png.getvalue()).decode()),
    ])
    labelme_file(src / "sub", "two", [])  # recursive search; no shapes = negative image
    result = labelme_to_coco(src, tmp_path / "out.json")
    assert result.num_images == 2 and result.num_annotations == 4 and result.class_names == ["cat", "dog"]
    assert len(result.skipped) == 1 and "point" in result.skipped[0][1]

    ds = CocoDataset(result.out_json, src)
    by_name = {ds.image_info(i)["file_name"]: ds[i][1] for i in range(len(ds))}
    assert set(by_name) == {"one.png", "sub/two.png"} and len(by_name["sub/two.png"]["labels"]) == 0
    t = by_name["one.png"]
    flat = lambda pts: [float(v) for p in pts for v in p]
    poly_mask = lambda polys: mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W)))
    assert np.array_equal(t["masks"][0].numpy(), poly_mask([flat(tri)]))
    assert np.array_equal(t["masks"][2].numpy(), poly_mask([flat(part_a), flat(part_b)]))
    rect = t["masks"][1].numpy()
    assert rect[22:29, 6:14].all() and rect.sum() < 12 * 12
    mask_shape = np.zeros((H, W), dtype=np.uint8)
    mask_shape[3:7, 41:44] = 1
    assert np.array_equal(t["masks"][3].numpy(), mask_shape)
    assert [ds.class_names[l - 1] for l in t["labels"].tolist()] == ["cat", "dog", "dog", "cat"]


def test_labelme_bad_polygon_names_the_file(tmp_path):
    labelme_file(tmp_path / "lm", "bad", [shape("cat", [[1, 1], [5, 5]])])
    with pytest.raises(DataError, match=r"bad\.json: shape 0 \('cat'\): polygon with 2 points"):
        labelme_to_coco(tmp_path / "lm", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    result = labelme_to_coco(tmp_path / "lm", tmp_path / "out.json", skip_bad=True)
    assert result.num_annotations == 0 and len(result.skipped) == 1


def test_labelme_fixed_classes(tmp_path):
    labelme_file(tmp_path / "lm", "a", [shape("dog", [[1, 1], [9, 1], [5, 8]])])
    result = labelme_to_coco(tmp_path / "lm", tmp_path / "out.json", class_names=["zebra", "dog"])
    data = json.loads(result.out_json.read_text())
    assert data["categories"][1] == {"id": 2, "name": "dog", "supercategory": ""}
    assert data["annotations"][0]["category_id"] == 2


# ---------------------------------------------------------------------- mask PNGs

def test_mask_pngs_round_trip(tmp_path, rng):
    src = tmp_path / "pngs"
    save_image(src / "images" / "a.jpg")
    save_image(src / "images" / "b.png")  # no masks folder: a negative image
    written = {"cat_0.png": random_mask(rng), "cat_1.png": random_mask(rng), "traffic_light_0.png": random_mask(rng)}
    for name, m in written.items():
        (src / "masks" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m * 255).save(src / "masks" / "a" / name)
    result = mask_pngs_to_coco(src, tmp_path / "out.json")
    assert result.class_names == ["cat", "traffic_light"] and result.num_images == 2

    ds = CocoDataset(result.out_json, src)
    assert [ds.image_info(i)["file_name"] for i in range(2)] == ["images/a.jpg", "images/b.png"]
    _, t = ds[0]
    for got, (name, want) in zip(t["masks"], sorted(written.items())):
        assert np.array_equal(got.numpy(), want), name
    assert t["labels"].tolist() == [1, 1, 2] and len(ds[1][1]["labels"]) == 0


def test_mask_pngs_dsb2018_layout(tmp_path, rng):
    src = tmp_path / "dsb"
    save_image(src / "abc123" / "images" / "abc123.png")
    m = random_mask(rng)
    (src / "abc123" / "masks").mkdir(parents=True)
    Image.fromarray(m * 255).save(src / "abc123" / "masks" / "f00d.png")
    result = mask_pngs_to_coco(src, tmp_path / "out.json", default_class="nucleus")
    ds = CocoDataset(result.out_json, src)
    assert ds.class_names == ["nucleus"] and np.array_equal(ds[0][1]["masks"][0].numpy(), m)


def test_mask_png_of_wrong_size_names_the_file(tmp_path):
    save_image(tmp_path / "p" / "images" / "a.png")
    (tmp_path / "p" / "masks" / "a").mkdir(parents=True)
    Image.fromarray(np.ones((10, 10), np.uint8)).save(tmp_path / "p" / "masks" / "a" / "x_0.png")
    with pytest.raises(DataError, match=r"x_0\.png: mask is 10x10"):
        mask_pngs_to_coco(tmp_path / "p", tmp_path / "out.json")


# ---------------------------------------------------------------------- Kaggle CSV

def test_rle_csv_round_trip(tmp_path, rng):
    images = tmp_path / "train"
    save_image(images / "s1.jpg")
    save_image(images / "s2.jpg", 20, 30)
    masks = [random_mask(rng), random_mask(rng)]
    rows = [("s1.jpg", encode_kaggle_rle(masks[0])), ("s2.jpg", ""), ("s1.jpg", encode_kaggle_rle(masks[1]))]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("ImageId", "EncodedPixels"), *rows])
    result = rle_csv_to_coco(tmp_path / "train.csv", images, tmp_path / "out.json", class_name="ship")
    assert result.num_images == 2 and result.num_annotations == 2

    ds = CocoDataset(result.out_json, images)
    assert ds.class_names == ["ship"]
    _, t = ds[0]
    assert np.array_equal(t["masks"].numpy(), np.stack(masks))
    assert ds[1][0].shape == (3, 20, 30) and len(ds[1][1]["labels"]) == 0


def test_rle_csv_bad_row_names_line_and_image(tmp_path):
    save_image(tmp_path / "im" / "a.png")
    (tmp_path / "x.csv").write_text("ImageId,EncodedPixels\na,1 5\na,1 2 3\n")  # ImageId without extension is found
    with pytest.raises(DataError, match=r"x\.csv:3 \(ImageId 'a'\): .*odd number"):
        rle_csv_to_coco(tmp_path / "x.csv", tmp_path / "im", tmp_path / "out.json")
    (tmp_path / "y.csv").write_text("ImageId,Pixels\n")
    with pytest.raises(DataError, match="expected columns ImageId,EncodedPixels"):
        rle_csv_to_coco(tmp_path / "y.csv", tmp_path / "im", tmp_path / "out.json")


# ---------------------------------------------------------------------- command line

def test_convert_main(tmp_path, capsys):
    labelme_file(tmp_path / "lm", "a", [shape("dog", [[1, 1], [9, 1], [5, 8]])])
    out = tmp_path / "coco" / "train.json"
    assert convert_main(["labelme", str(tmp_path / "lm"), "--out", str(out), "--classes", "cat,dog"]) == 0
    assert "1 images, 1 instances" in capsys.readouterr().out
    assert json.loads(out.read_text())["annotations"][0]["category_id"] == 2
    assert [p.name for p in out.parent.iterdir()] == ["train.json"]  # no temporary file left behind

    assert convert_main(["masks", str(tmp_path / "nothing"), "--out", str(out)]) == 1
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_main(["rle-csv", "x.csv", "--out", str(out)])  # --images is required
