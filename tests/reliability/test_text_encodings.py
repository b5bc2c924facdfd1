"""Text files of any encoding are read (UTF-8, or UTF-16/32 with a byte-order mark) or refused
with an error naming the file and the byte, never a UnicodeDecodeError; the file is untouched."""
import json

import numpy as np
import pytest

from maskrcnn.engine.config import ConfigError, load_config
from maskrcnn.evaluation.coco_evaluator import load_coco_gt
from maskrcnn.inference.outputs import read_rle_csv
from maskrcnn.io import DataError, encode_kaggle_rle

CSV_TEXT = "ImageId,EncodedPixels\nbild_é,{rle}\n"


def rle_csv(tmp_path, encoding):
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    path = tmp_path / f"masks_{encoding}.csv"
    path.write_bytes(CSV_TEXT.format(rle=encode_kaggle_rle(mask)).encode(encoding))
    return path, mask


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_rle_csv_in_unicode_encodings_is_read(tmp_path, encoding):
    path, mask = rle_csv(tmp_path, encoding)
    assert np.array_equal(read_rle_csv(path, (4, 5))["bild_é"][0], mask)


def test_rle_csv_in_a_legacy_encoding_is_refused_in_words(tmp_path):
    path, _ = rle_csv(tmp_path, "cp1252")
    before = path.read_bytes()
    with pytest.raises(DataError) as info:
        read_rle_csv(path, (4, 5))
    assert type(info.value) is DataError
    assert str(path) in str(info.value) and "not valid utf-8" in str(info.value) and "0xe9" in str(info.value)
    assert path.read_bytes() == before


def test_yaml_config_in_utf16_is_read_and_cp1252_refused(tmp_path):
    text = "# Größe\nsolver:\n  base_lr: 0.05\n"
    good = tmp_path / "utf16.yaml"
    good.write_bytes(text.encode("utf-16"))
    assert load_config(good).solver.base_lr == 0.05
    bad = tmp_path / "cp1252.yaml"
    bad.write_bytes(text.encode("cp1252"))
    before = bad.read_bytes()
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert type(info.value) is ConfigError
    assert str(bad) in str(info.value) and "not valid utf-8" in str(info.value)
    assert bad.read_bytes() == before


def test_model_json_not_in_unicode_is_a_value_error_naming_it(tmp_path):
    from maskrcnn.checkpoint import save_model
    from maskrcnn.checkpoint.native import read_config
    from maskrcnn.modeling.build import build_preset

    weights = tmp_path / "m.safetensors"
    save_model(build_preset("maskrcnn_resnet18_small", num_classes=2, class_names=["käse"]), weights)
    config = weights.with_suffix(".json")
    meta = json.loads(config.read_text())
    config.write_bytes(json.dumps(meta, ensure_ascii=False).encode("utf-16"))  # read
    assert read_config(weights).class_names == ["käse"]
    config.write_bytes(json.dumps(meta, ensure_ascii=False).encode("cp1252"))  # refused
    with pytest.raises(ValueError) as info:
        read_config(weights)
    assert type(info.value) is ValueError
    assert str(config) in str(info.value) and "not valid JSON" in str(info.value)


def test_coco_ground_truth_in_utf16_is_read_for_evaluation(tmp_path):
    data = {"images": [{"id": 1, "file_name": "ä.png", "width": 4, "height": 4}],
            "categories": [{"id": 1, "name": "chat noir é"}], "annotations": []}
    path = tmp_path / "gt.json"
    path.write_bytes(json.dumps(data, ensure_ascii=False).encode("utf-16"))
    assert load_coco_gt(path).cats[1]["name"] == "chat noir é"
