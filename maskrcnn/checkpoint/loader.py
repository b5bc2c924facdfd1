"""One way to open a checkpoint, for everything that takes weights: `load_model` (and through it
`predict`, `inspect`, `export`), `eval --weights`, and `model.weights=` in training configs.

    ckpt = open_checkpoint("torchvision:maskrcnn_resnet50_fpn")   # or a path
    ckpt.kind      # "native", "torchvision", "detectron2", "imagenet", "onnx"
    model, class_names, category_ids = build_from_checkpoint(ckpt, box_score_thresh=0.5)

What is recognised, in this order:
  - a name: "torchvision:NAME" or "detectron2:NAME" (inference/hub.py: cache, download, hash);
  - model.onnx, a graph written by `maskrcnn export` (inference only);
  - our model.safetensors with its model.json beside it (or the .json itself): "native";
  - any state dict file (.safetensors, .pth / .pt read with weights_only=True, Detectron2's
    .pkl read by a restricted unpickler), told apart by its keys: Detectron2's names,
    torchvision's Mask R-CNN names, or an ImageNet classification ResNet (a backbone to start
    training from, not a detector).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from .detectron2 import from_detectron2, is_detectron2_state_dict
from .native import config_path_for, native_from_state
from .torchvision import from_torchvision, read_state_dict, torchvision_variant

__all__ = ["Checkpoint", "build_from_checkpoint", "open_checkpoint", "resolve_weights"]

KINDS = ("native", "native_bare", "torchvision", "detectron2", "imagenet", "onnx")


@dataclass
class Checkpoint:
    """An opened checkpoint: where it is, what it is, and its tensors (None for ONNX)."""

    source: str  # what was asked for: a path or a name
    path: Path
    kind: str  # one of KINDS; "native_bare": our layout without its model.json
    state: dict[str, Tensor] | None
    meta: dict[str, Any] = field(default_factory=dict)  # model.json of a native checkpoint
    named: Any = None  # hub.NamedWeights for a name

    def __repr__(self) -> str:
        return f"Checkpoint({self.source!r}, kind={self.kind})"


def resolve_weights(source: str | os.PathLike, *, download: bool | None = None) -> tuple[Path, Any]:
    """(local path, NamedWeights or None): a name is fetched into the cache; a path must exist."""
    from ..inference import hub

    if hub.is_named(source):
        if source not in hub.NAMED_WEIGHTS:
            raise ValueError(f"unknown named weights {source!r}; known: {', '.join(hub.NAMED_WEIGHTS)}")
        return hub.weights_path(source, download=download), hub.NAMED_WEIGHTS[source]
    path = Path(source)
    if path.suffix == ".json" and path.with_suffix(".safetensors").is_file():
        path = path.with_suffix(".safetensors")  # pointed at the config: the weights are beside it
    if not path.exists():
        hint = (f"; named weights are {', '.join(hub.NAMED_WEIGHTS)}"
                if ":" in str(source) or not path.suffix else "")
        raise FileNotFoundError(f"checkpoint {path} does not exist{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} is a folder, not a weights file")
    return path, None


def open_checkpoint(source: str | os.PathLike, *, download: bool | None = None) -> Checkpoint:
    """Find, read and classify a checkpoint (see the module docstring). Raises FileNotFoundError,
    hub.WeightsUnavailableError (offline), or ValueError naming the file."""
    path, named = resolve_weights(source, download=download)
    label = str(source)
    if path.suffix.lower() == ".onnx":
        return Checkpoint(label, path, "onnx", None, named=named)
    config_file = config_path_for(path)
    if path.suffix == ".safetensors" and config_file.is_file():
        try:
            meta = json.loads(config_file.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config_file} (the config of {path.name}) is not valid JSON: {e}") from None
        if isinstance(meta, dict) and meta.get("format") == "maskrcnn":
            return Checkpoint(label, path, "native", _read(path), meta, named)
    state = _read(path)
    if is_detectron2_state_dict(state):
        kind = "detectron2"
    elif any(k.startswith(("roi_heads.mask_head.predictor.", "backbone.fpn.lateral.")) for k in state):
        kind = "native_bare"
    elif "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        kind = "imagenet"
    else:
        kind = "torchvision"
    return Checkpoint(label, path, kind, state, named=named)


def _read(path: Path) -> dict[str, Tensor]:
    try:
        return read_state_dict(path)
    except (FileNotFoundError, ValueError):  # already name the file (UnsafePickleError is one)
        raise
    except Exception as e:  # SafetensorError, pickle or zip errors: name the file, not a traceback
        detail = str(e) if str(path) in str(e) else f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot read checkpoint {path} ({detail})") from e


def build_from_checkpoint(
    ckpt: Checkpoint, variant: str | None = None, **options: Any
) -> tuple[Any, list[str] | None, Mapping[int, int] | Sequence[int] | None]:
    """(model in eval mode, class names of labels or None, label -> COCO category id or None).

    variant: "v1" / "v2" / "faster" / "faster_v2" to insist on a torchvision layout (default: read
        from the keys).
    options: ModelConfig options (box_score_thresh, min_size, num_classes as a check, ...).
    """
    from ..inference import hub

    where = ckpt.source if ckpt.source == str(ckpt.path) else f"{ckpt.source} ({ckpt.path})"
    if ckpt.kind == "onnx":
        model = _load_onnx(ckpt.path, variant, options)
        names = model.class_names
        if names is None and model.num_classes == len(hub.COCO_CATEGORY_NAMES):
            names = hub.COCO_CATEGORY_NAMES[1:]
        return model, names, model.category_ids
    if ckpt.kind == "native":
        saved = ckpt.meta["config"].get("variant")
        if variant not in (None, saved):
            raise ValueError(f"{where} is a {saved} model, not {variant}")
        from .native import read_config

        model = native_from_state(read_config(ckpt.path), ckpt.state, str(ckpt.path), **options)
        ids = ckpt.meta.get("category_ids")
        names = model.class_names
        if names is None and model.num_classes == len(hub.COCO_CATEGORY_NAMES):
            names = hub.COCO_CATEGORY_NAMES[1:]
        return model, names, _int_keys(ids) if ids is not None else None
    if ckpt.kind == "native_bare":
        raise ValueError(f"{where} holds this library's own layout, but its config {config_path_for(ckpt.path)} "
                         "is missing: save_model writes both, keep them side by side")
    if ckpt.kind == "imagenet":
        raise ValueError(f"{where} is an ImageNet classification ResNet: it can start training "
                         "(model.weights=...) but is not a detector")
    if ckpt.kind == "detectron2":
        return _detectron2_model(ckpt, where, options)
    if variant is None:
        # v2 has a conv box head (keys roi_heads.box_head.0.*), v1 fc6/fc7; Faster R-CNN no mask keys
        variant = torchvision_variant(ckpt.state)
    try:
        model = from_torchvision(ckpt.state, variant, **options)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    names = list(ckpt.named.class_names) if ckpt.named is not None else model.class_names
    if names is None and model.num_classes == len(hub.COCO_CATEGORY_NAMES):
        names = hub.COCO_CATEGORY_NAMES[1:]  # 91 outputs: torchvision's COCO labels = category ids
    return model, names, None


def _detectron2_model(ckpt: Checkpoint, where: str, options: dict):
    """81 classes are taken to be COCO's 80 (Detectron2's contiguous class index i is the i-th
    COCO category in id order)."""
    from ..inference import hub

    try:
        model = from_detectron2(ckpt.state, **options)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    ids = None
    if model.num_classes == 81 and model.class_names is None:
        coco = [(cid, name) for cid, name in enumerate(hub.COCO_CATEGORY_NAMES) if cid > 0 and name != "N/A"]
        model.class_names = [name for _, name in coco]
        ids = {label: cid for label, (cid, _) in enumerate(coco, start=model.first_label)}
    return model, model.class_names, ids


def _load_onnx(path: Path, variant: str | None, options: dict):
    """An exported graph in ONNX Runtime. Its architecture and resize are fixed at export; of
    the options only box_score_thresh (the default score threshold) and num_classes (a check)
    apply."""
    from ..export.runtime import OnnxModel

    model = OnnxModel(path)
    if variant not in (None, model.config.variant):
        raise ValueError(f"{path} is a {model.config.variant} model, not {variant}")
    options = dict(options)
    if "num_classes" in options and options.pop("num_classes") != model.num_classes:
        raise ValueError(f"{path} has {model.num_classes} classes (with background), not the num_classes asked for")
    if "box_score_thresh" in options:
        model.score_thresh = float(options.pop("box_score_thresh"))
    if options:
        raise ValueError(f"{path}: {', '.join(sorted(options))} cannot change in an exported graph "
                         "(export again from the weights with the options you want)")
    return model


def _int_keys(mapping: Any) -> Any:
    # JSON object keys are strings; labels are ints
    return {int(k): int(v) for k, v in mapping.items()} if isinstance(mapping, dict) else mapping
