"""A tiny shapes dataset and a tiny training config: a few seconds per short run on 2 cores."""
from pathlib import Path

import pytest

from maskrcnn.data import generate_shapes_dataset

# The smallest settings that still exercise every part of the model.
TINY_MODEL = {
    "preset": "maskrcnn_resnet18_small", "min_size": 64, "max_size": 64,
    "anchor_sizes": [8, 16, 32, 64, 128], "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 32, "box_detections_per_img": 10,
}


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """16 images of 64x64 px; returns the annotations path (images/ beside it)."""
    root = tmp_path_factory.mktemp("tiny_shapes")
    return generate_shapes_dataset(root, 16, seed=1, image_size=(64, 64), size_range=(12.0, 30.0))


def tiny_overrides(annotations: Path, output_dir: Path, *, max_iter: int = 6, val: bool = False) -> list[str]:
    """key=value overrides for `maskrcnn train` without a config file."""
    images = annotations.parent / "images"
    items = [f"model.{k}={v}".replace("'", "") for k, v in TINY_MODEL.items()] + [
        f"data.train_annotations={annotations}", f"data.train_images={images}",
        "data.num_workers=0", "solver.batch_size=2", f"solver.max_iter={max_iter}", "solver.base_lr=0.01",
        "solver.warmup_iters=2", "train.checkpoint_period=2", "train.keep_checkpoints=2", "train.log_period=1",
        f"train.output_dir={output_dir}", "train.progress=false", "train.tensorboard=false",
    ]
    if val:
        items += [f"data.val_annotations={annotations}", f"data.val_images={images}", "train.eval_batch_size=8"]
    return items
