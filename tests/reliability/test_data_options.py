"""The dataset's file options are reachable from the train config (data.check_files,
data.allow_outside_image_dir) and the eval command line (--no-file-check,
--allow-outside-image-dir); without them, bad file names are refused naming the file."""
import json

import numpy as np
import pytest
from PIL import Image

from maskrcnn.engine.config import load_config
from maskrcnn.engine.train import build_datasets
from maskrcnn.evaluation.evaluate import main as eval_main
from maskrcnn.io import DataError


def dataset(tmp_path, file_name):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "outside.png")
    data = {"images": [{"id": 1, "file_name": file_name, "width": 30, "height": 20}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 20.0,
                             "bbox": [1, 1, 5, 4], "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]]}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, images


def config(path, images, *extra):
    return load_config(None, [f"data.train_annotations={path}", f"data.train_images={images}", *extra])


def test_train_config_allows_outside_paths_only_when_asked(tmp_path):
    path, images = dataset(tmp_path, "../outside.png")
    before = path.read_bytes()
    with pytest.raises(DataError) as info:
        build_datasets(config(path, images))
    assert type(info.value) is DataError
    assert "../outside.png" in str(info.value) and "image id 1" in str(info.value)
    train_set, _ = build_datasets(config(path, images, "data.allow_outside_image_dir=true"))
    image, _ = train_set[0]
    assert image.shape == (3, 20, 30)
    assert path.read_bytes() == before


def test_train_config_can_defer_the_file_check(tmp_path):
    path, images = dataset(tmp_path, "missing.png")
    with pytest.raises(DataError) as info:
        build_datasets(config(path, images))
    assert "missing.png" in str(info.value)
    train_set, _ = build_datasets(config(path, images, "data.check_files=false"))  # found only when loaded
    with pytest.raises(DataError, match="missing.png"):
        train_set[0]


def test_eval_cli_allows_outside_paths_only_when_asked(tmp_path, capsys):
    path, images = dataset(tmp_path, "../outside.png")
    argv = ["--weights", str(tmp_path / "absent.safetensors"), "--data", str(path), "--images", str(images),
            "--device", "cpu"]
    assert eval_main(argv) == 2
    err = capsys.readouterr().err
    assert "../outside.png" in err and "allow_outside_image_dir" in err
    assert eval_main(argv + ["--allow-outside-image-dir"]) == 2  # past the data, stopped by the weights
    err = capsys.readouterr().err
    assert "absent.safetensors" in err and "outside.png" not in err
