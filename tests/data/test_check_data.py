"""`maskrcnn check-data`: exact counts on a dataset written by hand (sizes at COCO's limits,
a crowd region, an image without objects, a missing and an unreadable file, an annotation of an
unknown category), the same counts as the JSON read directly on the shapes data, exit status,
and the picture."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from maskrcnn.cli import main as cli_main
from maskrcnn.data import generate_shapes_dataset
from maskrcnn.data.check import dataset_stats, size_name


def box(x, y, w, h, **extra):
    return {"bbox": [x, y, w, h], "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "iscrowd": 0, **extra}


@pytest.fixture
def handmade(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("1.png", "2.png", "4.png"):
        Image.new("RGB", (200, 200)).save(images / name)
    (images / "5.png").write_bytes(b"not a png")  # 3.png is missing
    anns = [(1, 5, box(10, 10, 20, 20)),          # small: 400
            (1, 9, box(0, 0, 50, 50)),            # medium: 2500
            (1, 9, box(0, 0, 100, 100)),          # large: 10000 (= 100^2 >= 96^2)
            (1, 5, box(100, 100, 50, 50, iscrowd=1)),
            (3, 5, box(0, 0, 40, 40)),            # on the missing file's image
            (4, 5, box(0, 0, 32, 32)),            # exactly 32^2: medium
            (4, 77, box(0, 0, 10, 10))]           # unknown category
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in range(1, 6)],
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, **a} for k, (i, c, a) in enumerate(anns)],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 11, "name": "bird"}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path, images


def test_size_classes_are_cocos():
    assert [size_name(a) for a in (1, 1023.9, 1024, 9215.9, 9216, 1e9)] == \
        ["small", "small", "medium", "medium", "large", "large"]


def test_counts_with_the_files_checked(handmade):
    path, images = handmade
    stats = dataset_stats(path, images)
    assert stats.images == 3 and stats.images_without_objects == 1  # 1, 2, 4 usable; 2 empty
    assert stats.instances_per_class == {"cat": 2, "dog": 2, "bird": 0}
    assert stats.crowd_regions == 1
    assert stats.box_sizes == {"small": 1, "medium": 2, "large": 1}
    assert sorted(stats.objects_per_image) == [0, 1, 3]
    problems = sorted(what for what, _ in stats.problems)
    assert problems == ["annotation id 7 (image id 4, '4.png')", "image id 3 ('3.png')", "image id 5 ('5.png')"]
    why = dict(stats.problems)
    assert "not found" in why["image id 3 ('3.png')"] and "unknown category id 77" in why["annotation id 7 (image id 4, '4.png')"]


def test_counts_from_the_json_alone(handmade):
    path, _ = handmade
    stats = dataset_stats(path)
    assert stats.images == 5 and not stats.files_checked
    assert stats.instances_per_class == {"cat": 3, "dog": 2, "bird": 0}
    assert stats.box_sizes == {"small": 1, "medium": 3, "large": 1}
    assert [what for what, _ in stats.problems] == ["annotation id 7 (image id 4, '4.png')"]


def test_shapes_counts_match_the_json_read_directly(tmp_path):
    path = generate_shapes_dataset(tmp_path, 12, seed=4, size_range=(10.0, 110.0), image_size=(160, 160))
    data = json.loads(path.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    stats = dataset_stats(path, path.parent / "images")
    assert stats.problems == []
    assert stats.instances_per_class == {n: Counter(names[a["category_id"]] for a in data["annotations"])[n]
                                         for n in names.values()}
    areas = [a["bbox"][2] * a["bbox"][3] for a in data["annotations"]]
    expected = Counter("small" if a < 32 ** 2 else "medium" if a < 96 ** 2 else "large" for a in areas)
    assert stats.box_sizes == {k: expected[k] for k in ("small", "medium", "large")}
    with_objects = {a["image_id"] for a in data["annotations"]}
    assert stats.images_without_objects == len(data["images"]) - len(with_objects)


def test_cli_exit_status_and_picture(handmade, tmp_path, capsys):
    path, images = handmade
    assert cli_main(["check-data", str(path), "--images", str(images)]) == 1
    out = capsys.readouterr().out
    assert "3 usable images (1 without objects), 4 instances, 1 crowd regions" in out
    assert "small 1 (25%), medium 2 (50%), large 1 (25%)" in out
    assert "3 problems:" in out and "bird" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert cli_main(["check-data", str(bad)]) == 2
    assert "malformed JSON" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    clean = generate_shapes_dataset(tmp_path / "shapes", 3, seed=1)
    picture = tmp_path / "stats.png"
    assert cli_main(["check-data", str(clean), "--images", str(clean.parent / "images"), "--plot", str(picture)]) == 0
    assert "no problems found" in capsys.readouterr().out
    with Image.open(picture) as png:
        assert png.size == (1300, 400)
        assert len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)) > 10  # drawn, not blank
