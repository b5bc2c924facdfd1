"""Fixtures of the serve tests: tiny models, their apps under FastAPI's test client, images."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# conftest is imported before pytest puts these folders on sys.path for the test modules
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "inference"))
from inference_helpers import make_image, make_tiny_model  # noqa: E402
from serve_helpers import encode, make_client, make_load_model, running_server, saved_model  # noqa: E402

from maskrcnn.inference import Predictor  # noqa: E402


@pytest.fixture(scope="session")
def tiny_predictor():
    return Predictor(make_tiny_model())


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    return saved_model(make_tiny_model(), tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="session")
def load_weights(tmp_path_factory):
    return saved_model(make_load_model(), tmp_path_factory.mktemp("serve_load_model"))


@pytest.fixture(scope="session")
def png_bytes():
    return encode(make_image(0))


@pytest.fixture(scope="module")
def client(tiny_predictor):
    with make_client(tiny_predictor) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_server(tiny_weights):
    """`maskrcnn serve` of the tiny model in a subprocess, shared by the browser test and the
    schema fuzz: (base URL, Popen)."""
    with running_server(tiny_weights, "--timeout", "20") as (url, process):
        yield url, process
