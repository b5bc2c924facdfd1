"""Run an exported graph with ONNX Runtime, behind the interface of `MaskRCNN` that
`maskrcnn.inference.Predictor` uses, so `load_model("model.onnx")` gives the same predictor and
`Result`s as eager weights.

    model = OnnxModel("model.onnx", threads=2)
    out = model([image1, image2], score_thresh=0.5)     # MaskRCNNOutput, as MaskRCNN.forward
    out.detections[0].masks                             # (R, H, W) pasted probabilities

Masks of a graph exported without paste are pasted here with `paste_masks` (the eager model's
own paste, so both paths give the same masks).
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..modeling.build import ModelConfig
from ..modeling.mask_rcnn import check_images
from ..modeling.transform import ImageTransform
from ..ops import masks as _masks
from ..ops.masks import paste_masks
from ..structures import Detections, MaskRCNNOutput

__all__ = ["OnnxModel", "paste_masks", "require_onnxruntime"]


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "running an .onnx model needs ONNX Runtime: pip install -e \".[onnx]\" (or pip install onnxruntime)"
        ) from None
    return onnxruntime


class OnnxModel:
    """An exported Mask R-CNN in an ONNX Runtime session (CPU unless `providers` say otherwise).

    Attributes as `MaskRCNN`'s where the predictor reads them: num_classes, class_names,
    config (the exported model's ModelConfig), transform (its resize settings), plus
    category_ids and the metadata as written by `export_onnx`."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 providers: list[str] | None = None, session_options=None):
        ort = require_onnxruntime()
        from .onnx import FORMAT

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        options = session_options or ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        if session_options is None:
            # ORT warns that score_threshold (an input with a default) is not a constant: by design
            options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if meta.get("maskrcnn.format") != FORMAT:
            raise ValueError(f"{self.path} is not a Mask R-CNN graph written by maskrcnn export "
                             f"(metadata maskrcnn.format={meta.get('maskrcnn.format')!r})")
        self.metadata = meta
        # fields this version does not know (a graph from a newer one) are not needed to run it
        known = {f.name for f in fields(ModelConfig)}
        self.config = ModelConfig.from_dict({k: v for k, v in json.loads(meta["config"]).items() if k in known})
        self.num_classes = int(meta["num_classes"])
        self.class_names = json.loads(meta["class_names"])
        ids = json.loads(meta["category_ids"])
        self.category_ids = {int(k): int(v) for k, v in ids.items()} if isinstance(ids, dict) else ids
        self.pasted = json.loads(meta["paste"])
        # the box score threshold when a call gives none (the graph's default unless changed)
        self.score_thresh = float(meta["box_score_thresh"])
        c = self.config
        self.transform = ImageTransform(min_size=c.min_size, max_size=c.max_size, image_mean=c.image_mean,
                                        image_std=c.image_std)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __repr__(self) -> str:
        return f"OnnxModel({self.path}, {self.config.variant}, classes={self.num_classes - 1}, paste={self.pasted})"

    # The module interface the predictor relies on.
    def to(self, device: str | torch.device) -> "OnnxModel":
        if torch.device(device).type != "cpu":
            raise ValueError(f"an ONNX model runs in ONNX Runtime on the CPU here, not on {device}; "
                             "pass device='cpu' (or build OnnxModel with providers=[...])")
        return self

    def eval(self) -> "OnnxModel":
        return self

    def run(self, images: list[Tensor], score_thresh: float | None = None) -> dict[str, np.ndarray]:
        """The graph's raw outputs (see maskrcnn.export.onnx) for a list of (3, Hi, Wi) images."""
        images = check_images(images)
        height = max(int(img.shape[-2]) for img in images)
        width = max(int(img.shape[-1]) for img in images)
        batch = np.zeros((len(images), 3, height, width), dtype=np.float32)
        for img, slot in zip(images, batch):
            slot[:, : img.shape[-2], : img.shape[-1]] = img.detach().to("cpu", torch.float32).numpy()
        feeds = {
            "images": batch,
            "image_sizes": np.array([[int(img.shape[-2]), int(img.shape[-1])] for img in images], dtype=np.int64),
        }
        threshold = self.score_thresh if score_thresh is None else score_thresh
        feeds["score_threshold"] = np.array(threshold, dtype=np.float32)
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    def __call__(self, images: list[Tensor], targets=None, *, detections: bool | None = None,
                 paste_masks: bool = True, score_thresh: float | None = None) -> MaskRCNNOutput:
        """As `MaskRCNN.forward` in eval mode: one Detections per image, boxes in its pixels,
        masks pasted at its size (or (R, 28, 28) probabilities with paste_masks=False)."""
        if targets is not None:
            raise ValueError("an ONNX model computes no losses: call it without targets")
        images = check_images(images)
        out = {k: torch.from_numpy(v) for k, v in self.run(images, score_thresh).items()}
        counts = torch.bincount(out["image_index"], minlength=len(images)).tolist()
        parts = {k: v.split(counts) for k, v in out.items()}
        results = []
        for i, img in enumerate(images):
            size = (int(img.shape[-2]), int(img.shape[-1]))
            boxes = parts["boxes"][i]
            masks = parts["mask_probs"][i]
            if paste_masks:
                if "masks" in parts:
                    masks = parts["masks"][i][:, : size[0], : size[1]]
                else:
                    masks = _masks.paste_masks(masks, boxes, size)
            results.append(Detections(boxes=boxes, scores=parts["scores"][i], labels=parts["labels"][i], masks=masks))
        return MaskRCNNOutput(detections=results)
