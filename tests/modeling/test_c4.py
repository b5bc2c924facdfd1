"""The C4 model: ResNet res2-res4 backbone (stride 16), 15 anchors on its one map, res5 as the
RoI head shared by the box and mask branches, Detectron2's C4 weights by name."""
import pytest
import torch

from maskrcnn.checkpoint.detectron2 import detectron2_key_to_ours, from_detectron2
from maskrcnn.engine.checkpointer import load_initial_weights
from maskrcnn.modeling import ModelConfig, build_model
from maskrcnn.modeling.anchors import AnchorGenerator, cell_anchors
from maskrcnn.modeling.backbone.resnet import ResNet
from maskrcnn.modeling.build import PRESETS
from maskrcnn.modeling.roi_heads.box_head import box_losses
from maskrcnn.modeling.roi_heads.mask_head import mask_loss
from maskrcnn.modeling.roi_heads.res5_head import Res5RoIHeads

from .test_model import SMALL, synthetic_sample

SMALL_C4 = dict(SMALL, architecture="c4", base_width=16, anchor_sizes=(16, 32, 64, 128, 256))


def small_c4(seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_dict({**SMALL_C4, **options}))


def test_fifteen_anchors_on_one_level_size_major():
    gen = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=(0.5, 1.0, 2.0), strides=(16,))
    assert gen.num_anchors_per_location == 15
    (anchors,) = gen((64, 96), [(4, 6)])
    assert anchors.shape == (4 * 6 * 15, 4)
    # location (y=0, x=0): all ratios of 32, then of 64, ...; a square 32 anchor is +-16
    cells = anchors[:15]
    torch.testing.assert_close(cells, torch.cat([cell_anchors(s, (0.5, 1.0, 2.0)) for s in (32, 64, 128, 256, 512)]))
    assert cells[1].tolist() == [-16.0, -16.0, 16.0, 16.0] and cells[13].tolist() == [-256.0, -256.0, 256.0, 256.0]
    # the next location along x is one stride (16 px) to the right
    torch.testing.assert_close(anchors[15:30], cells + torch.tensor([16.0, 0.0, 16.0, 0.0]))
    with pytest.raises(ValueError, match="same number of anchor sizes"):
        AnchorGenerator(sizes=((32, 64), (128,)), strides=(16, 32))


def test_c4_structure():
    model = small_c4().eval()
    assert model.backbone.strides == [16] and not hasattr(model.backbone.body, "layer4")
    assert model.rpn.head.objectness.out_channels == 15 and model.rpn.head.objectness.in_channels == 64
    heads = model.roi_heads
    assert isinstance(heads, Res5RoIHeads)
    assert heads.box_pooler.strides == [16] and heads.box_pooler.output_size == 14
    assert heads.res5[0].conv1.stride == (2, 2)  # depth 18: a basic block's stride is in its first conv
    image, _ = synthetic_sample()
    features = model.backbone(image[None])
    assert len(features) == 1 and features[0].shape == (1, 64, 96 // 16, 128 // 16)
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 90.0, 70.0]])]
    res5 = heads.res5_features(features, boxes)
    assert res5.shape == (2, 128, 7, 7)  # 14x14 RoIAlign -> res5 with stride 2
    assert heads.box_head(res5).shape == (2, 128) and heads.mask_head(res5).shape == (2, 4, 14, 14)
    with torch.no_grad():
        det = model([image]).detections[0]
    assert det.masks.shape[1:] == image.shape[1:]


def test_full_size_c4_preset_is_the_papers():
    model = build_model(ModelConfig.from_dict({**PRESETS["maskrcnn_resnet50_c4"], "min_size": 64}))
    assert model.backbone.out_channels == 1024 and model.rpn.head.deltas.out_channels == 60
    res5 = model.roi_heads.res5
    assert len(res5) == 3 and res5[0].conv2.stride == (2, 2) and res5[0].downsample[0].stride == (2, 2)
    assert model.roi_heads.box_predictor.cls_score.in_features == 2048
    assert tuple(model.roi_heads.mask_head.deconv.weight.shape) == (2048, 256, 2, 2)


def test_training_shares_res5_between_box_and_mask_branches(monkeypatch):
    """res5 runs once per step, on the sampled RoIs; the mask branch takes the rows of the
    positives, and its loss is the one a slow second pass over the positives gives."""
    model = small_c4().train()
    heads = model.roi_heads
    calls, sampled = [], []
    heads.res5.register_forward_hook(lambda m, inp, out: calls.append(out.shape[0]))
    original = heads.sample_proposals
    monkeypatch.setattr(heads, "sample_proposals", lambda *a: sampled.append(original(*a)) or sampled[-1])
    image, target = synthetic_sample()
    losses = model([image], [target]).losses
    props, labels, matched, regression = sampled[0]
    assert calls == [props[0].shape[0]]
    positive = torch.nonzero(labels[0] > 0).squeeze(1)
    assert positive.numel() > 0
    with torch.no_grad():  # frozen batch norm: res5 of a subset = the subset of res5
        batch, resized = model.preprocess([image], [target])
        features = model.backbone(batch.tensor)
        logits = heads.mask_head(heads.res5_features(features, [props[0][positive]]))
        slow = mask_loss(logits, labels[0][positive], [props[0][positive]], [resized[0]["masks"]],
                         [matched[0][positive]])
        cls, deltas = heads.box_predictor(heads.box_head(heads.res5_features(features, props)))
        box = box_losses(cls, deltas, labels[0], regression[0])
    torch.testing.assert_close(losses["loss_mask"], slow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_classifier"], box["loss_classifier"], rtol=1e-5, atol=1e-6)


def detectron2_c4_keys(res4_blocks: int = 6) -> list[str]:
    """Detectron2's R-50-C4 Mask R-CNN state dict names (mask_rcnn_R_50_C4_*: build_resnet_backbone
    with OUT_FEATURES [res4], StandardRPNHead, Res5ROIHeads, MaskRCNNConvUpsampleHead with no convs)."""
    norm = ("weight", "bias", "running_mean", "running_var")
    keys = ["backbone.stem.conv1.weight"] + [f"backbone.stem.conv1.norm.{n}" for n in norm]

    def stage(prefix: str, blocks: int) -> list[str]:
        out = []
        for b in range(blocks):
            convs = ["shortcut", "conv1", "conv2", "conv3"] if b == 0 else ["conv1", "conv2", "conv3"]
            for conv in convs:
                out += [f"{prefix}.{b}.{conv}.weight"] + [f"{prefix}.{b}.{conv}.norm.{n}" for n in norm]
        return out

    for s, blocks in zip((2, 3, 4), (3, 4, res4_blocks)):
        keys += stage(f"backbone.res{s}", blocks)
    keys += stage("roi_heads.res5", 3)
    for layer in ("proposal_generator.rpn_head.conv", "proposal_generator.rpn_head.objectness_logits",
                  "proposal_generator.rpn_head.anchor_deltas", "roi_heads.box_predictor.cls_score",
                  "roi_heads.box_predictor.bbox_pred", "roi_heads.mask_head.deconv", "roi_heads.mask_head.predictor"):
        keys += [f"{layer}.weight", f"{layer}.bias"]
    return keys


# Shapes of Detectron2's COCO mask_rcnn_R_50_C4 (80 classes) where the heads meet the backbone
DETECTRON2_C4_SHAPES = {
    "backbone.res4.5.conv3.weight": (1024, 256, 1, 1),
    "proposal_generator.rpn_head.conv.weight": (1024, 1024, 3, 3),
    "proposal_generator.rpn_head.objectness_logits.weight": (15, 1024, 1, 1),
    "proposal_generator.rpn_head.anchor_deltas.weight": (60, 1024, 1, 1),
    "roi_heads.res5.0.shortcut.weight": (2048, 1024, 1, 1),
    "roi_heads.res5.0.conv1.weight": (512, 1024, 1, 1),
    "roi_heads.box_predictor.cls_score.weight": (81, 2048),
    "roi_heads.box_predictor.bbox_pred.weight": (320, 2048),
    "roi_heads.mask_head.deconv.weight": (2048, 256, 2, 2),
    "roi_heads.mask_head.predictor.weight": (80, 256, 1, 1),
}


def test_detectron2_c4_keys_cover_the_c4_preset_one_to_one():
    model = build_model(ModelConfig.from_dict({**PRESETS["detectron2_mask_rcnn_R_50_C4"], "min_size": 64}))
    own = model.state_dict()
    names = detectron2_c4_keys()
    mapped = [detectron2_key_to_ours(k) for k in names]
    assert len(set(mapped)) == len(names)
    assert set(mapped) == set(own)
    for key, shape in DETECTRON2_C4_SHAPES.items():
        assert tuple(own[detectron2_key_to_ours(key)].shape) == shape, key


def test_from_detectron2_loads_a_c4_checkpoint():
    """A narrow C4 state dict in Detectron2's names: the config (C4, widths, classes) is read
    from it and every tensor lands (strict loading)."""
    narrow = build_model(ModelConfig.from_dict({**PRESETS["detectron2_mask_rcnn_R_50_C4"], "base_width": 8,
                                                "mask_head_channels": 16, "num_classes": 5})).state_dict()
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(narrow[detectron2_key_to_ours(k)].shape, generator=g) for k in detectron2_c4_keys()}
    state = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in state.items()}
    model = from_detectron2({"model": state}, min_size=96, max_size=128)
    assert model.config.architecture == "c4" and model.config.num_classes == 5 and model.config.base_width == 8
    ours = model.state_dict()
    assert torch.equal(ours["roi_heads.res5.2.bn3.running_mean"], state["roi_heads.res5.2.conv3.norm.running_mean"])
    assert torch.equal(ours["backbone.body.layer3.0.downsample.0.weight"], state["backbone.res4.0.shortcut.weight"])
    image, _ = synthetic_sample()
    with torch.no_grad():
        det = model([image]).detections[0]
    assert det.boxes.shape[1] == 4


def test_imagenet_resnet_loads_into_c4_with_layer4_as_the_res5_head(tmp_path):
    torch.manual_seed(1)
    imagenet = ResNet(depth=18, base_width=16, frozen_blocks=0).state_dict()  # torchvision's names
    imagenet["fc.weight"] = torch.zeros(10, 128)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet, path)
    model = small_c4()
    load_initial_weights(model, path)
    ours = model.state_dict()
    assert torch.equal(ours["roi_heads.res5.1.conv2.weight"], imagenet["layer4.1.conv2.weight"])
    assert torch.equal(ours["backbone.body.layer3.0.conv1.weight"], imagenet["layer3.0.conv1.weight"])


def test_onnx_export_refuses_the_c4_model_by_name():
    from maskrcnn.export.onnx import _refuse_detectron2_options

    with pytest.raises(NotImplementedError, match="architecture='c4'"):
        _refuse_detectron2_options(small_c4())
