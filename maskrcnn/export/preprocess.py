"""The exported graph's input transform, as ONNX nodes: normalize, resize, pad (what
`ImageTransform` does), for a batch of images of different sizes.

Built by hand (onnx.helper), not traced: each image has its own resized size, which is data
(computed from `image_sizes`), so the per-image resize is an ONNX Loop over the batch. Neither
exporter makes that from Python: torch.export cannot loop over a dynamic batch, and tracing
would bake in one image size. The few nodes here are plain to read instead.

The resized size is computed in float64, exactly as `maskrcnn.modeling.transform.resized_size`
(Python floats, the arithmetic of torchvision's eager transform): scale = min(min_size / short,
max_size / long), size = max(1, floor(side * scale)). In float32 (what torchvision's own traced
transform uses) 375x500 would become 799x1066 instead of 800x1066.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..modeling.transform import ImageTransform

PREFIX = "preprocess/"


def _const(name: str, value, dtype) -> "onnx.NodeProto":  # noqa: F821
    return helper.make_node("Constant", [], [PREFIX + name],
                            value=numpy_helper.from_array(np.asarray(value, dtype=dtype), PREFIX + name))


def preprocess_nodes(transform: ImageTransform, *, images: str, image_sizes: str, batch: str,
                     resized_sizes: str) -> list:
    """Nodes that read graph values `images` (float32 (N, 3, H, W) in [0, 1], zero-padded when
    the images differ in size) and `image_sizes` (int64 (N, 2), each image's (h, w)) and write
    `batch` (float32 (N, 3, Hp, Wp), normalized, resized, padded to multiples of
    size_divisible) and `resized_sizes` (int64 (N, 2))."""
    p = PREFIX
    d = transform.size_divisible
    mean = transform.image_mean.reshape(3, 1, 1).numpy().astype(np.float32)
    std = transform.image_std.reshape(3, 1, 1).numpy().astype(np.float32)
    n = helper.make_node
    nodes = [
        _const("min_size", float(transform.min_size[-1]), np.float64),
        _const("max_size", float(transform.max_size), np.float64),
        _const("one_f64", 1.0, np.float64),
        _const("axis0", [0], np.int64),
        _const("axis1", [1], np.int64),
        _const("axes12", [1, 2], np.int64),
        _const("zeros2", [0, 0], np.int64),
        _const("zeros6", [0, 0, 0, 0, 0, 0], np.int64),
        _const("one_three", [1, 3], np.int64),
        _const("divisible_minus_1", d - 1, np.int64),
        _const("divisible", d, np.int64),
        _const("mean", mean, np.float32),
        _const("std", std, np.float32),
        # scale = min(min_size / short side, max_size / long side), in float64
        n("Cast", [image_sizes], [p + "sizes_f64"], to=TensorProto.DOUBLE),
        n("ReduceMin", [p + "sizes_f64", p + "axis1"], [p + "short"], keepdims=0),
        n("ReduceMax", [p + "sizes_f64", p + "axis1"], [p + "long"], keepdims=0),
        n("Div", [p + "min_size", p + "short"], [p + "scale_short"]),
        n("Div", [p + "max_size", p + "long"], [p + "scale_long"]),
        n("Min", [p + "scale_short", p + "scale_long"], [p + "scale"]),
        n("Unsqueeze", [p + "scale", p + "axis1"], [p + "scale_col"]),
        n("Mul", [p + "sizes_f64", p + "scale_col"], [p + "scaled"]),
        n("Floor", [p + "scaled"], [p + "floored"]),
        n("Max", [p + "floored", p + "one_f64"], [p + "at_least_1"]),  # never a 0-pixel side
        n("Cast", [p + "at_least_1"], [resized_sizes], to=TensorProto.INT64),
        # padded size: the largest resized size, rounded up to a multiple of size_divisible
        n("ReduceMax", [resized_sizes, p + "axis0"], [p + "max_hw"], keepdims=0),
        n("Add", [p + "max_hw", p + "divisible_minus_1"], [p + "max_hw_up"]),
        n("Div", [p + "max_hw_up", p + "divisible"], [p + "blocks"]),
        n("Mul", [p + "blocks", p + "divisible"], [p + "padded_hw"]),
        n("Shape", [images], [p + "images_shape"], start=0, end=1),
        n("Squeeze", [p + "images_shape"], [p + "num_images"]),
    ]
    # Loop body: image i -> crop to its size, normalize, resize, pad -> (3, Hp, Wp)
    b = lambda name: p + "body/" + name  # noqa: E731
    body_nodes = [
        n("Gather", [images, b("i")], [b("image")], axis=0),
        n("Gather", [image_sizes, b("i")], [b("size")], axis=0),
        n("Gather", [resized_sizes, b("i")], [b("new_size")], axis=0),
        n("Slice", [b("image"), p + "zeros2", b("size"), p + "axes12"], [b("crop")]),
        n("Sub", [b("crop"), p + "mean"], [b("centered")]),
        n("Div", [b("centered"), p + "std"], [b("normalized")]),
        n("Unsqueeze", [b("normalized"), p + "axis0"], [b("normalized_4d")]),
        n("Concat", [p + "one_three", b("new_size")], [b("sizes_4d")], axis=0),
        # torch's bilinear, align_corners=False: half_pixel coordinates, no antialiasing
        n("Resize", [b("normalized_4d"), "", "", b("sizes_4d")], [b("resized")], mode="linear",
          coordinate_transformation_mode="half_pixel"),
        n("Sub", [p + "padded_hw", b("new_size")], [b("pad_hw")]),
        n("Concat", [p + "zeros6", b("pad_hw")], [b("pads")], axis=0),
        n("Pad", [b("resized"), b("pads")], [b("padded")]),
        n("Squeeze", [b("padded"), p + "axis0"], [b("slot")]),
        n("Identity", [b("cond_in")], [b("cond_out")]),
    ]
    body = helper.make_graph(
        body_nodes, "preprocess_image",
        [helper.make_tensor_value_info(b("i"), TensorProto.INT64, []),
         helper.make_tensor_value_info(b("cond_in"), TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(b("cond_out"), TensorProto.BOOL, []),
         helper.make_tensor_value_info(b("slot"), TensorProto.FLOAT, [3, None, None])],
    )
    nodes.append(n("Loop", [p + "num_images", ""], [batch], body=body))
    return nodes
