"""Load Detectron2 Mask R-CNN checkpoints (R-50/R-101 FPN, R-50 C4) into our model, safely.

Two file kinds:
  - the model zoo's `.pkl` (e.g. model_final_f10217.pkl): a pickled dict of numpy arrays, usually
    {"model": {...}, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}. It is
    read by `read_detectron2_pickle`, a restricted unpickler that builds numpy arrays and plain
    containers only: any other global a pickle names (os.system, builtins.eval, a class) is
    refused before anything runs. `pickle.load` is never called.
  - Detectron2's own training checkpoints (`.pth`, {"model": ..., "optimizer": ..., ...}), read
    with `torch.load(weights_only=True)`.

The layers map one to one onto ours (the rename table `_RULES`); the computation differs, and
the `detectron2_mask_rcnn_R_*_FPN` presets set every option that reproduces Detectron2's.
"""
from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..modeling.build import DETECTRON2_OPTIONS, PRESETS, ModelConfig, build_model
from ..modeling.mask_rcnn import MaskRCNN
from .native import load_checked

__all__ = ["convert_detectron2_state_dict", "detectron2_key_to_ours", "from_detectron2", "infer_detectron2_config",
           "is_detectron2_state_dict", "read_detectron2_pickle", "UnsafePickleError"]

# (pattern, replacement) applied in order; the first that matches wins.
_RULES: list[tuple[str, object]] = [
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "backbone.body.bn1."),
    (r"^backbone\.bottom_up\.stem\.conv1\.", "backbone.body.conv1."),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.",
     lambda m: f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.1."),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.",
     lambda m: f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.0."),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.",
     lambda m: f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.bn{m.group(3)}."),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.",
     lambda m: f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.conv{m.group(3)}."),
    (r"^backbone\.fpn_lateral(\d)\.", lambda m: f"backbone.fpn.lateral.{int(m.group(1)) - 2}.conv."),
    (r"^backbone\.fpn_output(\d)\.", lambda m: f"backbone.fpn.output.{int(m.group(1)) - 2}.conv."),
    (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv.0.conv."),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.objectness."),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.fc(\d)\.", lambda m: f"roi_heads.box_head.fcs.{int(m.group(1)) - 1}."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d)\.", lambda m: f"roi_heads.mask_head.convs.{int(m.group(1)) - 1}.conv."),
    # C4 models: the ResNet is the backbone itself (no bottom_up), its res5 the RoI head
    (r"^backbone\.stem\.conv1\.norm\.", "backbone.body.bn1."),
    (r"^backbone\.stem\.conv1\.", "backbone.body.conv1."),
    (r"^backbone\.res(\d)\.(\d+)\.shortcut\.norm\.",
     lambda m: f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.1."),
    (r"^backbone\.res(\d)\.(\d+)\.shortcut\.",
     lambda m: f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.0."),
    (r"^backbone\.res(\d)\.(\d+)\.conv(\d)\.norm\.",
     lambda m: f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.bn{m.group(3)}."),
    (r"^backbone\.res(\d)\.(\d+)\.conv(\d)\.",
     lambda m: f"backbone.body.layer{int(m.group(1)) - 1}.{m.group(2)}.conv{m.group(3)}."),
    (r"^roi_heads\.res5\.(\d+)\.shortcut\.norm\.", r"roi_heads.res5.\1.downsample.1."),
    (r"^roi_heads\.res5\.(\d+)\.shortcut\.", r"roi_heads.res5.\1.downsample.0."),
    (r"^roi_heads\.res5\.(\d+)\.conv(\d)\.norm\.", r"roi_heads.res5.\1.bn\2."),
    # roi_heads.res5.N.convK, roi_heads.box_predictor.{cls_score,bbox_pred},
    # roi_heads.mask_head.{deconv,predictor}: same names
]

# Buffers that older Detectron2 versions saved and that carry nothing the model needs.
_IGNORED = re.compile(r"^(pixel_mean|pixel_std|proposal_generator\.anchor_generator\.cell_anchors\.\d+)$")
_NORM_PREFIX = re.compile(r"^((?:backbone\.bottom_up\.|backbone\.stem\.|backbone\.res\d|roi_heads\.res5\.).*\.norm\.)weight$")


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A .pkl names a global that a Detectron2 weights file never holds."""


# What a model zoo pickle is built from: numpy's array/dtype/scalar reconstruction (its module
# is numpy.core before numpy 2 and numpy._core after; old pickles encode bytes via
# _codecs.encode) and plain containers. Nothing here can run code or touch the system.
_ALLOWED_GLOBALS = {
    (core, name)
    for core in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "bytearray"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):
                module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 (no deprecation shim)
            try:
                return super().find_class(module, name)
            except ModuleNotFoundError:  # written by numpy 2 (numpy._core), read by numpy 1
                return super().find_class(module.replace("numpy._core.", "numpy.core.", 1), name)
        if module.startswith(("numpy.dtypes", "numpy._core.dtypes")) and name.endswith("DType"):
            return super().find_class(module, name)  # numpy 2's dtype classes (np.dtypes.Float32DType)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: a Detectron2 weights file holds numpy arrays and plain "
            "containers only, so this pickle could run code; nothing was executed"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a pickle with persistent ids (not a Detectron2 .pkl weights file)")


def read_detectron2_pickle(source: str | Path | bytes) -> dict:
    """The object in a Detectron2 .pkl file, built by the restricted unpickler: numpy arrays in
    dicts. Raises UnsafePickleError (naming the global) for anything else, before it runs."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as e:
        where = "" if isinstance(source, bytes) else f"{source}: "
        raise UnsafePickleError(f"{where}{e}") from None
    except Exception as e:  # truncated or not a pickle at all
        where = "data" if isinstance(source, bytes) else str(source)
        raise ValueError(f"could not read {where} as a Detectron2 .pkl weights file: {e}") from None


def pickle_state_dict(obj: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """{"model": {name: ndarray}} (or the bare dict) -> float tensors."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a dict of weights")
    state = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "fiub":
                raise ValueError(f"{source}: {key} is a {value.dtype} array, not numbers")
            value = torch.from_numpy(np.array(value, copy=True))
        elif isinstance(value, Tensor):
            pass
        else:
            raise ValueError(f"{source}: {key} is a {type(value).__name__}, not an array")
        state[str(key)] = value
    return state


def is_detectron2_state_dict(state: dict) -> bool:
    """Detectron2's names: backbone.bottom_up.*, proposal_generator.*."""
    return any(k.startswith(("backbone.bottom_up.", "proposal_generator.rpn_head.")) for k in state)


def convert_detectron2_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detectron2 key names -> ours; the FrozenBN statistics an old checkpoint lacks are filled
    with Detectron2's load-time defaults (mean 0, var 1). Unknown keys pass through (loading
    reports them); the buffers in `_IGNORED` are dropped."""
    state = {k: v for k, v in state_dict.items() if not _IGNORED.match(k) and not k.endswith("num_batches_tracked")}
    for key in list(state):
        if m := _NORM_PREFIX.match(key):
            n = state[key].shape[0]
            state.setdefault(m.group(1) + "running_mean", torch.zeros(n))
            state.setdefault(m.group(1) + "running_var", torch.ones(n))
    return {detectron2_key_to_ours(key): value for key, value in state.items()}


def detectron2_key_to_ours(key: str) -> str:
    """One Detectron2 state-dict name -> ours (unknown names are returned as they are)."""
    for pattern, replacement in _RULES:
        new_key, n = re.subn(pattern, replacement, key)
        if n:
            return new_key
    return key


def infer_detectron2_config(state_dict: dict[str, Tensor]) -> dict:
    """The architecture facts a Detectron2 state dict carries, on top of DETECTRON2_OPTIONS:
    depth and class count. Other architectures are refused by name."""
    if "roi_heads.res5.0.conv1.weight" in state_dict:
        return infer_detectron2_c4_config(state_dict)
    if not any(k.startswith("backbone.fpn_lateral") for k in state_dict):
        raise ValueError("not a Detectron2 FPN or C4 Mask R-CNN: no backbone.fpn_lateral* or roi_heads.res5.* "
                         "weights (DC5 models, and ImageNet backbones such as R-50.pkl, are not supported)")
    cls_key, box_key = "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight"
    if cls_key not in state_dict:
        raise ValueError(f"not a Detectron2 R-CNN: {cls_key} is missing")
    if not any(k.startswith("roi_heads.mask_head.mask_fcn") for k in state_dict):
        raise ValueError("not a Detectron2 Mask R-CNN with the 4-conv mask head (no roi_heads.mask_head.mask_fcn*)")
    num_classes = state_dict[cls_key].shape[0]
    if box_key in state_dict and state_dict[box_key].shape[0] != 4 * (num_classes - 1):
        raise ValueError(f"{box_key} has {state_dict[box_key].shape[0]} outputs, not 4 per class: class-agnostic "
                         "box regression (or a cascade head) is not supported")
    if any(k.startswith(("roi_heads.box_head.conv", "backbone.fpn_lateral2.norm")) for k in state_dict):
        raise ValueError("a Detectron2 model with normalized or convolutional heads (GN, LSJ, ...) is not supported")
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"backbone\.bottom_up\.res4\.(\d+)\.", k))}
    depth = {6: 50, 23: 101, 36: 152}.get(len(blocks))
    if depth is None or "backbone.bottom_up.res2.0.conv3.weight" not in state_dict:
        raise ValueError(f"unsupported backbone: res4 has {len(blocks)} blocks; bottleneck ResNets with 6 "
                         "(R-50), 23 (R-101) or 36 (R-152) are supported")
    conv2 = state_dict["backbone.bottom_up.res2.0.conv2.weight"]
    if conv2.shape[1] != conv2.shape[0]:
        raise ValueError("ResNeXt backbones (grouped convolutions) are not supported")
    if "roi_heads.box_head.fc3.weight" in state_dict or "roi_heads.box_head.fc2.weight" not in state_dict:
        raise ValueError("only the box head with two fully connected layers (fc1, fc2) is supported")
    return {
        **DETECTRON2_OPTIONS,
        "depth": depth,
        "num_classes": num_classes,
        # widths, so that narrow models (e.g. for tests) load too
        "base_width": state_dict["backbone.bottom_up.res2.0.conv1.weight"].shape[0],
        "fpn_channels": state_dict["backbone.fpn_lateral2.weight"].shape[0],
        "representation_size": state_dict["roi_heads.box_head.fc1.weight"].shape[0],
        "mask_head_channels": state_dict["roi_heads.mask_head.mask_fcn1.weight"].shape[0],
    }


def infer_detectron2_c4_config(state_dict: dict[str, Tensor]) -> dict:
    """The `detectron2_mask_rcnn_R_50_C4` preset's options, with the class count and widths
    of a Detectron2 C4 state dict (Res5ROIHeads); other C4 layouts are refused by name."""
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    if cls_key not in state_dict or "backbone.res4.0.conv1.weight" not in state_dict:
        raise ValueError(f"not a Detectron2 C4 R-CNN: {cls_key} or backbone.res4.* is missing")
    if "roi_heads.mask_head.deconv.weight" not in state_dict:
        raise ValueError("not a Detectron2 C4 Mask R-CNN: roi_heads.mask_head.deconv is missing")
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"backbone\.res4\.(\d+)\.", k))}
    if len(blocks) != 6:
        raise ValueError(f"unsupported C4 backbone: res4 has {len(blocks)} blocks; R-50 (6) is supported")
    conv2 = state_dict["backbone.res2.0.conv2.weight"]
    if conv2.shape[1] != conv2.shape[0]:
        raise ValueError("ResNeXt backbones (grouped convolutions) are not supported")
    return {
        **PRESETS["detectron2_mask_rcnn_R_50_C4"],
        "num_classes": state_dict[cls_key].shape[0],
        "base_width": state_dict["backbone.res2.0.conv1.weight"].shape[0],
        "mask_head_channels": state_dict["roi_heads.mask_head.deconv.weight"].shape[1],
    }


def read_detectron2(source: str | Path | dict) -> dict[str, Tensor]:
    """The state dict (Detectron2's names) of a .pkl, a .pth or an already loaded dict."""
    if isinstance(source, dict):
        obj = source
        name = "checkpoint"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.suffix == ".pkl":
            obj = read_detectron2_pickle(path)
        else:
            from .torchvision import read_state_dict

            return read_state_dict(path)
    return pickle_state_dict(obj, name)


def from_detectron2(state_dict_or_path: str | Path | dict, **options) -> MaskRCNN:
    """Build our model from a Detectron2 Mask R-CNN R-50/R-101 FPN or R-50 C4 checkpoint, in eval mode,
    computing what Detectron2 computes (the `detectron2_mask_rcnn_R_50_FPN` preset's options).

    state_dict_or_path: a model zoo .pkl, a Detectron2 .pth checkpoint, or a state dict (numpy
    arrays or tensors, Detectron2's names, optionally under "model").
    options: ModelConfig options, e.g. box_score_thresh (Detectron2's
    MODEL.ROI_HEADS.SCORE_THRESH_TEST, default 0.05), box_detections_per_img, min_size.

    The model takes RGB float images in [0, 1] like every model here (it converts them to
    Detectron2's BGR 0..255) and returns Detectron2's class index 0..K-2 as labels.

    >>> model = from_detectron2("model_final_f10217.pkl", box_score_thresh=0.5)  # doctest: +SKIP
    >>> det = model([image]).detections[0]   # image: (3, H, W) RGB float in [0, 1]  # doctest: +SKIP
    >>> det.labels                           # 0 = person, ..., 79 = toothbrush  # doctest: +SKIP
    """
    state = read_detectron2(state_dict_or_path)
    if not is_detectron2_state_dict(state):
        raise ValueError("not a Detectron2 state dict: no backbone.bottom_up.* or proposal_generator.* keys")
    config = infer_detectron2_config(state)
    if "num_classes" in options and options["num_classes"] != config["num_classes"]:
        raise ValueError(f"num_classes={options['num_classes']} but the checkpoint has {config['num_classes']} classes")
    config.update(options)
    model = build_model(ModelConfig.from_dict(config))
    source = "checkpoint" if isinstance(state_dict_or_path, dict) else str(state_dict_or_path)
    load_checked(model, convert_detectron2_state_dict(state), f"{source} (Detectron2 layout)")
    return model.eval()
