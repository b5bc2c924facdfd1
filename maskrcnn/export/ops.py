"""The two detection operators of the exported graph, as PyTorch custom ops with the semantics
of their ONNX counterparts, so the graph module runs eagerly (on our own ops) and exports to
single ONNX nodes (with the dynamo exporter's `custom_translation_table`).

    nms(boxes (B, S, 4), scores (B, C, S), iou_threshold, score_threshold) -> (M, 3) int64
        ONNX NonMaxSuppression (center_point_box=0, no output limit): for every batch b and
        class c, greedy NMS over the boxes of b scoring > score_threshold in class c; each row
        is (b, c, box index). Boxes are shared by the classes of a batch entry.
    roi_align(features (N, C, H, W), boxes (R, 4), batch_index (R,) int64, output_size,
              spatial_scale, sampling_ratio, aligned) -> (R, C, P, P)
        ONNX RoiAlign, mode "avg"; aligned=False is coordinate_transformation_mode
        "output_half_pixel" (torchvision's RoIAlign), aligned=True is "half_pixel" (opset 16+).

Both are exact for what the graph needs: the eager versions call maskrcnn.ops (torchvision's
arithmetic); ONNX Runtime's kernels compute the same IoU ((a1 + a2) - inter, "> threshold" in
float32, ties to the lower index) and the same RoIAlign sampling.
"""
# No `from __future__ import annotations` here: torch.library.custom_op reads the signature's
# annotations as objects, and torch 2.4 cannot resolve them from strings (2.13 can).
import torch
from torch import Tensor

from ..ops import batched_nms
from ..ops import roi_align as _roi_align

NAMESPACE = "maskrcnn_export"


@torch.library.custom_op(f"{NAMESPACE}::nms", mutates_args=())
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    num_batches, num_classes, num_boxes = scores.shape
    if num_batches * num_classes * num_boxes == 0:
        return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
    # One call for every (batch, class) pair: candidates are grouped by b * C + c.
    flat = scores.reshape(-1)
    cand = torch.nonzero(flat > score_threshold).squeeze(1)
    group = cand // num_boxes
    box = cand % num_boxes
    batch = group // num_classes
    keep = batched_nms(boxes[batch, box], flat[cand], group, iou_threshold)
    # ONNX order: by batch, then class, then descending score within the class
    keep = keep[torch.sort(group[keep], stable=True).indices]
    return torch.stack((batch[keep], group[keep] % num_classes, box[keep]), dim=1)


@nms.register_fake
def _(boxes, scores, iou_threshold, score_threshold):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


@torch.library.custom_op(f"{NAMESPACE}::roi_align", mutates_args=())
def roi_align(
    features: Tensor, boxes: Tensor, batch_index: Tensor, output_size: int, spatial_scale: float,
    sampling_ratio: int, aligned: bool,
) -> Tensor:
    rois = torch.cat([batch_index[:, None].to(boxes.dtype), boxes], dim=1)
    return _roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned).contiguous()


@roi_align.register_fake
def _(features, boxes, batch_index, output_size, spatial_scale, sampling_ratio, aligned):
    return features.new_empty((boxes.shape[0], features.shape[1], output_size, output_size))


def onnx_translations() -> dict:
    """custom_translation_table entries: each op as one ONNX node of the default domain
    (opset 18 definitions; RoiAlign's coordinate modes exist since opset 16)."""
    from onnxscript import opset18 as op

    def nms_onnx(boxes, scores, iou_threshold: float, score_threshold: float):
        no_limit = op.Constant(value_ints=[2**31 - 1])
        return op.NonMaxSuppression(
            boxes, scores, no_limit, op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[score_threshold]), center_point_box=0,
        )

    def roi_align_onnx(features, boxes, batch_index, output_size: int, spatial_scale: float,
                       sampling_ratio: int, aligned: bool):
        return op.RoiAlign(
            features, boxes, batch_index, mode="avg", output_height=output_size, output_width=output_size,
            sampling_ratio=sampling_ratio, spatial_scale=spatial_scale,
            coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        )

    def stable_sort_onnx(self, stable: bool | None = None, dim: int = -1, descending: bool = False):
        # A full-length TopK is a stable sort: ONNX TopK puts the lower index first on ties.
        k = op.Reshape(op.Shape(self, start=dim, end=dim + 1 if dim != -1 else None), op.Constant(value_ints=[1]))
        return op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)

    return {torch.ops.maskrcnn_export.nms.default: nms_onnx,
            torch.ops.maskrcnn_export.roi_align.default: roi_align_onnx,
            torch.ops.aten.sort.stable: stable_sort_onnx}
