"""Checkpoint files: atomic writes, the `last` pointer, keeping the last K, RNG round trips."""
import json
import random

import numpy as np
import pytest
import torch

from maskrcnn import build_preset
from maskrcnn.checkpoint import load_native
from maskrcnn.engine.checkpointer import (
    POINTER, Checkpointer, capture_rng_state, load_initial_weights, restore_rng_state,
)


@pytest.fixture(scope="module")
def model():
    return build_preset("maskrcnn_resnet18_small", num_classes=3, class_names=["a", "b"])


def test_save_points_at_the_newest_and_keeps_the_last_k(tmp_path, model):
    ckpt = Checkpointer(tmp_path, keep=2)
    assert ckpt.latest() is None
    for it in (10, 20, 30):
        ckpt.save(it, model, {"optimizer": {"x": torch.ones(2)}, "rng": []})
    assert json.loads((tmp_path / POINTER).read_text())["iteration"] == 30
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([POINTER, "model_0000020.json", "model_0000020.safetensors", "state_0000020.pt",
                            "model_0000030.json", "model_0000030.safetensors", "state_0000030.pt"])
    record = ckpt.latest()
    fresh = build_preset("maskrcnn_resnet18_small", num_classes=3)
    state = ckpt.load(record, fresh)
    assert state["iteration"] == 30 and torch.equal(state["optimizer"]["x"], torch.ones(2))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # the weights load on their own, with class names, as a model file
    assert load_native(record["model"]).class_names == ["a", "b"]


def test_pointer_to_missing_files_is_a_clear_error(tmp_path, model):
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(1, model, {})
    (tmp_path / "state_0000001.pt").unlink()
    with pytest.raises(RuntimeError, match="state_0000001.pt, which does not exist"):
        ckpt.latest()


def test_rng_state_round_trip_and_weights_only_load(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    np.random.randn()  # leave a cached gaussian in numpy's state
    state = capture_rng_state()
    torch.save({"rng": [state]}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    restore_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"][0])
    got = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]


def test_initial_weights_skip_shape_mismatches(tmp_path, model):
    from maskrcnn.checkpoint import save_model

    path = save_model(model, tmp_path / "m.safetensors")
    other = build_preset("maskrcnn_resnet18_small", num_classes=5)  # other class count
    report = load_initial_weights(other, path)
    assert "skipped for shape" in report
    key = "backbone.body.conv1.weight"
    assert torch.equal(other.state_dict()[key], model.state_dict()[key])
    with pytest.raises(ValueError, match="another architecture"):
        load_initial_weights(other, _unrelated(tmp_path))


def _unrelated(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "unrelated.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(path))
    return path
