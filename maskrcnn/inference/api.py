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
  - a name: "torchvision:maskrcnn_resnet50_fpn" or "..._v2", "torchvision:fasterrcnn_resnet50_fpn"
    (or "..._v2"), "torchvision:keypointrcnn_resnet50_fpn", or one of Detectron2's model zoo,
    "detectron2:mask_rcnn_R_50_FPN_3x" (_1x, R_101_FPN_3x), fetched into the cache (see `hub.py`);
  - a Detectron2 Mask R-CNN FPN checkpoint: a model zoo .pkl (read by a restricted unpickler,
    never `pickle.load`) or a Detectron2 .pth; labels are Detectron2's class index 0..79,
    written to COCO results as COCO category ids;
  - a graph written by `maskrcnn export` (`model.onnx`), run with ONNX Runtime (the optional
    extra: pip install -e ".[onnx]"); class names and category ids come from its metadata.
Every one is opened by `maskrcnn.checkpoint.loader.open_checkpoint`, which `eval` and training's
`model.weights=` use too.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from ..checkpoint.loader import build_from_checkpoint, open_checkpoint
from ..device import check_precision, resolve_device
from ..io import DEFAULT_MAX_PIXELS, ImageSource
from ..modeling.mask_rcnn import MaskRCNN
from .draw import draw_instances
from .outputs import label_map as combine_masks
from .outputs import to_coco_results, write_coco_json, write_image, write_label_map_png
from .sources import InputItem, iter_inputs

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
    frame: int | None = None  # the frame of a video or animated image `source` (0-based)
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
        frame = "" if self.frame is None else f", frame={self.frame}"
        return f"Result({len(self)} detections [{shown}{more}], image {h}x{w}, source={self.source!r}{frame})"

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
        (the label map, a palette PNG of the instance ids), NAME being `name` or the input
        file's stem (with _FRAME, six digits, for a frame of a video or animated image).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            return [write_coco_json(path, self.to_coco(image_id))]
        if suffix in Image.registered_extensions():
            return [write_image(path, self.draw())]
        if name is None:
            name = Path(self.source).stem if self.source and not self.source.startswith("<") else "image"
            if self.frame is not None:
                name = f"{name}_{self.frame:06d}"
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
        device: str | torch.device = "auto",
        precision: str = "fp32",
        class_names: Sequence[str] | None = None,
        category_ids: Mapping[int, int] | Sequence[int] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if not isinstance(model, torch.nn.Module):  # an exported graph runs in ONNX Runtime on the CPU
            device = "cpu" if device == "auto" else device
            model.to(device)  # its own error, which says so, for any other device
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        if isinstance(self.model, MaskRCNN):
            self.model.precision = self.precision  # the model keeps decoding, NMS and paste in float32
        elif self.precision != "fp32":
            raise ValueError(f"precision {self.precision!r} is for PyTorch models; an ONNX graph runs as exported (float32)")
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
                f"device={self.device}, precision={self.precision})")

    def predict(
        self,
        images: ImageSource | Sequence[ImageSource],
        score_threshold: float | None = 0.5,
        mask_threshold: float | None = 0.5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        keep_images: bool = True,
        stream: bool = False,
    ) -> list[Result] | Iterator[Result]:
        """One `Result` per image, in input order: a list, or with stream=True an iterator
        that reads and predicts `batch_size` images at a time (`Predictor.stream`), so a long
        video or a big folder never sits in memory whole.

        images: what `maskrcnn predict` takes, alone or in a list: an image file, a folder (its
            image and video files, sorted), a glob pattern ("shots/*.jpg", "**" recurses), a
            video file (each frame, through PyAV: the [video] extra) or an animated GIF / WebP /
            PNG (each frame); or a PIL image, a numpy array ((H, W) or (H, W, C), channels last)
            or a tensor ((3, H, W) channels first, or a (N, 3, H, W) batch). Grayscale, RGBA,
            palette, 16-bit and EXIF-rotated images are converted (see `maskrcnn.io.load_image`).
            A frame's Result has `source` = the file and `frame` = its index.
        score_threshold: keep detections with score > score_threshold (None: the model's own
            box_score_thresh). It is applied before the mask head, which therefore runs only
            on the detections returned.
        mask_threshold: masks are `probability >= mask_threshold` (bool); None keeps the
            float probabilities.
        batch_size: images per forward pass. Images are batched only with others that pad
            to the same size, so a result never depends on its batch neighbours.
        keep_images: keep each input tensor on its Result for `draw()` / `save()`.

        Raises `maskrcnn.io.ImageLoadError` (a subclass of ValueError) naming any image that cannot
        be read or is above `max_pixels`, FileNotFoundError naming a path, folder or pattern
        that gives no file (with stream=True: when the iteration reaches it).
        """
        results = self.stream(images, score_threshold, mask_threshold, batch_size, keep_images=keep_images)
        return results if stream else list(results)

    def stream(
        self,
        images: ImageSource | Sequence[ImageSource],
        score_threshold: float | None = 0.5,
        mask_threshold: float | None = 0.5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        keep_images: bool = True,
    ) -> Iterator[Result]:
        """`predict` as a generator: Results one by one, in input order, as each batch of
        `batch_size` images is done (Ultralytics' `stream=True`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        chunk: list[InputItem] = []
        for item in iter_inputs(images):
            chunk.append(item)
            if len(chunk) == batch_size:
                yield from self._predict_items(chunk, score_threshold, mask_threshold, batch_size, keep_images)
                chunk = []
        if chunk:
            yield from self._predict_items(chunk, score_threshold, mask_threshold, batch_size, keep_images)

    def _predict_items(self, items: list[InputItem], score_threshold, mask_threshold, batch_size: int,
                       keep_images: bool) -> list[Result]:
        tensors = [item.load(self.max_pixels) for item in items]
        sources = [str(item.path) if item.path is not None else None for item in items]
        results = self.predict_tensors(tensors, sources, score_threshold, mask_threshold, batch_size,
                                       keep_images=keep_images)
        for item, result in zip(items, results):
            result.frame = item.frame
        return results

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
                for i, det in zip(chunk, self._forward(batch, score_threshold, mask_threshold)):
                    results[i] = self._to_result(det, images[i], sources[i], mask_threshold, keep_images)
        return results

    @torch.inference_mode()
    def _forward(self, images: list[Tensor], score_threshold: float | None, mask_threshold: float | None = None):
        # The override is passed down to the box post-processing, which runs before the mask
        # head: a caller's 0.5 means masks are computed and pasted only for what is returned,
        # not for every detection above the model's 0.05 (benchmarks/postprocess.py).
        batch = [img.to(self.device, torch.float32) for img in images]
        if isinstance(self.model, MaskRCNN) and mask_threshold is not None:
            # thresholded while pasting: a 50 MP image with 20 detections then holds 1 GB of
            # bool masks instead of 4 GB of float ones
            return self.model(batch, score_thresh=score_threshold, mask_threshold=mask_threshold).detections
        return self.model(batch, score_thresh=score_threshold).detections

    def _to_result(self, det, image: Tensor, source: str | None, mask_threshold: float | None,
                   keep_image: bool) -> Result:
        masks = det.masks
        if masks is not None:
            if masks.dtype != torch.bool:  # bool: already thresholded while pasting
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


# ---------------------------------------------------------------------------------------------
# Loading


def load_model(
    source: str | os.PathLike | MaskRCNN,
    *,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    variant: str | None = None,
    class_names: Sequence[str] | None = None,
    category_ids: Mapping[int, int] | Sequence[int] | None = None,
    download: bool | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **options: Any,
) -> Predictor:
    """A `Predictor` from a checkpoint (see the module docstring for what is accepted).

    device: "auto" (CUDA, else MPS, else CPU), "cpu", "cuda", "cuda:N", "mps"
        (`maskrcnn.device.resolve_device`; an unavailable one is a DeviceError, a ValueError).
    precision: "fp32", "bf16" (CPU or CUDA) or "fp16" (CUDA only): convolutions and matrix
        products under that autocast, box decoding, NMS and the paste in float32.
    variant: "v1" / "v2" / "faster" / "faster_v2" / "keypoint" for torchvision files (default:
        read from the state dict's layout; Faster R-CNN results have no masks, Keypoint R-CNN's
        have keypoints instead).
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
        model, names, ids = source, source.class_names, None
    else:
        model, names, ids = build_from_checkpoint(open_checkpoint(source, download=download), variant, **options)
    class_names = class_names if class_names is not None else names
    category_ids = category_ids if category_ids is not None else ids
    return Predictor(model, device=device, precision=precision, class_names=class_names,
                     category_ids=category_ids, max_pixels=max_pixels)
