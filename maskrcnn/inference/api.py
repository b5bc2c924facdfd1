"""Python API: load a model from any checkpoint, run it on any image, use the results.

    >>> import maskrcnn
    >>> model = maskrcnn.load_model("torchvision:maskrcnn_resnet50_fpn")      # doctest: +SKIP
    >>> [result] = model.predict("street.jpg", score_threshold=0.5)           # doctest: +SKIP
    >>> result.boxes, result.class_names, result.scores, result.masks.shape   # doctest: +SKIP
    >>> result.label_map           # int32 (H, W): 0 background, i + 1 = detection i  # doctest: +SKIP
    >>> result.draw().save("street_overlay.png"); result.save("out/")         # doctest: +SKIP

Checkpoints `load_model` reads:
  - our own `model.safetensors` with its `model.json` beside it (written by `save_model`);
  - a torchvision Mask R-CNN state dict (.pth / .pt read with `torch.load(weights_only=True)`,
    or .safetensors), v1 or v2 layout (inferred, or `variant=`);
  - a named torchvision weight, "torchvision:maskrcnn_resnet50_fpn" or "..._v2", fetched into
    the cache (see `hub.py`);
  - a Detectron2 Mask R-CNN FPN checkpoint: a model zoo .pkl (read by a restricted unpickler,
    never `pickle.load`) or a Detectron2 .pth; labels are Detectron2's class index 0..79,
    written to COCO results as COCO category ids;
  - a graph written by `maskrcnn export` (`model.onnx`), run with ONNX Runtime (the optional
    extra: pip install -e ".[onnx]"); class names and category ids come from its metadata.
"""
from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..checkpoint.native import config_path_for, load_native
from ..checkpoint.detectron2 import from_detectron2, is_detectron2_state_dict
from ..checkpoint.torchvision import from_torchvision, read_state_dict, torchvision_variant
from ..io import DEFAULT_MAX_PIXELS, ImageSource, load_image
from ..modeling.mask_rcnn import MaskRCNN
from . import hub
from .draw import draw_instances
from .outputs import label_map as combine_masks
from .outputs import to_coco_results, write_coco_json, write_image, write_label_map_png

__all__ = ["DEFAULT_BATCH_SIZE", "Predictor", "Result", "load_model"]

# Two images per forward: on CPU bigger batches buy nothing (the convs already use every
# core) and each image in flight holds up to 100 full-size float mask planes.
DEFAULT_BATCH_SIZE = 2


@dataclass
class Result:
    """Detections of one image, in its original pixel coordinates (shape shorthand: R
    detections, H x W the image). All tensors are on the CPU.

    boxes: float32 (R, 4) xyxy; scores: float32 (R,), descending; labels: int64 (R,), 1..K-1;
    class_names: R names (the label number as text when the model has no names);
    masks: bool (R, H, W), or float32 probabilities in [0, 1] when predicted with
    mask_threshold=None, or None for a model without a mask branch.
    keypoints: float32 (R, P, 3) (x, y, 1) and keypoint_scores: float32 (R, P) (heatmap
    logits) for a model with a keypoint branch, else None; `skeleton` ([i, j] 1-based pairs)
    and `keypoint_names` come from the model, for draw().
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str]
    masks: Tensor | None
    image_size: tuple[int, int]
    source: str | None = None  # the file it came from, or a description such as "<numpy array>"
    mask_threshold: float | None = 0.5
    # indexed by label (0 = background); used by draw()
    label_names: list[str] | None = field(default=None, repr=False)
    # label -> COCO category id for to_coco() (None: the label is the id)
    category_ids: Mapping[int, int] | Sequence[int] | None = field(default=None, repr=False)
    image: Tensor | None = field(default=None, repr=False)  # float32 (3, H, W), for draw()
    keypoints: Tensor | None = field(default=None, repr=False)
    keypoint_scores: Tensor | None = field(default=None, repr=False)
    keypoint_names: list[str] | None = field(default=None, repr=False)
    skeleton: list[list[int]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __repr__(self) -> str:
        # short: the default dataclass repr would print every tensor, masks included
        shown = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.class_names[:5], self.scores.tolist()))
        more = ", ..." if len(self) > 5 else ""
        h, w = self.image_size
        return f"Result({len(self)} detections [{shown}{more}], image {h}x{w}, source={self.source!r})"

    @property
    def binary_masks(self) -> Tensor | None:
        """bool (R, H, W): `masks` as they are, or probabilities >= 0.5."""
        if self.masks is None or self.masks.dtype == torch.bool:
            return self.masks
        return self.masks >= 0.5

    @functools.cached_property
    def label_map(self) -> Tensor:
        """int32 (H, W): 0 = background, i + 1 = detection i. Where masks overlap, the pixel
        goes to the highest-scoring detection covering it (the lower index on a tie)."""
        if self.masks is None:
            return torch.zeros(self.image_size, dtype=torch.int32)
        return combine_masks(self.binary_masks, self.scores)

    def to_coco(self, image_id: Any = 0, category_ids: Mapping | Sequence | None = None) -> list[dict]:
        """COCO results entries ({"image_id", "category_id", "bbox" xywh, "score",
        "segmentation" compressed RLE, "area"}, and "keypoints" [x, y, v, ...] for a keypoint
        model), ready for `COCO.loadRes` / json.dump.
        category_ids maps labels to COCO category ids (dict, or sequence indexed by label);
        default: the model's own mapping, else the label itself."""
        return to_coco_results(
            image_id, self.boxes, self.scores, self.labels, self.binary_masks,
            self.category_ids if category_ids is None else category_ids, keypoints=self.keypoints,
        )

    def draw(self, image: ImageSource | None = None, **options: Any) -> Image.Image:
        """RGB overlay of the input's size: colored masks, boxes, "class score" captions.
        `image` defaults to the predicted image; options go to `draw_instances`."""
        if image is None:
            if self.image is None:
                raise ValueError("this result keeps no image; pass the image to draw on")
            image = self.image
        if self.keypoints is not None:
            options = {"keypoints": self.keypoints, "skeleton": self.skeleton, **options}
        return draw_instances(image, self.boxes, self.labels, self.scores, self.masks,
                              self.label_names, **options)

    def save(self, path: str | os.PathLike, *, image_id: Any = 0, name: str | None = None) -> list[Path]:
        """Write the result; every file is written atomically. Returns the paths written.

        path ending in .json: COCO results; .png/.jpg/...: the overlay; anything else is a
        folder that gets NAME.png (overlay), NAME.json (COCO results) and NAME_labels.png
        (the label map, 8-bit or 16-bit grayscale), NAME being `name` or the input file's stem.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            return [write_coco_json(path, self.to_coco(image_id))]
        if suffix in Image.registered_extensions():
            return [write_image(path, self.draw())]
        if name is None:
            name = Path(self.source).stem if self.source and not self.source.startswith("<") else "image"
        written = [write_image(path / f"{name}.png", self.draw()),
                   write_coco_json(path / f"{name}.json", self.to_coco(image_id))]
        if self.masks is not None:
            written.append(write_label_map_png(path / f"{name}_labels.png", self.label_map.numpy()))
        return written


class Predictor:
    """A model in eval mode on a device, with its class names; `predict` turns images into
    `Result`s. Build it with `load_model`, or wrap a model: `Predictor(build_preset(...))`.
    The model is a `MaskRCNN` or an exported graph in ONNX Runtime (`maskrcnn.export.OnnxModel`),
    which has the same call and attributes."""

    def __init__(
        self,
        model: MaskRCNN,
        *,
        device: str | torch.device = "cpu",
        class_names: Sequence[str] | None = None,
        category_ids: Mapping[int, int] | Sequence[int] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        names = class_names if class_names is not None else getattr(model, "class_names", None)
        if names is not None and len(names) != model.num_classes - 1:
            raise ValueError(
                f"got {len(names)} class names but the model has {model.num_classes - 1} classes "
                f"(num_classes={model.num_classes} counts the background)"
            )
        self.class_names = list(names) if names is not None else None
        self.category_ids = category_ids
        self.max_pixels = max_pixels

    @property
    def label_names(self) -> list[str] | None:
        """Names indexed by label: ["__background__", class 1, ...], or [class 0, ...] for a
        model whose labels start at 0 (Detectron2's class index)."""
        if self.class_names is None:
            return None
        return ["__background__", *self.class_names] if getattr(self.model, "first_label", 1) == 1 else list(self.class_names)

    def __repr__(self) -> str:
        c = self.model.config
        return (f"Predictor({c.variant}, depth={c.depth}, classes={self.model.num_classes - 1}, "
                f"device={self.device})")

    def predict(
        self,
        images: ImageSource | Sequence[ImageSource],
        score_threshold: float | None = 0.5,
        mask_threshold: float | None = 0.5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        keep_images: bool = True,
    ) -> list[Result]:
        """One `Result` per image, in input order.

        images: a path, PIL image, numpy array ((H, W) or (H, W, C), channels last) or tensor
            ((3, H, W) channels first, or a (N, 3, H, W) batch), or a list of them. Grayscale,
            RGBA, palette, 16-bit and EXIF-rotated images are converted (see `maskrcnn.io.load_image`).
        score_threshold: keep detections with score > score_threshold (None: the model's own
            box_score_thresh). It is applied before the mask head, which therefore runs only
            on the detections returned.
        mask_threshold: masks are `probability >= mask_threshold` (bool); None keeps the
            float probabilities.
        batch_size: images per forward pass. Images are batched only with others that pad
            to the same size, so a result never depends on its batch neighbours.
        keep_images: keep each input tensor on its Result for `draw()` / `save()`.

        Raises `maskrcnn.io.ImageLoadError` (a subclass of ValueError) naming any image that cannot
        be read or is above `max_pixels`.
        """
        items = _as_list(images)
        tensors = [load_image(src, max_pixels=self.max_pixels) for src in items]
        names = [os.fspath(s) if isinstance(s, (str, os.PathLike)) else None for s in items]
        return self.predict_tensors(tensors, names, score_threshold, mask_threshold, batch_size,
                                    keep_images=keep_images)

    __call__ = predict

    def batch_key(self, image: Tensor) -> tuple[int, int]:
        """The padded (H, W) the model's transform gives this image."""
        t = self.model.transform
        h, w = t.output_size(int(image.shape[-2]), int(image.shape[-1]))
        d = t.size_divisible
        return math.ceil(h / d) * d, math.ceil(w / d) * d

    def predict_tensors(
        self,
        images: list[Tensor],
        sources: list[str | None] | None = None,
        score_threshold: float | None = 0.5,
        mask_threshold: float | None = 0.5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        keep_images: bool = True,
    ) -> list[Result]:
        """`predict` for images already loaded as float32 (3, H, W) tensors in [0, 1]."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        sources = sources if sources is not None else [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self.batch_key(image), []).append(i)
        results: list[Result | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                batch = [images[i] for i in chunk]
                for i, det in zip(chunk, self._forward(batch, score_threshold)):
                    results[i] = self._to_result(det, images[i], sources[i], mask_threshold, keep_images)
        return results

    @torch.inference_mode()
    def _forward(self, images: list[Tensor], score_threshold: float | None):
        # The override is passed down to the box post-processing, which runs before the mask
        # head: a caller's 0.5 means masks are computed and pasted only for what is returned,
        # not for every detection above the model's 0.05 (benchmarks/postprocess.py).
        batch = [img.to(self.device, torch.float32) for img in images]
        return self.model(batch, score_thresh=score_threshold).detections

    def _to_result(self, det, image: Tensor, source: str | None, mask_threshold: float | None,
                   keep_image: bool) -> Result:
        masks = det.masks
        if masks is not None:
            masks = (masks >= mask_threshold) if mask_threshold is not None else masks.float()
            masks = masks.cpu()
        labels = det.labels.cpu()
        label_names = self.label_names
        names = [label_names[int(l)] if label_names and 0 <= int(l) < len(label_names) else str(int(l))
                 for l in labels]
        return Result(
            boxes=det.boxes.float().cpu(), scores=det.scores.float().cpu(), labels=labels,
            class_names=names, masks=masks, image_size=(int(image.shape[-2]), int(image.shape[-1])),
            source=source, mask_threshold=mask_threshold, label_names=label_names,
            category_ids=self.category_ids, image=image.cpu() if keep_image else None,
            **self._keypoint_fields(det),
        )

    def _keypoint_fields(self, det) -> dict:
        if getattr(det, "keypoints", None) is None:
            return {}
        config = getattr(self.model, "config", None)
        return dict(keypoints=det.keypoints.float().cpu(), keypoint_scores=det.keypoint_scores.float().cpu(),
                    keypoint_names=getattr(config, "keypoint_names", None),
                    skeleton=getattr(config, "keypoint_skeleton", None))


def _as_list(images: Any) -> list:
    """One image or many -> a list of single images."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (Tensor, np.ndarray)):
        # (N, C, H, W) tensors and (N, H, W, C) arrays are batches; anything else is one image
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence):
        if len(images) == 0:
            raise ValueError("no images given")
        return list(images)
    raise TypeError(f"images must be a path, PIL image, numpy array, tensor or a list of them, "
                    f"got {type(images).__name__}")


# ---------------------------------------------------------------------------------------------
# Loading


def load_model(
    source: str | os.PathLike | MaskRCNN,
    *,
    device: str | torch.device = "cpu",
    variant: str | None = None,
    class_names: Sequence[str] | None = None,
    category_ids: Mapping[int, int] | Sequence[int] | None = None,
    download: bool | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **options: Any,
) -> Predictor:
    """A `Predictor` from a checkpoint (see the module docstring for what is accepted).

    variant: "v1" / "v2" / "keypoint" for torchvision files (default: read from the state dict's layout).
    class_names: names of labels 1..K-1 (default: the checkpoint's; COCO's for torchvision
        checkpoints with 91 classes).
    category_ids: label -> COCO category id for `Result.to_coco` (default: the native
        config's "category_ids" if present; torchvision labels already are COCO ids).
    download: for named weights; None: allowed unless MASKRCNN_OFFLINE=1.
    options: model options such as box_score_thresh, box_detections_per_img, min_size,
        max_size, or num_classes to insist on a class count (a mismatch is an error).

    Raises ValueError naming the checkpoint when it is for another architecture or class
    count, FileNotFoundError for missing files, hub.WeightsUnavailableError offline.
    """
    if isinstance(source, MaskRCNN):
        model = source
    elif Path(source).suffix.lower() == ".onnx":
        model = _load_onnx(Path(source), variant, options)
        class_names = class_names if class_names is not None else model.class_names
        category_ids = category_ids if category_ids is not None else model.category_ids
        if class_names is None and model.num_classes == len(hub.COCO_CATEGORY_NAMES):
            class_names = hub.COCO_CATEGORY_NAMES[1:]
    elif isinstance(source, str) and source.startswith("torchvision:"):
        entry = hub.NAMED_WEIGHTS.get(source)
        if entry is None:
            raise ValueError(f"unknown named weights {source!r}; known: {', '.join(hub.NAMED_WEIGHTS)}")
        if variant not in (None, entry.variant):
            raise ValueError(f"{source} is a {entry.variant} checkpoint, not {variant}")
        path = hub.weights_path(source, download=download)
        model = from_torchvision(path, entry.variant, **options)
        class_names = class_names if class_names is not None else list(entry.class_names)
    else:
        model, meta = _load_file(Path(source), variant, options)
        if category_ids is None and meta.get("category_ids") is not None:
            category_ids = _int_keys(meta["category_ids"])
        if class_names is None and model.class_names is None and model.num_classes == len(hub.COCO_CATEGORY_NAMES):
            # 91 outputs is torchvision's COCO layout (label = COCO category id)
            class_names = hub.COCO_CATEGORY_NAMES[1:]
    return Predictor(model, device=device, class_names=class_names, category_ids=category_ids,
                     max_pixels=max_pixels)


def _load_detectron2(path: Path, state: dict, options: dict) -> tuple[MaskRCNN, dict]:
    """A Detectron2 checkpoint; 81 classes are taken to be COCO's 80 (Detectron2's contiguous
    class index i is the i-th COCO category in id order)."""
    try:
        model = from_detectron2(state, **options)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    meta: dict = {}
    if model.num_classes == 81 and model.class_names is None:
        coco = [(cid, name) for cid, name in enumerate(hub.COCO_CATEGORY_NAMES) if cid > 0 and name != "N/A"]
        model.class_names = [name for _, name in coco]
        meta["category_ids"] = {label: cid for label, (cid, _) in enumerate(coco, start=model.first_label)}
    return model, meta


def _load_onnx(path: Path, variant: str | None, options: dict):
    """An exported graph in ONNX Runtime. Its architecture and resize are fixed at export; of
    the options only box_score_thresh (the default score threshold) and num_classes (a check)
    apply."""
    from ..export.runtime import OnnxModel

    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
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


def _load_file(path: Path, variant: str | None, options: dict) -> tuple[MaskRCNN, dict]:
    if path.suffix == ".json" and path.with_suffix(".safetensors").is_file():
        path = path.with_suffix(".safetensors")  # pointed at the config: load the weights beside it
    if not path.exists():
        hint = (f"; named weights are {', '.join(hub.NAMED_WEIGHTS)}"
                if ":" in str(path) or not path.suffix else "")
        raise FileNotFoundError(f"checkpoint {path} does not exist{hint}")
    config_file = config_path_for(path)
    if path.suffix == ".safetensors" and config_file.is_file():
        try:
            meta = json.loads(config_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_file} (the config of {path.name}) is not valid JSON: {e}") from None
        if isinstance(meta, dict) and meta.get("format") == "maskrcnn":
            if variant not in (None, meta["config"].get("variant")):
                raise ValueError(f"{path} is a {meta['config'].get('variant')} model, not {variant}")
            return load_native(path, **options), meta
    state = read_state_dict(path)
    if is_detectron2_state_dict(state):
        return _load_detectron2(path, state, options)
    if any(k.startswith(("roi_heads.mask_head.predictor.", "backbone.fpn.lateral.")) for k in state):
        raise ValueError(
            f"{path} holds this library's own layout, but its config {config_file} is missing: "
            "save_model writes both, keep them side by side"
        )
    if variant is None:
        variant = torchvision_variant(state)
    try:
        return from_torchvision(state, variant, **options), {}
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
