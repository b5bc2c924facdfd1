"""benchmarks/train_cpu.py times ours against torchvision "with the same settings": that holds
only if both sides start from the same tensors. Here its initial weights go into both sides of
the R18-FPN config, and the two models, in eval mode on one image, agree detection for detection
(score threshold 0, so the comparison covers every kept box, not just the few confident ones
random weights give)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from reference_utils import coffee_image, torchvision  # noqa: F401

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_train_cpu():
    spec = importlib.util.spec_from_file_location("benchmark_train_cpu", BENCHMARKS / "train_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_sides_start_from_the_same_model():
    bench = load_train_cpu()
    cfg = bench.CONFIGS["r18_256"]
    weights = bench.initial_weights(cfg)
    (ours, _, _), (tv, _, _) = (bench.prepare(name, cfg, weights) for name in ("maskrcnn", "torchvision"))
    ours.eval().roi_heads.score_thresh = 0.0
    tv.eval().roi_heads.score_thresh = 0.0
    image = coffee_image(256, 256, seed=3)
    with torch.no_grad():
        got = ours([image]).detections[0]
        want = tv([image])[0]
    assert len(want["boxes"]) > 20  # enough boxes for the comparison to mean something
    assert torch.equal(got.labels, want["labels"])
    torch.testing.assert_close(got.boxes, want["boxes"], atol=1e-2, rtol=0)
    torch.testing.assert_close(got.scores, want["scores"], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.masks, want["masks"][:, 0], atol=2 / 255, rtol=0)
