"""The shipped fine-tuning recipe: COCO weights by name -> the user's classes, heads fresh; and
the warning when a run starts from random weights."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from maskrcnn.checkpoint.seeded import seeded_state_dict
from maskrcnn.engine import train as train_module
from maskrcnn.engine.config import load_config
from maskrcnn.inference import hub

from testing_utils import parity_keys

from .conftest import tiny_overrides

NAME = "torchvision:maskrcnn_resnet50_fpn"


@pytest.mark.slow  # an R50 (about 40 s on 2 shared cores); the name -> weights path is in tests/checkpoint/test_loader.py
def test_finetune_config_starts_from_coco_weights_with_fresh_heads(tiny_shapes, tmp_path, monkeypatch, capsys):
    # The seeded torchvision-layout R50 weights stand in for the published file, served from a
    # file:// URL with its true hash, so the name resolves exactly as it would online.
    published = tmp_path / "maskrcnn_resnet50_fpn_coco-local.pth"
    seeded = seeded_state_dict(parity_keys("v1"))
    torch.save(seeded, published)
    prefix = hashlib.sha256(published.read_bytes()).hexdigest()[:8]
    monkeypatch.setitem(hub.NAMED_WEIGHTS, NAME, dataclasses.replace(hub.NAMED_WEIGHTS[NAME], url=published.as_uri(),
                                                                     sha256_prefix=prefix))
    monkeypatch.setenv("MASKRCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    images = tiny_shapes.parent / "images"
    cfg = load_config("finetune_coco_to_custom.yaml", [
        f"data.train_annotations={tiny_shapes}", f"data.train_images={images}", "data.num_workers=0",
        "model.min_size=64", "model.max_size=64", "solver.batch_size=1", "solver.max_iter=1",
        f"train.output_dir={tmp_path / 'run'}", "train.progress=false", "train.tensorboard=false",
    ])
    assert cfg.model["weights"] == NAME and cfg.preset == "maskrcnn_resnet50_fpn"
    result = train_module.train(cfg)
    out, err = capsys.readouterr()
    assert "RANDOM weights" not in out + err
    assert f"initial weights {NAME}: loaded" in out and "skipped for shape" in out
    state = result.model.state_dict()
    # the class-specific layers are new (4 classes + background), the frozen stem is COCO's as it was
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4
    assert state["roi_heads.mask_head.predictor.weight"].shape[0] == 4
    assert torch.equal(state["backbone.body.conv1.weight"], seeded["backbone.body.conv1.weight"])


def test_random_weights_are_announced(tiny_shapes, tmp_path, capsys):
    train_module.train(load_config(None, tiny_overrides(tiny_shapes, tmp_path / "run", max_iter=1)))
    err = capsys.readouterr().err
    assert "WARNING: training from RANDOM weights: model.weights is not set" in err
    assert "finetune_coco_to_custom.yaml" in err
