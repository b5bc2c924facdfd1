"""Fixtures of the inference tests: a tiny saved model, its predictor, a folder of images."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from maskrcnn.checkpoint import save_model

# conftest is imported before pytest puts this folder on sys.path for the test modules
sys.path.insert(0, str(Path(__file__).parent))
from inference_helpers import make_image, make_tiny_model


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """Path of the tiny model saved as model.safetensors + model.json."""
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(make_tiny_model(), path)
    return path


@pytest.fixture(scope="session")
def tiny_predictor(tiny_weights):
    from maskrcnn.inference import load_model

    return load_model(tiny_weights)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    """Three 96x128 PNGs (one saved as grayscale) and one corrupt file."""
    folder = tmp_path_factory.mktemp("images")
    for i in range(3):
        Image.fromarray(make_image(i)).save(folder / f"img{i}.png")
    Image.fromarray(make_image(3)).convert("L").save(folder / "gray.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return folder
