"""Fixtures of the ONNX tests: small models exported once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# conftest is imported before pytest puts this folder on sys.path for the test modules
sys.path.insert(0, str(Path(__file__).parent))
from export_helpers import CATEGORY_IDS, make_small_model
from testing_utils import need_export


def _need_onnx():
    for name in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(name, reason='the ONNX extra is not installed: pip install -e ".[onnx]"')


@pytest.fixture(scope="session")
def small_model():
    return make_small_model("v1")


@pytest.fixture(scope="session")
def small_onnx(small_model, tmp_path_factory):
    """small_model exported with paste: the graph has both mask outputs."""
    _need_onnx()
    need_export()
    from maskrcnn.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "small_v1.onnx"
    return export_onnx(small_model, path, paste=True, category_ids=CATEGORY_IDS)


@pytest.fixture(scope="session")
def small_ort(small_onnx):
    from maskrcnn.export import OnnxModel

    return OnnxModel(small_onnx, threads=2)
