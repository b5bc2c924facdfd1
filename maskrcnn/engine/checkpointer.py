"""Training checkpoints that survive being killed at any instant.

A checkpoint at iteration `it` (iterations completed) is three files in the output folder:

    model_0001000.safetensors   weights (loadable on their own: `load_native`)
    model_0001000.json          the model config with class names
    state_0001000.pt            optimizer, LR scheduler, GradScaler, iteration, every process's
                                torch / CUDA / numpy / python RNG state, data-order facts

Each file is written to a temporary name and renamed (atomic on POSIX), and only after all
three exist does `last_checkpoint.json` (itself replaced atomically) point at them. A crash at
any moment therefore leaves the pointer on the previous complete checkpoint. Older checkpoints
are deleted only after the pointer has moved, keeping the last K.

The state file holds only tensors, numbers, strings, lists and dicts, so it is read with
`torch.load(..., weights_only=True)` and cannot run code.

A write that fails (disk full, permission denied, read-only file system) raises
`CheckpointWriteError` naming the file and the cause, and leaves the previous checkpoint and the
pointer as they were; the temporaries of a run killed mid-write (`.NAME.XXXX.tmp.pt`,
`.tmp.safetensors`, `.tmp.json`) are removed by `remove_temporaries` at the next start.
"""
from __future__ import annotations

import errno
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..checkpoint.native import load_checked, save_model
from ..io import atomic_write, describe_os_error, os_error_errno, write_json_atomic
from ..checkpoint.detectron2 import convert_detectron2_state_dict
from ..checkpoint.loader import open_checkpoint
from ..checkpoint.torchvision import convert_state_dict, imagenet_backbone_state_dict
from ..modeling.mask_rcnn import MaskRCNN

POINTER = "last_checkpoint.json"
_NAME = re.compile(r"^model_(\d{7,})\.safetensors$")
# maskrcnn.io's temporaries: ".<final name>.<random>.tmp" plus the final suffix (".tmp.pt",
# ".tmp.safetensors", ".tmp.json"), so that writers that pick the format by suffix still work
_TEMPORARY = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")


class CheckpointWriteError(OSError, RuntimeError):
    """A checkpoint file could not be written (disk full, permission denied...). `errno` is
    the cause's; the message names the file, says what went wrong and that the previous
    checkpoint is intact. Also a RuntimeError, like every other checkpoint problem here, so
    `maskrcnn train` reports it in one line."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _torch_save(obj: Any, path: Path) -> None:
    # Through a Python file object: torch.save(obj, path) turns a full disk into
    # "[enforce fail at inline_container.cc:672] unexpected pos", losing the errno.
    with open(path, "wb") as f:
        torch.save(obj, f)


# ------------------------------------------------------------------------------ RNG states


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and numbers (weights_only-loadable)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ save / load


class Checkpointer:
    """Writes and finds checkpoints in `directory`; `keep` periodic checkpoints stay on disk.
    `metadata` (e.g. the dataset's category ids) goes into every model's .json config."""

    def __init__(self, directory: str | Path, keep: int = 3, metadata: dict[str, Any] | None = None):
        self.directory = Path(directory)
        self.keep = keep
        self.metadata = dict(metadata or {})
        # A checkpoint pruning must keep even beyond `keep`: the newest one known to have been
        # followed by a normal loss (divergence.py), recorded in the pointer as "healthy".
        self.protect: int | None = None

    @staticmethod
    def names(iteration: int) -> tuple[str, str]:
        return f"model_{iteration:07d}.safetensors", f"state_{iteration:07d}.pt"

    def save(self, iteration: int, model: MaskRCNN, state: dict[str, Any]) -> Path:
        """Write weights, then state, then move the pointer, then prune. Rank 0 only.

        Raises CheckpointWriteError when a file cannot be written; the pointer then still
        names the previous checkpoint, whose files are untouched."""
        model_name, state_name = self.names(iteration)
        target = self.directory / model_name
        try:
            save_model(model, target, extra={**self.metadata, "iteration": iteration})
            target = self.directory / state_name
            atomic_write(target, lambda tmp: _torch_save({"iteration": iteration, **state}, tmp))
            target = self.directory / POINTER
            pointer = {"iteration": iteration, "model": model_name, "state": state_name, "healthy": self.protect}
            write_json_atomic(pointer, target, indent=1)
        except Exception as e:
            number = os_error_errno(e)
            if number is None:
                raise  # not an I/O failure: a bug, shown as it is
            self._remove_incomplete(iteration)  # frees the space a full disk needs back
            raise self._write_error(e, number, target, iteration) from e
        self._prune(keep_name=model_name)
        return self.directory / model_name

    def _remove_incomplete(self, iteration: int) -> None:
        """Delete the files of a checkpoint whose save failed, unless the pointer names it."""
        try:
            if json.loads((self.directory / POINTER).read_text()).get("iteration") == iteration:
                return
        except (OSError, ValueError, AttributeError):
            pass
        model_name, state_name = self.names(iteration)
        for name in (model_name, Path(model_name).with_suffix(".json").name, state_name):
            try:
                (self.directory / name).unlink(missing_ok=True)
            except OSError:
                pass

    def _write_error(self, error: Exception, number: int, target: Path, iteration: int) -> CheckpointWriteError:
        what = describe_os_error(error, target)
        try:
            previous = self.latest()
        except RuntimeError:
            previous = None
        kept = (f"the previous checkpoint {previous['model'].name} (iteration {previous['iteration']}) "
                "is intact" if previous else "no earlier checkpoint exists")
        hint = ""  # the files of the failed checkpoint have been removed by now
        if number in (errno.ENOSPC, errno.EDQUOT):
            hint = "; free disk space (or lower train.keep_checkpoints) and continue with --resume"
        return CheckpointWriteError(number, f"cannot save the checkpoint of iteration {iteration}: {what}; {kept}{hint}")

    def iterations(self) -> list[int]:
        """Iterations of the checkpoints whose weights are on disk, ascending."""
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def point_to(self, iteration: int) -> None:
        """Make `iteration`'s checkpoint the one --resume continues from (after a divergence)."""
        model_name, state_name = self.names(iteration)
        pointer = {"iteration": iteration, "model": model_name, "state": state_name, "healthy": iteration}
        write_json_atomic(pointer, self.directory / POINTER, indent=1)

    def _prune(self, keep_name: str) -> None:
        current = int(_NAME.match(keep_name).group(1))
        # checkpoints after the current one are from a diverged run resumed from an earlier
        # checkpoint: they are overwritten when reached, and must not count as the newest K
        found = [(i, self.names(i)[0]) for i in self.iterations() if i <= current]
        for iteration, name in found[: max(0, len(found) - self.keep)]:
            if name == keep_name or iteration == self.protect:
                continue
            model_name, state_name = self.names(iteration)
            for stale in (model_name, Path(model_name).with_suffix(".json").name, state_name):
                (self.directory / stale).unlink(missing_ok=True)

    def remove_temporaries(self) -> list[str]:
        """Delete half-written files a killed run left behind (`.NAME.XXXX.tmp.pt`,
        `.tmp.safetensors`, `.tmp.json`, or a bare `.tmp`); rank 0 only, before training
        starts. Returns the names removed."""
        if not self.directory.is_dir():
            return []
        stale = sorted(p for p in self.directory.iterdir() if _TEMPORARY.match(p.name) and p.is_file())
        for p in stale:
            p.unlink(missing_ok=True)
        return [p.name for p in stale]

    def latest(self) -> dict[str, Any] | None:
        """The pointer's record with full paths, or None when no checkpoint was written yet."""
        pointer_path = self.directory / POINTER
        if not pointer_path.is_file():
            return None
        try:
            pointer = json.loads(pointer_path.read_text())
            record = {"iteration": int(pointer["iteration"]),
                      "model": self.directory / pointer["model"], "state": self.directory / pointer["state"],
                      "healthy": pointer.get("healthy")}
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeError(f"{pointer_path} is not a valid checkpoint pointer ({e}); "
                               "delete it to start over, or point it at an existing model_*/state_* pair") from None
        for key in ("model", "state"):
            if not record[key].is_file():
                raise RuntimeError(f"{pointer_path} points at {record[key]}, which does not exist")
        return record

    def load(self, record: dict[str, Any], model: MaskRCNN, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Load weights into `model`; return the training state (optimizer, scheduler, ...)."""
        try:
            weights = load_file(str(record["model"]))
        except Exception as e:  # SafetensorError on a truncated or corrupt file
            raise RuntimeError(f"cannot read checkpoint weights {record['model']}: {e}") from e
        load_checked(model, weights, str(record["model"]))
        try:
            state = torch.load(record["state"], map_location=map_location, weights_only=True)
        except Exception as e:
            raise RuntimeError(f"cannot read training state {record['state']}: {e}") from e
        if state.get("iteration") != record["iteration"]:
            raise RuntimeError(f"{record['state']} is for iteration {state.get('iteration')}, "
                               f"but the pointer says {record['iteration']}")
        return state


# ------------------------------------------------------------------------------ initial weights


def load_initial_weights(model: MaskRCNN, path: str | Path) -> str:
    """Start training from other weights: our .safetensors, a torchvision Mask R-CNN checkpoint
    (e.g. COCO weights to fine-tune on new classes), a Detectron2 one (.pkl / .pth, into a
    detectron2_* preset) or an ImageNet classification ResNet (torchvision's resnet50-*.pth, as
    the paper's backbone initialization).

    Tensors whose name and shape match are loaded; the rest (typically the class-specific
    predictor layers when the class count differs) keep their fresh initialization. Returns a
    one-line report; raises if nothing matched, which means the file is for another model.
    """
    ckpt = open_checkpoint(path)  # names (torchvision:NAME, detectron2:NAME) and files alike
    if ckpt.state is None:
        raise ValueError(f"{path} is an exported ONNX graph: it cannot start training; use the weights it was exported from")
    state = ckpt.state
    detectron2 = ckpt.kind == "detectron2"
    torchvision = any(k.startswith(("backbone.fpn.inner_blocks.", "layer1.0.conv1.")) for k in state)
    msra = bool(getattr(getattr(model, "config", None), "stride_in_1x1", False))
    if (detectron2 and not msra) or (torchvision and msra):
        # same shapes, different computation (where the stride sits): they would load and compute nonsense
        raise ValueError(
            f"{path} is a {'Detectron2' if detectron2 else 'torchvision'} checkpoint but the model has "
            f"{'torchvision' if detectron2 else 'Detectron2'}'s ResNet (stride_in_1x1={msra}); "
            + ("use model.preset=detectron2_mask_rcnn_R_50_FPN (or _R_101_FPN)" if detectron2 else
               "use a torchvision preset such as maskrcnn_resnet50_fpn")
        )
    if detectron2:
        state = convert_detectron2_state_dict(state)
    elif ckpt.kind == "imagenet":
        state = imagenet_backbone_state_dict(state, c4=getattr(getattr(model, "config", None), "architecture", "") == "c4")
    state = convert_state_dict(state)
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    reshaped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if not matched:
        raise ValueError(f"no tensor of {path} fits the model: it is for another architecture")
    model.load_state_dict(matched, strict=False)
    fresh = len([k for k in own if k not in matched and not k.endswith("num_batches_tracked")])
    report = f"initial weights {path}: loaded {len(matched)} tensors, {fresh} of the model's stay freshly initialized"
    if reshaped:
        report += f" ({len(reshaped)} skipped for shape, e.g. {reshaped[0]})"
    return report
