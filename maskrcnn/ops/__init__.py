"""Detection ops in plain, vectorized PyTorch (CPU and CUDA, autograd where training needs it)."""
from .boxes import (
    BBOX_XFORM_CLIP,
    BoxCoder,
    box_area,
    box_ioa,
    box_iou,
    clip_boxes,
    remove_small_boxes,
)
from .masks import mask_targets, paste_masks, paste_masks_detectron2
from .nms import batched_nms, nms
from .poolers import MultiScaleRoIAlign, assign_fpn_levels, boxes_to_rois
from .roi_align import roi_align, roi_pool, roi_warp

__all__ = [
    "BBOX_XFORM_CLIP", "BoxCoder", "box_area", "box_ioa", "box_iou", "clip_boxes",
    "remove_small_boxes", "mask_targets", "paste_masks", "paste_masks_detectron2", "batched_nms", "nms",
    "MultiScaleRoIAlign", "assign_fpn_levels", "boxes_to_rois", "roi_align", "roi_pool", "roi_warp",
]
