"""A model trained by `maskrcnn train` (the demo's config: v2 heads, batch norm) goes through
`maskrcnn export` (no paste: the runtime pastes) and `maskrcnn predict --weights model.onnx`
with every output format, and gives what its weights give; also at other sizes and in a batch
of two sizes."""
from __future__ import annotations

import contextlib
import io
import json

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import maskrcnn
from maskrcnn.inference.api import load_model
from maskrcnn.cli import main as cli_main
from maskrcnn.data import generate_shapes_dataset

from export_helpers import assert_same_detections, make_image
from testing_utils import need_export

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
need_export()

# The demo's config (v2 heads) made small enough for a few seconds of training on 2 cores.
CONFIG = Path(maskrcnn.__file__).parent / "configs" / "shapes_cpu.yaml"
TINY_MODEL = {
    "min_size": 96, "max_size": 96, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 30, "box_detections_per_img": 10,
}
SCORE = "0.05"


def cli(*argv) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli_main([str(a) for a in argv])
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    annotations = generate_shapes_dataset(root / "data", 12, seed=2, image_size=(96, 96), size_range=(16.0, 40.0))
    overrides = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
        f"data.train_annotations={annotations}", f"data.train_images={annotations.parent / 'images'}",
        "data.val_annotations=", "data.val_images=", "solver.batch_size=2", "solver.max_iter=10",
        "solver.warmup_iters=5", "train.checkpoint_period=10", "train.log_period=10",
        f"train.output_dir={root / 'run'}", "train.progress=false", "train.tensorboard=false",
    ]
    code, err = cli("train", "--config", CONFIG, *overrides)
    assert code == 0, err
    weights = root / "run" / "model_final.safetensors"
    code, err = cli("export", "--weights", weights, "--out", root / "model.onnx")
    assert code == 0, err
    assert "wrote" in err
    return weights, root / "model.onnx", annotations.parent / "images"


def predict(weights, images, out):
    code, err = cli("predict", images, "--weights", weights, "--out", out, "--label-maps",
                    "--csv", out / "masks.csv", "--score-threshold", SCORE, "-q")
    assert code == 0, err
    return json.loads((out / "results.json").read_text())


def test_trained_model_predicts_the_same_through_onnx(trained, tmp_path):
    weights, onnx_path, images = trained
    eager = predict(weights, images, tmp_path / "eager")
    ours = predict(onnx_path, images, tmp_path / "onnx")
    assert len(eager) > 0, "the trained model detects nothing above the threshold: nothing compared"
    assert len(ours) == len(eager)
    key = lambda d: (d["image_id"], d["category_id"], round(d["score"], 3))  # noqa: E731
    for e, o in zip(sorted(eager, key=key), sorted(ours, key=key)):
        assert (e["image_id"], e["category_id"]) == (o["image_id"], o["category_id"])
        assert abs(e["score"] - o["score"]) < 1e-4
        np.testing.assert_allclose(e["bbox"], o["bbox"], atol=1e-2)
        assert abs(e["area"] - o["area"]) <= max(2, 0.01 * e["area"])
    # every output format was written, the same files for both
    for sub in ("overlays", "label_maps"):
        names = sorted(p.name for p in (tmp_path / "eager" / sub).iterdir())
        assert names and names == sorted(p.name for p in (tmp_path / "onnx" / sub).iterdir())
        for name in names:
            a = np.array(Image.open(tmp_path / "eager" / sub / name))
            b = np.array(Image.open(tmp_path / "onnx" / sub / name))
            assert a.shape == b.shape
            if sub == "label_maps":  # instance numbers follow the scores: compare what is covered
                a, b = a > 0, b > 0
            differ = (a != b).any(axis=-1) if a.ndim == 3 else (a != b)
            assert differ.mean() < 0.01
    rows = lambda p: [line.split(",")[0] for line in p.read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "eager" / "masks.csv") == rows(tmp_path / "onnx" / "masks.csv")


@pytest.mark.parametrize("sizes", [[(60, 130)], [(140, 70)], [(100, 120), (75, 90)]], ids=["landscape", "portrait", "batch"])
def test_trained_v2_at_other_sizes(trained, sizes):
    import torch

    weights, onnx_path, _ = trained
    eager, exported = load_model(weights).model, load_model(onnx_path).model
    assert exported.config.variant == "v2" and not exported.pasted
    images = [make_image(i + 60, h, w) for i, (h, w) in enumerate(sizes)]
    with torch.no_grad():
        refs = eager(images, score_thresh=0.05).detections
    for ref, det in zip(refs, exported(images, score_thresh=0.05).detections):
        assert len(ref) > 0
        assert_same_detections(ref, det)
