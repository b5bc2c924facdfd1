"""Detectron2 checkpoint files: the restricted unpickler, the rename table, the file kinds."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import maskrcnn
from maskrcnn.checkpoint.detectron2 import (
    UnsafePickleError,
    convert_detectron2_state_dict,
    infer_detectron2_config,
    read_detectron2_pickle,
)
from maskrcnn.modeling.build import DETECTRON2_OPTIONS, ModelConfig, build_model

from testing_utils import FIXTURES, SMALL_DETECTRON2, small_detectron2_state_dict

KEYS = json.loads((FIXTURES / "detectron2_parity" / "keys.json").read_text())


class _RunsShell:
    """What a hostile .pkl holds: unpickling it calls os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


def zoo_pickle(state: dict, protocol: int = 2) -> bytes:
    """The model zoo's layout: numpy arrays under "model", with its two extra keys."""
    arrays = {k: v.numpy() for k, v in state.items()}
    return pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True},
                        protocol=protocol)


@pytest.fixture(scope="module")
def small_state():
    return small_detectron2_state_dict()


def test_malicious_pickle_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = {"model": {"backbone.fpn_lateral2.weight": np.zeros((2, 2, 1, 1), np.float32)},
               "__author__": _RunsShell(f"touch {marker}")}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    for load in (read_detectron2_pickle, maskrcnn.from_detectron2, maskrcnn.load_model):
        with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|os|nt)\.system.*nothing was executed"):
            load(path)
    assert not marker.exists()
    # the same through every protocol, and for builtins that run code
    for protocol in (0, 2, 4, 5):
        with pytest.raises(UnsafePickleError):
            read_detectron2_pickle(pickle.dumps(_RunsShell(f"touch {marker}"), protocol=protocol))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        read_detectron2_pickle(pickle.dumps({"model": _CallsEval()}))
    assert not marker.exists()


def test_not_a_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pkl"
    path.write_bytes(b"\x80\x02}q\x00(X")  # truncated
    with pytest.raises(ValueError, match="could not read .*broken.pkl as a Detectron2 .pkl"):
        read_detectron2_pickle(path)


def test_rename_table_covers_detectron2s_r50_fpn():
    """Every name of Detectron2's state dict (the fixture's 307) maps onto a tensor of the
    preset's model with the same shape, and nothing is left over."""
    state = {k: torch.empty(shape) for k, shape, _ in KEYS}
    converted = convert_detectron2_state_dict(state)
    own = maskrcnn.build_preset("detectron2_mask_rcnn_R_50_FPN").state_dict()
    assert set(converted) == set(own)
    assert all(tuple(converted[k].shape) == tuple(own[k].shape) for k in own)
    config = infer_detectron2_config(state)
    assert config["depth"] == 50 and config["num_classes"] == 81 and config["base_width"] == 64


@pytest.mark.parametrize("protocol", [2, 5])
def test_zoo_pkl_loads_like_the_state_dict(tmp_path, small_state, protocol):
    path = tmp_path / "model_final.pkl"
    path.write_bytes(zoo_pickle(small_state, protocol))
    from_file = maskrcnn.from_detectron2(path)
    from_dict = maskrcnn.from_detectron2(small_state)
    for (k, a), b in zip(from_file.state_dict().items(), from_dict.state_dict().values()):
        assert torch.equal(a, b), k
    assert from_file.config.stride_in_1x1 and from_file.config.base_width == SMALL_DETECTRON2["base_width"]


def test_detectron2_pth_checkpoint_and_old_format_statistics(tmp_path, small_state):
    """Detectron2's training checkpoint (weights-only readable) loads; a checkpoint without
    FrozenBN statistics gets Detectron2's defaults (mean 0, var 1)."""
    path = tmp_path / "model_0004999.pth"
    torch.save({"model": small_state, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"base_lrs": [0.02], "last_epoch": 4999}, "iteration": 4999}, path)
    model = maskrcnn.from_detectron2(path)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight,
                       small_state["roi_heads.box_predictor.cls_score.weight"])

    old = {k: v for k, v in small_state.items() if not k.endswith(("running_mean", "running_var"))}
    model = maskrcnn.from_detectron2(old)
    assert torch.equal(model.backbone.body.bn1.running_mean, torch.zeros(8))
    assert torch.equal(model.backbone.body.layer4[2].bn3.running_var, torch.ones(256))


def test_other_detectron2_architectures_are_refused_by_name(small_state):
    # neither FPN nor a res5 RoI head (C4, which loads): a DC5 model
    dc5 = {k: v for k, v in small_state.items() if not k.startswith("backbone.fpn_")}
    with pytest.raises(ValueError, match="DC5 models"):
        maskrcnn.from_detectron2(dc5)
    agnostic = dict(small_state, **{"roi_heads.box_predictor.bbox_pred.weight": torch.zeros(4, 32)})
    with pytest.raises(ValueError, match="class-agnostic"):
        maskrcnn.from_detectron2(agnostic)
    with pytest.raises(ValueError, match="num_classes=5"):
        maskrcnn.from_detectron2(small_state, num_classes=5)


def test_layouts_agree_where_they_should(small_state):
    """background_last only rearranges the predictor's outputs: softmax scores and deltas of
    the classes are those of the torchvision layout holding the same rows in its own order."""
    d2 = build_model(ModelConfig.from_dict({**DETECTRON2_OPTIONS, **SMALL_DETECTRON2}))
    tv = build_model(ModelConfig.from_dict({**SMALL_DETECTRON2, "num_classes": 81}))
    w = small_state["roi_heads.box_predictor.cls_score.weight"]
    b = small_state["roi_heads.box_predictor.cls_score.bias"]
    d2.roi_heads.box_predictor.cls_score.load_state_dict({"weight": w, "bias": b})
    tv.roi_heads.box_predictor.cls_score.load_state_dict({"weight": torch.cat([w[-1:], w[:-1]]),
                                                         "bias": torch.cat([b[-1:], b[:-1]])})
    x = torch.randn(5, 32)
    logits_d2, deltas_d2 = d2.roi_heads.box_predictor(x)
    logits_tv, deltas_tv = tv.roi_heads.box_predictor(x)
    torch.testing.assert_close(logits_d2, logits_tv, rtol=0, atol=1e-6)  # BLAS may sum permuted rows apart
    assert deltas_d2.shape == deltas_tv.shape == (5, 324) and torch.equal(deltas_d2[:, :4], torch.zeros(5, 4))
    assert d2.roi_heads.mask_head.predictor.out_channels == 80
