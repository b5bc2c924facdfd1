"""Category ids that stay the same across splits, shipped configs without dataset paths, and
eval refusing a model whose classes are not the data's."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from maskrcnn.data import DataError, convert_main
from maskrcnn.data.convert import categories_from, rle_csv_to_coco
from maskrcnn.engine.config import PACKAGED_CONFIGS, ConfigError, load_config, require_data
from maskrcnn.evaluation.evaluate import label_mapping

from .test_convert import labelme_file, save_image, shape

TRI = [[1, 1], [9, 1], [5, 8]]


def categories(path):
    return {c["name"]: c["id"] for c in json.loads(path.read_text())["categories"]}


def test_splits_converted_apart_keep_their_ids(tmp_path, capsys):
    labelme_file(tmp_path / "train", "a", [shape("cat", TRI), shape("dog", TRI)])
    labelme_file(tmp_path / "val", "b", [shape("dog", TRI)])  # no cat in this split
    train, val, val2 = tmp_path / "train.json", tmp_path / "val.json", tmp_path / "val2.json"
    assert convert_main(["labelme", str(tmp_path / "train"), "--out", str(train)]) == 0
    assert f"--categories-from {train}" in capsys.readouterr().out  # the summary says how
    assert convert_main(["labelme", str(tmp_path / "val"), "--out", str(val)]) == 0
    assert categories(train) == {"cat": 1, "dog": 2} and categories(val) == {"dog": 1}  # the trap
    assert convert_main(["labelme", str(tmp_path / "val"), "--out", str(val2), "--categories-from", str(train)]) == 0
    assert categories(val2) == {"cat": 1, "dog": 2}
    assert json.loads(val2.read_text())["annotations"][0]["category_id"] == 2
    assert "--categories-from" not in capsys.readouterr().out.split("\n")[-2]


def test_categories_from_keeps_sparse_ids(tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"images": [], "annotations": [],
                               "categories": [{"id": 7, "name": "ship"}, {"id": 3, "name": "iceberg"}]}))
    save_image(tmp_path / "im" / "x.png", 4, 4)
    (tmp_path / "a.csv").write_text("ImageId,EncodedPixels,ClassId\nx.png,1 2,iceberg\n")
    names, ids = categories_from(ref)
    result = rle_csv_to_coco(tmp_path / "a.csv", tmp_path / "im", tmp_path / "out.json", class_names=names,
                             category_ids=ids)
    data = json.loads(result.out_json.read_text())
    assert categories(result.out_json) == {"ship": 7, "iceberg": 3}
    assert data["annotations"][0]["category_id"] == 3
    # a class the reference does not have is refused by name
    (tmp_path / "b.csv").write_text("ImageId,EncodedPixels,ClassId\nx.png,1 2,whale\n")
    with pytest.raises(DataError, match="class 'whale' is not in the given classes"):
        rle_csv_to_coco(tmp_path / "b.csv", tmp_path / "im", tmp_path / "o.json", class_names=names, category_ids=ids)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}))
    with pytest.raises(DataError, match=r"category ids repeat: \[1\]"):
        categories_from(bad)
    with pytest.raises(SystemExit):  # one or the other
        convert_main(["labelme", str(tmp_path), "--out", "x.json", "--classes", "a", "--categories-from", str(ref)])


@pytest.mark.parametrize("config", sorted(p.name for p in PACKAGED_CONFIGS.glob("*.yaml")))
def test_shipped_configs_carry_no_dataset_paths(config):
    data = yaml.safe_load((PACKAGED_CONFIGS / config).read_text()).get("data") or {}
    assert not any(data.get(k) for k in ("train_annotations", "train_images", "val_annotations", "val_images"))
    cfg = load_config(config)
    with pytest.raises(ConfigError, match="data.train_annotations and data.train_images are not set"):
        require_data(cfg)


def test_require_data_names_the_missing_key():
    cfg = load_config("shapes_cpu.yaml", ["data.train_annotations=a.json"])
    with pytest.raises(ConfigError, match=r"data.train_images is not set") as info:
        require_data(cfg)
    assert "train_annotations is not set" not in str(info.value)


def _dataset(names, ids):
    return SimpleNamespace(num_classes=len(names), class_names=list(names), category_ids=list(ids),
                           annotation_file="val.json", label_to_category_id={i + 1: c for i, c in enumerate(ids)})


def _model(names, first_label=1):
    return SimpleNamespace(num_classes=len(names) + 1, class_names=list(names), first_label=first_label)


def test_eval_refuses_other_class_names_unless_told(capsys):
    data = _dataset(["cat", "dog"], [3, 7])
    assert label_mapping(_model(["cat", "dog"]), data) == {1: 3, 2: 7}
    # the same classes in another order are matched by name, not by position
    assert label_mapping(_model(["dog", "cat"]), data) == {1: 7, 2: 3}
    with pytest.raises(ValueError, match=r"class names \['car', 'bus'\] differ from those of val.json.*"
                                         r"--map-classes-by-position"):
        label_mapping(_model(["car", "bus"]), data)
    assert label_mapping(_model(["car", "bus"]), data, by_position=True) == {1: 3, 2: 7}
    assert "matching them by position, as asked" in capsys.readouterr().err
