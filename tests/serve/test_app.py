"""The HTTP API under FastAPI's test client: every endpoint, every option, every bad input.

Answers are checked against the Predictor itself (the same image through `predict`), so the
JSON and PNG formats are shown to carry exactly its boxes, scores, labels, names and masks.
"""
from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from inference_helpers import make_image
from serve_helpers import encode, make_client

from maskrcnn import build_preset
from maskrcnn.inference import Predictor
from maskrcnn.inference.outputs import rle_to_mask
from maskrcnn.serve import ServeSettings, create_app


class GatedPredictor(Predictor):
    """The tiny model, with a gate its inference waits on and a switch that makes it fail."""

    def __init__(self, model):
        super().__init__(model)
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()
        self.fail = False

    def predict_tensors(self, images, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(20)
        if self.fail:
            raise RuntimeError("simulated inference failure")
        return super().predict_tensors(images, *args, **kwargs)


@pytest.fixture
def gated(tiny_predictor):
    return GatedPredictor(tiny_predictor.model)


def check_same_as_predictor(answer: dict, predictor, image: np.ndarray, score=0.5, mask=0.5):
    [expected] = predictor.predict(image, score_threshold=score, mask_threshold=mask)
    assert len(expected) > 3  # the tiny model's spread heads give several detections
    dets = answer["detections"]
    assert [d["box"] for d in dets] == expected.boxes.tolist()
    assert [d["score"] for d in dets] == expected.scores.tolist()
    assert [d["label"] for d in dets] == expected.labels.tolist()
    assert [d["class_name"] for d in dets] == expected.class_names
    for d, m in zip(dets, expected.masks):
        assert np.array_equal(rle_to_mask(d["mask"]), m.numpy())
    assert answer["image"]["height"], answer["image"]["width"] == image.shape[:2]
    assert (answer["score_threshold"], answer["mask_threshold"]) == (score, mask)


# --- answers --------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", None])
def test_raw_body_json_is_the_predictors_result(client, tiny_predictor, content_type):
    image = make_image(0)
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/predict", content=encode(image), headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    check_same_as_predictor(answer, tiny_predictor, image)
    assert answer["model"] == "tiny" and answer["image"]["name"] == "upload"
    assert set(answer["timing_ms"]) == {"decode", "queue", "inference", "encode", "total"}
    assert answer["timing_ms"]["total"] >= answer["timing_ms"]["inference"] > 0
    assert answer["batch_size"] == 1


def test_multipart_with_form_options_overriding_the_query(client, tiny_predictor):
    image = make_image(1)
    response = client.post("/v1/predict?score_threshold=0.9&mask_threshold=0.3",
                           files={"image": ("photo.png", encode(image), "image/png")},
                           data={"score_threshold": "0.6"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["image"]["name"] == "photo.png"
    check_same_as_predictor(answer, tiny_predictor, image, score=0.6, mask=0.3)


def test_multipart_field_named_file_and_a_jpeg(client, tiny_predictor):
    jpeg = encode(make_image(2), "JPEG", quality=95)
    response = client.post("/v1/predict", files={"file": ("x.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    decoded = np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    check_same_as_predictor(response.json(), tiny_predictor, decoded)


def test_png_format_is_the_results_overlay(client, tiny_predictor):
    image = make_image(0)
    response = client.post("/v1/predict?format=png&score_threshold=0.6", content=encode(image))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    [expected] = tiny_predictor.predict(image, score_threshold=0.6)
    assert response.headers["x-detections"] == str(len(expected))
    overlay = np.array(Image.open(io.BytesIO(response.content)))
    assert np.array_equal(overlay, np.array(expected.draw()))


def test_batched_jobs_with_different_options_get_their_own_results(client, tiny_predictor):
    """run_batch groups a batch by thresholds; each job's result is the one it gets alone."""
    from maskrcnn.io import load_image

    service = client.app.state.service
    a, b = load_image(make_image(0)), load_image(make_image(1, 64, 80))
    jobs = [(a, 0.5, 0.5), (b, 0.5, 0.5), (a, 0.7, 0.5), (a, 0.5, 0.8)]
    for (image, score, mask), got in zip(jobs, service.run_batch(jobs)):
        [alone] = tiny_predictor.predict_tensors([image], None, score, mask)
        assert got.scores.tolist() == alone.scores.tolist() and got.boxes.tolist() == alone.boxes.tolist()
        assert bool((got.masks == alone.masks).all())


def test_model_health_ready_schema_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True}
    info = client.get("/v1/model").json()
    assert info["class_names"] == ["circle", "square", "triangle"]
    assert info["label_names"][0] == "__background__" and info["num_classes"] == 4
    assert info["defaults"] == {"score_threshold": 0.5, "mask_threshold": 0.5}
    assert info["input"] == {"min_size": [128], "max_size": 256, "size_divisible": 32}
    assert info["limits"]["max_upload_bytes"] == 20 * 2**20 and info["batching"]["max_batch_size"] == 4
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])
    predict = schema["paths"]["/v1/predict"]["post"]
    assert {p["name"] for p in predict["parameters"]} == {"score_threshold", "mask_threshold", "format"}
    assert {"multipart/form-data", "image/png", "image/jpeg"} <= set(predict["requestBody"]["content"])
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "/static/app.js" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "/v1/predict" in script.text


def test_readyz_is_503_until_the_model_is_warm(tiny_predictor):
    from fastapi.testclient import TestClient

    app = create_app(tiny_predictor)
    cold = TestClient(app)  # not entered: the lifespan (batcher, warm-up) has not run
    assert cold.get("/healthz").status_code == 200
    assert cold.get("/readyz").status_code == 503


def test_a_failed_warm_up_keeps_readyz_503_and_healthz_200(gated):
    gated.fail = True
    with make_client(gated) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "simulated inference failure" in ready.json()["error"]
        assert c.get("/healthz").status_code == 200


# --- bad options: 422 ------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "score_threshold=2", "score_threshold=-0.1", "score_threshold=abc", "score_threshold=nan",
    "mask_threshold=inf", "mask_threshold=1.5", "format=gif", "score_thresh=0.3",
])
def test_bad_query_options_are_422(client, png_bytes, query):
    response = client.post(f"/v1/predict?{query}", content=png_bytes)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][0] == "query" and error["loc"][-1] == query.split("=")[0]


def test_bad_form_option_is_422_naming_the_field(client, png_bytes):
    response = client.post("/v1/predict", files={"image": ("a.png", png_bytes, "image/png")},
                           data={"format": "bmp"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "format"]


# --- bad uploads: 400 and 413 -----------------------------------------------------------------


def png_with_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height: it cannot be decoded, so refusing it
    with 413 shows the size was read from the header, before decoding."""
    data = bytearray(encode(np.zeros((1, 1, 3), np.uint8)))
    # IHDR's data sits at bytes 16..29 (after the signature, length and type); its CRC follows
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("body, message", [
    (b"", "empty upload (0 bytes)"),
    (b"just some text, not a picture", "not an image file"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot read image"),
    (encode(make_image(0))[:900], "corrupt or truncated"),
    (encode(make_image(0), "JPEG")[:700], "corrupt or truncated"),
])
def test_unreadable_uploads_are_400_saying_why(client, body, message):
    response = client.post("/v1/predict", content=body, headers={"Content-Type": "image/png"})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_too_many_pixels_is_413_from_the_header(tiny_predictor):
    with make_client(tiny_predictor, max_pixels=10_000) as c:
        response = c.post("/v1/predict", content=encode(np.zeros((200, 200, 3), np.uint8)))
        assert response.status_code == 413
        assert "200x200 = 40000 pixels, above the limit of 10000" in response.json()["detail"]
        response = c.post("/v1/predict", content=png_with_size(5_000, 5_000))
        assert response.status_code == 413 and "above the limit" in response.json()["detail"]
        # Pillow's own decompression-bomb check (2 x MAX_IMAGE_PIXELS) is a 413 too
        response = c.post("/v1/predict", content=png_with_size(100_000, 100_000))
        assert response.status_code == 413 and "decompression-bomb" in response.json()["detail"]


@pytest.mark.parametrize("files, data, message", [
    (None, {"format": "json"}, "no file field"),
    ({"a": ("a.png", b"1", "image/png"), "b": ("b.png", b"2", "image/png")}, None, "file fields ['a', 'b']"),
])
def test_multipart_without_an_image_field_is_400(client, files, data, message):
    if files is None:  # a form with text fields only: force multipart encoding
        response = client.post("/v1/predict", data=data, files={"x": (None, "y")})
        message = "no file field"
    else:
        response = client.post("/v1/predict", files=files)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_malformed_multipart_is_400(client):
    response = client.post("/v1/predict", content=b"--zzz\r\nContent-Disposition: form-da",
                           headers={"Content-Type": "multipart/form-data; boundary=zzz"})
    assert response.status_code == 400, response.text
    assert "multipart" in response.json()["detail"]


async def asgi_post(app, headers: dict, chunk: bytes, chunks: int, disconnect: bool = False):
    """POST /v1/predict straight to the ASGI app, the body as `chunks` pieces of `chunk`;
    returns (status, body, pieces the app pulled)."""
    pulled = 0

    async def receive():
        nonlocal pulled
        if pulled < chunks:
            pulled += 1
            return {"type": "http.request", "body": chunk, "more_body": disconnect or pulled < chunks}
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # a client that sent everything and waits

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), pulled


def test_upload_bytes_limit_is_413_without_reading_the_whole_body(tiny_predictor):
    limit = 1_000_000
    app = create_app(tiny_predictor, settings=ServeSettings(max_upload_bytes=limit))
    chunk = b"\x00" * 65536
    # declared too big: refused before a byte is read
    status, body, pulled = asyncio.run(asgi_post(app, {"content-length": str(50 * limit)}, chunk, 800))
    assert (status, pulled) == (413, 0)
    assert f"upload is {50 * limit} bytes, above the limit of {limit} bytes" in json.loads(body)["detail"]
    # no length (chunked), 50 MB coming: refused once the count passes the limit
    status, body, pulled = asyncio.run(asgi_post(app, {}, chunk, 800))
    assert status == 413 and pulled == limit // len(chunk) + 1
    assert f"more than {limit} bytes" in json.loads(body)["detail"]
    # a client that goes away mid-upload
    status, body, _ = asyncio.run(asgi_post(app, {}, chunk, 3, disconnect=True))
    assert status == 400 and "client disconnected" in json.loads(body)["detail"]
    # a Content-Length that is not a number
    status, body, _ = asyncio.run(asgi_post(app, {"content-length": "lots"}, chunk, 1))
    assert status == 400 and "is not a number" in json.loads(body)["detail"]


def test_upload_bytes_limit_through_the_client(tiny_predictor):
    with make_client(tiny_predictor, max_upload_bytes=1000) as c:
        response = c.post("/v1/predict", content=encode(make_image(0)))
        assert response.status_code == 413 and "above the limit of 1000 bytes" in response.json()["detail"]


# --- load shedding, time limit, failures ----------------------------------------------------


def test_full_queue_is_503_and_healthz_still_answers(gated, png_bytes):
    with make_client(gated, queue_size=1) as c:
        gated.gate.clear()
        gated.entered.clear()
        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(r=c.post("/v1/predict", content=png_bytes)))
        worker.start()
        try:
            assert gated.entered.wait(10)  # the first request is inside the model
            busy = c.post("/v1/predict", content=png_bytes)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert "1 requests in progress (queue size 1)" in busy.json()["detail"]
            assert c.get("/healthz").status_code == 200  # the event loop is free during inference
        finally:
            gated.gate.set()
            worker.join(20)
        assert first["r"].status_code == 200
        assert c.post("/v1/predict", content=png_bytes).status_code == 200  # the slot came back


def test_slow_request_is_504_and_the_server_carries_on(gated, png_bytes):
    with make_client(gated, timeout_s=0.5) as c:
        gated.gate.clear()
        try:
            response = c.post("/v1/predict", content=png_bytes)
            assert response.status_code == 504
            assert "longer than the time limit of 0.5 s" in response.json()["detail"]
            assert c.get("/healthz").status_code == 200
        finally:
            gated.gate.set()
        assert c.post("/v1/predict", content=png_bytes).status_code == 200


def test_inference_failure_is_500_for_that_request_only(gated, png_bytes):
    with make_client(gated) as c:
        gated.fail = True
        response = c.post("/v1/predict", content=png_bytes)
        assert response.status_code == 500
        assert "simulated inference failure" in response.json()["detail"]
        gated.fail = False
        assert c.post("/v1/predict", content=png_bytes).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="score_threshold"):
        ServeSettings(score_threshold=1.5)
    with pytest.raises(ValueError, match="queue_size"):
        ServeSettings(queue_size=0)
    with pytest.raises(ValueError, match="timeout_s"):
        ServeSettings(timeout_s=0)


def test_a_keypoint_model_answers_with_its_keypoints():
    """A Keypoint R-CNN's answer carries each detection's [x, y, score] per keypoint, the
    Predictor's own keypoints and keypoint scores."""
    torch.manual_seed(0)
    model = build_preset("maskrcnn_resnet18_small", num_classes=2, class_names=["square"], mask_on=False,
                         num_keypoints=3, keypoint_head_channels=16, min_size=128, max_size=128,
                         rpn_post_nms_top_n_test=50, box_detections_per_img=5)
    with torch.no_grad():  # untrained heads score every box ~1/K: lift the one class above 0.5
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 3.0]))
    predictor = Predictor(model.eval())
    image = make_image(0)
    with make_client(predictor) as keypoint_client:
        response = keypoint_client.post("/v1/predict", content=encode(image))
    assert response.status_code == 200, response.text
    dets = response.json()["detections"]
    [expected] = predictor.predict(image, score_threshold=0.5, mask_threshold=0.5)
    assert len(dets) == len(expected) > 0
    for d, kp, ks in zip(dets, expected.keypoints.tolist(), expected.keypoint_scores.tolist()):
        assert d["mask"] is None
        assert d["keypoints"] == [[x, y, s] for (x, y, _), s in zip(kp, ks)]
