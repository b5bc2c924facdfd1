"""`maskrcnn serve` on an exported graph in ONNX Runtime: the same API, the graph's own
results. Slow (the export alone takes minutes on 2 shared cores): run with -m slow."""
from __future__ import annotations

import numpy as np
import pytest

from inference_helpers import make_image, make_tiny_model
from serve_helpers import encode, make_client
from testing_utils import need_export

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_serving_an_onnx_model_gives_its_results(tmp_path, tiny_predictor):
    import maskrcnn

    need_export()
    path = maskrcnn.export_onnx(make_tiny_model(), tmp_path / "model.onnx", paste=True)
    predictor = maskrcnn.load_model(path)
    image = make_image(0)
    with make_client(predictor) as client:
        answer = client.post("/v1/predict", content=encode(image)).json()
        assert client.get("/v1/model").json()["class_names"] == ["circle", "square", "triangle"]
    [expected] = predictor.predict(image)
    assert [d["score"] for d in answer["detections"]] == expected.scores.tolist()
    assert [d["class_name"] for d in answer["detections"]] == expected.class_names
    [eager] = tiny_predictor.predict(image)  # and the graph agrees with the eager model
    np.testing.assert_allclose([d["box"] for d in answer["detections"]], eager.boxes.numpy(), atol=1e-3)
