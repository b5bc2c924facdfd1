"""`export_onnx(model, "model.onnx")`: the whole inference of a Mask R-CNN in one ONNX graph.

    images         float32 (N, 3, H, W), RGB in [0, 1]; a batch of different sizes is zero-padded
                   at the bottom / right to the largest (the padding is never read)
    image_sizes    int64 (N, 2): (height, width) of each image
    score_threshold  float32 scalar, optional (default: the model's box_score_thresh); boxes
                   scoring above it are kept, before the box NMS and the mask branch
 -> boxes          float32 (D, 4) x1 y1 x2 y2 in each image's own pixels
    scores         float32 (D,), labels int64 (D,) (1..K-1), image_index int64 (D,) (0..N-1)
    mask_probs     float32 (D, 28, 28): each box's mask probabilities (paste with
                   maskrcnn.export.paste_masks, or `maskrcnn.ops.paste_masks`)
    masks          float32 (D, H, W): only when exported with paste=True, the same pasted at the
                   input's size (zero outside each detection's own image)

Detections come ordered by image, then by descending score. The graph: normalize, resize and
pad (`preprocess.py`, a Loop over images, sizes in float64), backbone + FPN, RPN with NMS, box
head with per-class NMS, mask head (`graph.py`); class names, COCO category ids, thresholds,
the model config and this input convention are in the model's metadata_props.

Exporter: the dynamo-based torch.onnx.export (torch.export + onnxscript), with dynamic batch,
height and width. It captures data-dependent sizes (NMS results, detections) as unbacked
symbols, and our two custom ops become single NonMaxSuppression / RoiAlign nodes through its
custom_translation_table. The classic TorchScript exporter would need the model's control flow
scripted, and its tracer fixes Python loops and sizes to the traced example.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..modeling.mask_rcnn import MaskRCNN
from ..modeling.transform import resized_size

FORMAT = "maskrcnn-onnx"
VERSION = 1
OPSET = 18
INPUTS = ("images", "image_sizes", "score_threshold")
OUTPUTS = ("boxes", "scores", "labels", "image_index", "mask_probs")
INPUT_CONVENTION = (
    "images: float32 (N, 3, H, W) RGB in [0, 1], zero-padded bottom/right to the largest image; "
    "image_sizes: int64 (N, 2) (height, width) of each image; score_threshold: optional float32 "
    "scalar (default box_score_thresh). Normalization and resizing happen inside the graph."
)
OUTPUT_CONVENTION = (
    "boxes float32 (D, 4) xyxy in original pixels, scores float32 (D,), labels int64 (D,), "
    "image_index int64 (D,), mask_probs float32 (D, 28, 28); with paste: masks float32 (D, H, W) "
    "in the input frame. Ordered by image, then by descending score."
)


# The exporter used here, torch.onnx.export(dynamo=True, custom_translation_table=...), is torch
# 2.6's; the rest of the package keeps to torch 2.4 (pyproject's floor).
EXPORT_NEEDS_TORCH = (2, 6)


def export_unsupported_reason() -> str | None:
    """Why this PyTorch cannot export, in words (None when it can)."""
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < EXPORT_NEEDS_TORCH:
        return (f"ONNX export needs torch >= {'.'.join(map(str, EXPORT_NEEDS_TORCH))} (this is {torch.__version__}); "
                "running an exported graph needs only onnxruntime")
    return None


def _require_onnx():
    # torch first: installing the extra would not help an older torch
    reason = export_unsupported_reason()
    if reason is not None:
        raise RuntimeError(reason)
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript ({e.name} is missing): pip install -e \".[onnx]\" "
            "(or pip install onnx onnxruntime onnxscript)"
        ) from None


def _example_inputs(model: MaskRCNN) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Two images of different sizes and aspects: nothing about them may be specialized."""
    t = model.transform
    s, m = t.min_size[-1], t.max_size
    sizes = [(max(3 * s // 4 + 5, 3), min(s + 37, m)), (min(s + 11, m), max(2 * s // 3 - 7, 3))]
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=gen) for h, w in sizes]
    for h, w in sizes:
        if min(resized_size(h, w, s, m)) < 2:
            raise ValueError(f"cannot make example images for min_size={s}, max_size={m}")
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    frame = torch.zeros(len(images), 3, height, width)
    for img, slot in zip(images, frame):
        slot[:, : img.shape[1], : img.shape[2]] = img
    return images, frame


# ModelConfig options that the graph does not implement (Detectron2's arithmetic): an export
# would silently compute torchvision's instead.
_NOT_EXPORTED = ("input_format", "pixel_scale", "resize", "anchor_round", "anchor_offset", "rpn_min_size",
                 "rpn_rank_by_logits", "roi_level_eps", "roi_level_eps_in_log", "box_min_size",
                 "background_last", "first_label", "clip_output_boxes", "mask_paste",
                 "architecture")  # the graph is the FPN model's; C4 has another RoI head


def _refuse_detectron2_options(model: MaskRCNN) -> None:
    from ..modeling.build import ModelConfig

    config = getattr(model, "config", None)
    if config is None:
        return
    default = ModelConfig()
    changed = [f"{k}={getattr(config, k)!r}" for k in _NOT_EXPORTED if getattr(config, k) != getattr(default, k)]
    if changed:
        raise NotImplementedError(f"ONNX export does not implement these options (Detectron2's arithmetic, the C4 model) yet: "
                                  f"{', '.join(changed)}")


def export_onnx(
    model: MaskRCNN,
    path: str | os.PathLike,
    *,
    paste: bool = False,
    class_names: Sequence[str] | None = None,
    category_ids: Mapping[int, int] | Sequence[int] | None = None,
    check: bool = True,
    verbose: bool = False,
) -> Path:
    """Write `model` as one ONNX graph to `path` (see the module docstring for its inputs and
    outputs). paste: also output masks pasted at the input size (else 28x28 probabilities
    only). class_names / category_ids go into the metadata (default: the model's names;
    labels as COCO ids). check: run onnx.checker on the result. Returns the path."""
    _require_onnx()
    import onnx
    from torch.export import Dim

    from .graph import InferenceGraph
    from .ops import onnx_translations

    _refuse_detectron2_options(model)
    # A CPU copy in eval mode: the caller's model keeps its device and mode.
    model = copy.deepcopy(model).cpu().eval()
    graph = InferenceGraph(model, paste=paste).eval()
    images, frame = _example_inputs(model)
    with torch.no_grad():
        batch, _ = model.preprocess(images)
    resized = torch.tensor(batch.image_sizes, dtype=torch.int64)
    original = torch.tensor([list(img.shape[-2:]) for img in images], dtype=torch.int64)
    threshold = torch.tensor(model.roi_heads.score_thresh, dtype=torch.float32)

    d = model.transform.size_divisible
    n = Dim("batch", min=1, max=1024)
    hp, wp = Dim("padded_height_blocks", min=1, max=4096), Dim("padded_width_blocks", min=1, max=4096)
    args = (batch.tensor, resized, original, threshold)
    dynamic_shapes = [{0: n, 2: d * hp, 3: d * wp}, {0: n}, {0: n}, {}]
    names = ["batch", "resized_sizes", "original_sizes", "score_threshold"]
    if paste:
        args += (frame,)
        dynamic_shapes.append({0: n, 2: Dim("height", min=1, max=1 << 16), 3: Dim("width", min=1, max=1 << 16)})
        names.append("frame")
    output_names = list(OUTPUTS) + (["masks"] if paste else [])
    with torch.no_grad(), warnings.catch_warnings(), _quiet_loggers():
        # torch's own deprecation noise, and a note that two inputs share the batch axis
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        program = torch.onnx.export(
            graph, args, dynamo=True, dynamic_shapes=tuple(dynamic_shapes), opset_version=OPSET,
            input_names=names, output_names=output_names, custom_translation_table=onnx_translations(),
            optimize=True, verbose=verbose,
        )
    proto = program.model_proto
    proto = _with_preprocess(proto, model, paste)
    names_ = list(class_names) if class_names is not None else (
        list(model.class_names) if model.class_names is not None else None)
    _set_metadata(proto, model, paste, names_, category_ids)
    if check:
        onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..io import atomic_write

    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    return path


# Loggers that warn about things that are fine here: torchvision ops we never use, and empty
# attribute lists the exporter writes as INTS (which they are).
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnx_ir._convenience")


@contextlib.contextmanager
def _quiet_loggers():
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _with_preprocess(proto, model: MaskRCNN, paste: bool):
    """Put the input transform in front of the traced network: graph inputs become images,
    image_sizes (and score_threshold, now with a default)."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    from .preprocess import preprocess_nodes

    g = proto.graph
    traced_inputs = {i.name for i in g.input}
    nodes = preprocess_nodes(model.transform, images="images", image_sizes="image_sizes",
                             batch="batch", resized_sizes="resized_sizes")
    nodes.append(helper.make_node("Identity", ["image_sizes"], ["original_sizes"], name="preprocess/original_sizes"))
    if paste:
        nodes.append(helper.make_node("Identity", ["images"], ["frame"], name="preprocess/frame"))
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    kept = [i for i in g.input if i.name == "score_threshold"]
    del g.input[:]
    g.input.extend([
        helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"]),
        helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["batch", 2]),
        *kept,
    ])
    # an input that is also an initializer is optional, with the initializer as its default
    g.initializer.append(numpy_helper.from_array(
        np.array(model.roi_heads.score_thresh, dtype=np.float32), "score_threshold"))
    assert {"batch", "resized_sizes", "original_sizes", "score_threshold"} <= traced_inputs | {"frame"}
    for output in g.output:  # name the traced symbols (u6, s32...) after what they are
        dims = output.type.tensor_type.shape.dim
        dims[0].dim_param = "detections"
        if output.name == "masks":
            dims[1].dim_param, dims[2].dim_param = "height", "width"
    # the traced network's input shapes are internal values now
    internal = {"batch", "resized_sizes", "original_sizes", "frame"}
    for i in reversed(range(len(g.value_info))):
        if g.value_info[i].name in internal:
            del g.value_info[i]
    return proto


def _set_metadata(proto, model: MaskRCNN, paste: bool, class_names, category_ids) -> None:
    config = model.config.to_dict() if hasattr(model, "config") else {}
    if class_names is not None:
        config["class_names"] = list(class_names)
    if isinstance(category_ids, Mapping):
        category_ids = {str(int(k)): int(v) for k, v in category_ids.items()}
    elif category_ids is not None:
        category_ids = [int(v) for v in category_ids]
    values = {
        "maskrcnn.format": FORMAT,
        "maskrcnn.version": str(VERSION),
        "class_names": json.dumps(class_names),
        "category_ids": json.dumps(category_ids),
        "num_classes": str(model.num_classes),
        "box_score_thresh": repr(float(model.roi_heads.score_thresh)),
        "box_nms_thresh": repr(float(model.roi_heads.nms_thresh)),
        "box_detections_per_img": str(model.roi_heads.detections_per_img),
        "rpn_nms_thresh": repr(float(model.rpn.nms_thresh)),
        "min_size": str(model.transform.min_size[-1]),
        "max_size": str(model.transform.max_size),
        "paste": json.dumps(bool(paste)),
        "input_convention": INPUT_CONVENTION,
        "output_convention": OUTPUT_CONVENTION,
        "config": json.dumps(config),
    }
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "Mask R-CNN (maskrcnn): " + INPUT_CONVENTION + " Outputs: " + OUTPUT_CONVENTION
    proto.producer_name = "maskrcnn"
