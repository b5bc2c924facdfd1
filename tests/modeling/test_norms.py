"""Norm layers of the backbone and the heads (ModelConfig.backbone_norm / head_norm): each one
builds, trains a step and survives a save / load; the defaults are the published models'."""
import pytest
import torch
from torch import nn

from maskrcnn.checkpoint.native import load_native, save_model
from maskrcnn.engine.config import ConfigError, load_config
from maskrcnn.engine.distributed import DistInfo, sync_batch_norm
from maskrcnn.modeling import ModelConfig, build_model
from maskrcnn.modeling.layers import FrozenBatchNorm2d, SyncableBatchNorm2d

from .test_model import SMALL, synthetic_sample

# SMALL's narrowest layers have 8 channels
NARROW = dict(SMALL, gn_groups=8)
NORM_TYPES = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "sync_bn": SyncableBatchNorm2d,
              "gn": nn.GroupNorm}


def norm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm))]


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "sync_bn", "gn"])
def test_each_norm_builds_trains_a_step_and_round_trips(norm, tmp_path):
    head = "none" if norm == "frozen_bn" else norm
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**NARROW, "backbone_norm": norm, "head_norm": head}))
    body_norms = norm_layers(model.backbone.body)
    assert body_norms and all(type(m) is NORM_TYPES[norm] for m in body_norms)
    head_norms = norm_layers(model.backbone.fpn) + norm_layers(model.roi_heads)
    assert all(type(m) is NORM_TYPES[norm] for m in head_norms) and (len(head_norms) > 0) == (head != "none")

    image, target = synthetic_sample()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = model([image], [target]).losses
    sum(losses.values()).backward()
    optimizer.step()
    assert all(torch.isfinite(v) for v in losses.values())
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    stem_norm = "backbone.body.bn1."
    if norm == "frozen_bn":  # fixed statistics and affine: nothing of the norm moves
        assert not any(k.startswith(stem_norm) for k in changed)
    else:  # trainable affine (and, for batch norms, statistics from the batch)
        assert stem_norm + "weight" in changed and stem_norm + "bias" in changed
        assert (stem_norm + "running_mean" in changed) == (norm != "gn")
    assert "backbone.body.layer1.0.conv1.weight" in changed

    model.eval()
    with torch.no_grad():
        expected = model([image]).detections[0]
    path = save_model(model, tmp_path / "model.safetensors")
    loaded = load_native(path).eval()
    assert loaded.config.backbone_norm == norm and loaded.config.head_norm == head
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        got = loaded([image]).detections[0]
    torch.testing.assert_close(got.boxes, expected.boxes, rtol=0, atol=0)
    torch.testing.assert_close(got.scores, expected.scores, rtol=0, atol=0)


def test_defaults_are_the_published_models_norms():
    """v1: frozen BN in the backbone, no norm in the heads; v2: frozen BN backbone, batch-norm heads."""
    v1 = build_model(ModelConfig.from_dict(SMALL))
    assert all(type(m) is FrozenBatchNorm2d for m in norm_layers(v1.backbone.body))
    assert norm_layers(v1.backbone.fpn) == [] and norm_layers(v1.roi_heads) == []
    v2 = build_model(ModelConfig.from_dict({**SMALL, "variant": "v2"}))
    assert all(type(m) is FrozenBatchNorm2d for m in norm_layers(v2.backbone.body))
    assert norm_layers(v2.roi_heads) and all(type(m) is nn.BatchNorm2d for m in norm_layers(v2.roi_heads))


def test_frozen_stages_of_a_batch_norm_backbone_freeze_their_statistics():
    """trainable_backbone_layers=3 freezes stem and c2: their batch norms become frozen ones
    (statistics do not drift with training batches), later stages keep batch norm."""
    model = build_model(ModelConfig.from_dict({**SMALL, "backbone_norm": "bn", "trainable_backbone_layers": 3}))
    body = model.backbone.body
    assert type(body.bn1) is FrozenBatchNorm2d and all(type(m) is FrozenBatchNorm2d for m in norm_layers(body.layer1))
    assert all(type(m) is nn.BatchNorm2d for m in norm_layers(body.layer2))
    assert not any(p.requires_grad for p in body.layer1.parameters())
    model.train()
    frozen, trained = body.layer1[0].bn1.running_mean.clone(), body.layer2[0].bn1.running_mean.clone()
    body(torch.rand(1, 3, 64, 64))
    assert torch.equal(body.layer1[0].bn1.running_mean, frozen)
    assert not torch.equal(body.layer2[0].bn1.running_mean, trained)


def test_group_norm_heads_have_the_v2_layout():
    """GN heads are torchvision v2's heads with GroupNorm in place of BatchNorm: the same
    tensors (names, shapes) less the batch statistics."""
    bn = build_model(ModelConfig.from_dict({**NARROW, "variant": "v2"})).state_dict()
    gn = build_model(ModelConfig.from_dict({**NARROW, "variant": "v2", "head_norm": "gn"})).state_dict()
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    heads = [k for k in bn if not k.startswith("backbone.body.")]
    expected = {k: bn[k].shape for k in heads if not k.endswith(statistics)}
    assert {k: v.shape for k, v in gn.items() if not k.startswith("backbone.body.")} == expected
    assert any(k.endswith("running_var") for k in heads)  # there were statistics to drop


@pytest.mark.parametrize("options, message", [
    ({"backbone_norm": "batchnorm"}, "backbone_norm must be one of frozen_bn, bn, sync_bn, gn, got 'batchnorm'"),
    ({"head_norm": "frozen_bn"}, "head_norm must be null (the variant's) or one of none, bn, sync_bn, gn"),
    ({"gn_groups": 0}, "gn_groups must be a positive integer"),
])
def test_bad_norm_options_are_named(options, message):
    with pytest.raises(ValueError) as e:
        ModelConfig.from_dict({**SMALL, **options})
    assert message in str(e.value)


def test_group_count_that_does_not_divide_a_layer_is_named():
    with pytest.raises(ValueError, match="a layer of 8 channels cannot be split into 32 groups; set gn_groups"):
        build_model(ModelConfig.from_dict({**SMALL, "backbone_norm": "gn"}))


def test_yaml_norm_options_are_read_and_checked():
    cfg = load_config(None, ["model.backbone_norm=gn", "model.head_norm=gn", "model.gn_groups=16"])
    assert cfg.model_overrides()["backbone_norm"] == "gn" and cfg.model_overrides()["gn_groups"] == 16
    with pytest.raises(ConfigError, match="model: backbone_norm must be one of"):
        load_config(None, ["model.backbone_norm=syncbn"])


def test_sync_bn_becomes_torch_sync_batch_norm_only_under_ddp():
    model = build_model(ModelConfig.from_dict({**NARROW, "backbone_norm": "sync_bn", "head_norm": "bn"}))
    one_process = DistInfo()
    assert sync_batch_norm(model, torch.device("cpu"), one_process) == 0  # plain batch norm in one process
    with pytest.raises(ValueError, match="'sync_bn' with 2 processes needs CUDA devices"):
        sync_batch_norm(model, torch.device("cpu"), DistInfo(rank=0, world_size=2))
    weight = model.backbone.body.bn1.weight
    n = len(norm_layers(model.backbone.body))
    # converting needs no process group (only its forward does), so it is checked without GPUs
    assert sync_batch_norm(model, torch.device("cuda"), DistInfo(rank=0, world_size=2)) == n
    assert type(model.backbone.body.bn1) is nn.SyncBatchNorm
    assert model.backbone.body.bn1.weight is weight  # the optimizer's parameters stay the model's
    # only the layers that asked for it: the "bn" heads keep per-process batch norm
    assert all(type(m) is nn.BatchNorm2d for m in norm_layers(model.backbone.fpn))


def _unfolded(conv: nn.Conv2d, norm: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return norm(torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding))


def test_frozen_norm_fold_is_cached_without_gradients_and_refolded_on_any_change():
    from maskrcnn.modeling.layers import conv_norm

    torch.manual_seed(0)
    conv, norm = nn.Conv2d(3, 4, 3, padding=1, bias=False), FrozenBatchNorm2d(4)
    for buffer in (norm.weight, norm.bias, norm.running_mean):
        buffer.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 5, 5)

    def check():
        with torch.no_grad():
            got = conv_norm(conv, norm, x)
        torch.testing.assert_close(got, _unfolded(conv, norm, x), rtol=1e-5, atol=1e-5)
        return got

    first = check()
    with torch.no_grad():
        assert torch.equal(conv_norm(conv, norm, x), first)
        cached = norm.__dict__["_folded_cache"][1][0]
        conv_norm(conv, norm, x)
        assert norm.__dict__["_folded_cache"][1][0] is cached  # reused, not refolded
        conv.weight.mul_(2.0)  # in place: the version counter moves
    check()
    norm.load_state_dict({k: v * 0.5 for k, v in norm.state_dict().items()})
    check()
    norm.eps = 0.1
    check()
    conv.double(), norm.double()
    with torch.no_grad():
        assert conv_norm(conv, norm, x.double()).dtype == torch.float64
    # with gradients the fold is rebuilt every call, so the conv's weight gets its gradient
    out = conv_norm(conv, norm, x.double())
    out.sum().backward()
    assert conv.weight.grad is not None


def test_frozen_norm_fold_follows_the_autocast_dtype():
    from maskrcnn.modeling.layers import conv_norm

    conv, norm = nn.Conv2d(3, 4, 1, bias=False), FrozenBatchNorm2d(4)
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv_norm(conv, norm, x).dtype == torch.bfloat16
        assert conv_norm(conv, norm, x).dtype == torch.float32
