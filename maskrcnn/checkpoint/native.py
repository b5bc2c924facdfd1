"""Our own model files: weights as safetensors plus the model config (with class names) as JSON.

    model.safetensors   the state dict
    model.json          {"format": "maskrcnn", "version": 1, "config": {...ModelConfig...}}

`save_model(model, "out/model.safetensors")` writes both, each atomically (`maskrcnn.io`'s
temporary file, then rename), so an interrupted save never leaves a half-written file under the
final name.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_write, write_json_atomic
from ..modeling.build import ModelConfig, build_model
from ..modeling.mask_rcnn import MaskRCNN

FORMAT = "maskrcnn"
VERSION = 1


def config_path_for(weights_path: str | Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def save_model(model: MaskRCNN, path: str | Path, extra: dict | None = None) -> Path:
    """Write `path` (.safetensors) and its .json config beside it. Returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model weights are saved as .safetensors, got {path}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    meta = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(), **(extra or {})}
    write_json_atomic(meta, config_path_for(path), indent=1)
    return path


def read_config(path: str | Path) -> ModelConfig:
    config_file = config_path_for(path)
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: the model config {config_file} is missing (it is written beside the weights)")
    try:
        meta = json.loads(config_file.read_bytes())  # bytes: UTF-8/16/32 read, others refused below
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config_file} is not a maskrcnn model config (format={meta.get('format')!r})")
    return ModelConfig.from_dict(meta["config"])


def load_native(path: str | Path, **overrides) -> MaskRCNN:
    """Model from a .safetensors file and its .json config, in eval mode. `overrides` change
    inference options (e.g. box_score_thresh); architecture mismatches raise a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights {path} do not exist")
    return native_from_state(read_config(path), load_file(str(path)), str(path), **overrides)


def native_from_state(config: ModelConfig, state: dict[str, torch.Tensor], source: str, **overrides) -> MaskRCNN:
    """`load_native` for a config and state dict already read (by `open_checkpoint`)."""
    model = build_model(ModelConfig.from_dict({**config.to_dict(), **overrides}))
    load_checked(model, state, source)
    return model.eval()


def load_checked(model: MaskRCNN, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that says which architecture or class count differs."""
    own = model.state_dict()
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    if cls_key in state and state[cls_key].shape[0] != own[cls_key].shape[0]:
        raise ValueError(
            f"{source} was trained for {state[cls_key].shape[0]} classes (with background) "
            f"but the model has {own[cls_key].shape[0]}"
        )
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    # BatchNorm step counters carry no information for inference or frozen norms
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    if mismatched or missing or unexpected:
        raise ValueError(
            f"{source} does not fit this architecture: "
            + "; ".join(
                f"{what} {keys[:3]}{'...' if len(keys) > 3 else ''}"
                for what, keys in (("shape differs for", mismatched), ("missing", missing), ("unexpected", unexpected))
                if keys
            )
        )
    model.load_state_dict(state, strict=False)
