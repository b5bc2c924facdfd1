"""The exported graph against the eager model: sizes other than the traced ones, portrait and
landscape, a blank image, a batch of two sizes, the score threshold input; the checker, the
metadata and the float64 resize arithmetic."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from maskrcnn.modeling.transform import ImageTransform, resized_size
from maskrcnn.ops import paste_masks

from export_helpers import CATEGORY_IDS, CLASS_NAMES, MASK_ATOL, assert_same_detections, make_image

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

THRESHOLD = 0.3
# (height, width): landscape, portrait, square, odd sizes, an aspect limited by max_size, and
# images below and above the model's min_size (128)
SIZES = [(96, 128), (128, 96), (150, 233), (240, 100), (64, 250), (301, 299), (57, 143)]


def eager(model, images, threshold=THRESHOLD, paste=True):
    with torch.no_grad():
        return model(images, score_thresh=threshold, paste_masks=paste).detections


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_same_detections_as_eager(small_model, small_ort, size):
    image = make_image(sum(size), *size)
    [ref] = eager(small_model, [image])
    assert len(ref) > 0  # the comparison below must have something to compare
    [det] = small_ort([image], score_thresh=THRESHOLD).detections  # masks pasted by the graph
    assert_same_detections(ref, det)
    # the 28x28 probabilities, and the runtime's paste of them
    [ref28] = eager(small_model, [image], paste=False)
    [det28] = small_ort([image], score_thresh=THRESHOLD, paste_masks=False).detections
    assert det28.masks.shape[1:] == (28, 28)
    assert_same_detections(ref28, det28)
    pasted = paste_masks(det28.masks, det28.boxes, size)
    assert (pasted - det.masks).abs().max() <= MASK_ATOL


def test_blank_image_gives_no_detections(small_model, small_ort):
    blank = torch.zeros(3, 100, 140)
    [ref] = eager(small_model, [blank], threshold=0.9)
    assert len(ref) == 0
    out = small_ort.run([blank], score_thresh=0.9)
    assert out["boxes"].shape == (0, 4) and out["mask_probs"].shape == (0, 28, 28)
    assert out["masks"].shape == (0, 100, 140)
    [det] = small_ort([blank], score_thresh=0.9).detections
    assert len(det) == 0 and det.masks.shape == (0, 100, 140)


def test_batch_of_two_sizes(small_model, small_ort):
    images = [make_image(7, 96, 128), make_image(8, 140, 90)]
    refs = eager(small_model, images)
    dets = small_ort(images, score_thresh=THRESHOLD).detections
    assert len(dets) == 2
    for ref, det in zip(refs, dets):
        assert_same_detections(ref, det)
    # each pasted mask is zero outside its own image in the padded frame
    out = small_ort.run(images, score_thresh=THRESHOLD)
    second = out["image_index"] == 1
    assert second.any() and not out["masks"][second][:, :, 90:].any()


def test_score_threshold_is_an_input(small_model, small_ort):
    image = make_image(3, 110, 150)
    for threshold in (0.05, 0.6):
        [ref] = eager(small_model, [image], threshold=threshold)
        [det] = small_ort([image], score_thresh=threshold).detections
        assert_same_detections(ref, det)
    # without one, the graph's default (the model's box_score_thresh)
    [ref] = eager(small_model, [image], threshold=None)
    feeds = {"images": image[None].numpy(), "image_sizes": np.array([[110, 150]])}
    boxes = small_ort.session.run(["boxes"], feeds)[0]
    assert boxes.shape[0] == len(ref)


def test_checker_and_the_graph_interface(small_onnx):
    model = onnx.load(small_onnx)
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert inputs["images"] == ["batch", 3, "height", "width"]
    assert inputs["image_sizes"] == ["batch", 2]
    assert "score_threshold" in inputs and "score_threshold" in {t.name for t in model.graph.initializer}
    outputs = [o.name for o in model.graph.output]
    assert outputs == ["boxes", "scores", "labels", "image_index", "mask_probs", "masks"]
    ops = {n.op_type for n in model.graph.node}
    assert {"Loop", "NonMaxSuppression", "RoiAlign"} <= ops


def test_metadata(small_onnx, small_model):
    meta = {p.key: p.value for p in onnx.load(small_onnx, load_external_data=False).metadata_props}
    assert meta["maskrcnn.format"] == "maskrcnn-onnx"
    assert json.loads(meta["class_names"]) == CLASS_NAMES
    assert json.loads(meta["category_ids"]) == {str(k): v for k, v in CATEGORY_IDS.items()}
    assert float(meta["box_score_thresh"]) == small_model.config.box_score_thresh
    assert float(meta["box_nms_thresh"]) == small_model.config.box_nms_thresh
    assert int(meta["min_size"]) == 128 and int(meta["max_size"]) == 256
    assert "RGB in [0, 1]" in meta["input_convention"] and json.loads(meta["paste"]) is True
    assert json.loads(meta["config"])["depth"] == 18


# The resize -----------------------------------------------------------------------------------

# Sizes whose resize must come out as the eager (double precision) arithmetic says; float32
# arithmetic gets such sizes wrong (333x500 -> 799x1201 with a float32 scale).
FLOAT64_SIZES = {(375, 500): (800, 1066), (427, 640): (800, 1199), (333, 500): (800, 1201)}


def _float32_scale_size(h: int, w: int, min_size: float, max_size: float) -> tuple[int, int]:
    """torchvision's traced transform: the scale in float32, then floor(side * scale)."""
    scale = float(min(np.float32(min_size) / np.float32(min(h, w)), np.float32(max_size) / np.float32(max(h, w))))
    return math.floor(h * scale), math.floor(w * scale)


def _preprocess_model(transform: ImageTransform, sizes_only: bool = False):
    from onnx import TensorProto, helper

    from maskrcnn.export.onnx import OPSET
    from maskrcnn.export.preprocess import preprocess_nodes

    nodes = preprocess_nodes(transform, images="images", image_sizes="image_sizes", batch="batch",
                             resized_sizes="resized_sizes")
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, "h", "w"]),
              helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["n", 2])]
    outputs = [helper.make_tensor_value_info("resized_sizes", TensorProto.INT64, ["n", 2])]
    if sizes_only:  # the size arithmetic alone: the nodes up to resized_sizes
        last = next(i for i, node in enumerate(nodes) if "resized_sizes" in node.output)
        nodes, inputs = nodes[: last + 1], inputs[1:]
    else:
        outputs.insert(0, helper.make_tensor_value_info("batch", TensorProto.FLOAT, ["n", 3, "hp", "wp"]))
    model = helper.make_model(helper.make_graph(nodes, "preprocess", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run_preprocess(session, images):
    height = max(i.shape[1] for i in images)
    width = max(i.shape[2] for i in images)
    batch = np.zeros((len(images), 3, height, width), np.float32)
    for img, slot in zip(images, batch):
        slot[:, : img.shape[1], : img.shape[2]] = img.numpy()
    sizes = np.array([list(i.shape[1:]) for i in images], np.int64)
    return session.run(None, {"images": batch, "image_sizes": sizes})


def test_graph_resize_sizes_are_the_eager_float64_ones():
    session = _preprocess_model(ImageTransform(min_size=800, max_size=1333))
    for (h, w), expected in FLOAT64_SIZES.items():
        assert resized_size(h, w, 800, 1333) == expected
        batch, resized = _run_preprocess(session, [torch.zeros(3, h, w)])
        assert tuple(resized[0]) == expected
        assert batch.shape == (1, 3, 800, math.ceil(expected[1] / 32) * 32)
    assert _float32_scale_size(333, 500, 800, 1333) == (799, 1201)
    # a sweep of sizes through the graph's size arithmetic alone
    sizes = [(h, w) for h in range(2, 2000, 13) for w in range(2, 2000, 17)]
    sizes = np.array(sizes + [(2, 5000), (1, 3000), (7000, 3)], np.int64)  # strips: at least 1 pixel
    sizes_only = _preprocess_model(ImageTransform(min_size=800, max_size=1333), sizes_only=True)
    [resized] = sizes_only.run(None, {"image_sizes": sizes})
    eager_sizes = [resized_size(int(h), int(w), 800, 1333) for h, w in sizes]
    assert [tuple(r) for r in resized.tolist()] == eager_sizes
    float32_wrong = sum(_float32_scale_size(int(h), int(w), 800, 1333) != e for (h, w), e in zip(sizes, eager_sizes))
    assert float32_wrong > 100  # the sweep does tell the two arithmetics apart


def test_graph_preprocess_matches_the_eager_transform():
    """Normalize + bilinear resize + pad of a batch of three sizes (up- and downsampled, one
    limited by max_size) against ImageTransform.

    Not bit for bit: ONNX Runtime's Resize finds source pixels at (x + 0.5) / (out / in) - 0.5,
    torch at (x + 0.5) * (in / out) - 0.5, one float32 rounding of the coordinate apart; a value
    moves by that much times the local gradient, which uniform noise makes as steep as it gets."""
    transform = ImageTransform(min_size=200, max_size=333)
    session = _preprocess_model(transform)
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=gen) for h, w in [(150, 201), (420, 380), (90, 400)]]
    batch, resized = _run_preprocess(session, images)
    expected = transform(images)[0]
    assert [tuple(s) for s in resized] == expected.image_sizes
    assert batch.shape == tuple(expected.tensor.shape)
    difference = np.abs(batch - expected.tensor.numpy())
    assert difference.max() < 5e-4 and difference.mean() < 1e-5
