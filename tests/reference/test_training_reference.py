"""Training mode against torchvision 0.29.1: the five losses and the gradients.

Same seeded weights (the parity fixtures' recipe), same images and targets (two images of
different sizes, 3 and 4 gt boxes with masks); each side runs one forward in train mode and one
backward of the sum of its losses. Compared: every loss, and the gradient of every parameter
both sides train: the RPN head, box head and predictor, mask head and predictor, and also the
FPN and ResNet layers 2-4 (torchvision's weights=None model trains all 5 stages; ours, as the
published model, freezes the stem and layer1).

Making the two sides' random sampling identical: both sample anchors (RPN) and proposals (RoI
heads) with randperm, in different orders. With rpn_batch_size_per_image and
box_batch_size_per_image far above the number of candidates (SAMPLE_ALL), the positive cap
(batch * positive_fraction) and the negative fill (batch - positives) both exceed what there is,
so every positive and every negative is kept on both sides, whatever the permutation. Every
loss is then a sum or a mean over the same set, so the order does not matter either.

Normalization: torchvision's weights=None builders put nn.BatchNorm2d in the ResNet (v1 and
v2), which in train mode would normalize with batch statistics; ours is frozen batch norm. We
keep torchvision's stock builders (the models the fixtures were made with) and put the
ResNet's BatchNorm2d layers in eval mode: then they compute exactly the frozen map
(x - running_mean) / sqrt(running_var + eps) * weight + bias, with the eps (1e-5) that
from_torchvision picks for such a state dict. Building torchvision's backbone with
FrozenBatchNorm2d instead would work for v1 only and would not be the stock model. v2's
BatchNorm in the FPN and the heads stays in train mode on both sides (batch statistics).

    python -m pytest -q -m reference tests/reference/test_training_reference.py --durations=10
"""
from __future__ import annotations

import pytest
import torch

from reference_utils import Maxima, coffee_image, recipe_state_dict, torchvision, write_summary  # noqa: F401

from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2  # noqa: E402

import maskrcnn  # noqa: E402
from maskrcnn.checkpoint.torchvision import convert_state_dict  # noqa: E402

TV_BUILDERS = {"v1": maskrcnn_resnet50_fpn, "v2": maskrcnn_resnet50_fpn_v2}
SAMPLE_ALL = 10**7  # > any candidate count: ~25k anchors and ~300 proposals per image here
OPTIONS = dict(
    min_size=288, max_size=480,
    rpn_batch_size_per_image=SAMPLE_ALL, box_batch_size_per_image=SAMPLE_ALL,
    # fewer RoIs keep the heads' cost (v2's box head is 4 convs per RoI; the mask head runs
    # on every positive) to seconds; the defaults' paths are the same
    rpn_post_nms_top_n_train=300,
)
LOSSES = ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"]
HEADS = ("rpn.head.", "roi_heads.box_head.", "roi_heads.box_predictor.", "roi_heads.mask_head.",
         "roi_heads.mask_predictor.")

# Limits, from torchvision's own float32 error (its float64 run on the same inputs; ours is as
# close to that float64 run as torchvision's float32 run is):
# * losses: torchvision float32 vs float64 at most 1.6e-6 relative (loss_box_reg).
# * gradients, relative norm of the difference per parameter tensor (||ours - tv|| / ||tv||):
#   torchvision's own float32 error is at most 4.7e-4 for v1 (FPN; box head 2.3e-4) and ~3e-3
#   for v2, whose train-mode BatchNorm in the FPN and heads normalizes over the batch and
#   subtracts means in the backward pass (cancellation); the largest entry of a v2 box-head
#   conv gradient moves by 6e-3 of the tensor's largest between float32 and float64. The
#   difference also depends on the thread count (reduction order). A real error (a sample
#   left out, a wrong normalization) moves these by percents.
LOSS_RTOL = 1e-5
GRAD_RTOL = {"v1": 2e-3, "v2": 1.5e-2}

MAXIMA = Maxima()


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    write_summary(request.config, "training vs torchvision 0.29.1, largest relative differences (where):", MAXIMA)


def ellipse_mask(h: int, w: int, box: torch.Tensor) -> torch.Tensor:
    """uint8 (h, w): the ellipse inscribed in box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = box.tolist()
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    return (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1).to(torch.uint8)


def sample_inputs() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different sizes with 3 and 4 gt instances (seeded boxes, ellipse masks)."""
    g = torch.Generator().manual_seed(2024)
    images, targets = [], []
    for (h, w), count in [((300, 400), 3), ((360, 270), 4)]:
        images.append(coffee_image(h, w, seed=h * 7919 + w))
        wh = torch.rand(count, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + torch.tensor([w * 0.1, h * 0.1])
        xy = torch.rand(count, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        targets.append(dict(
            boxes=boxes,
            labels=torch.randint(1, 91, (count,), generator=g),
            masks=torch.stack([ellipse_mask(h, w, b) for b in boxes]),
        ))
    return images, targets


def torchvision_train_model(variant: str) -> torch.nn.Module:
    model = TV_BUILDERS[variant](weights=None, weights_backbone=None, num_classes=91, **OPTIONS)
    model.load_state_dict(recipe_state_dict(variant), strict=True)
    model.train()
    for module in model.backbone.body.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()  # the frozen map, as ours (see the module docstring)
    return model


def our_train_model(variant: str) -> torch.nn.Module:
    return maskrcnn.from_torchvision(recipe_state_dict(variant), variant, **OPTIONS).train()


def losses_and_grads(model, images, targets, names: dict[str, str]) -> tuple[dict, dict]:
    """One train-mode forward and backward; the gradients of the parameters in `names`
    (torchvision name -> this model's name), keyed by torchvision's name."""
    model.zero_grad(set_to_none=True)
    out = model([i.clone() for i in images], [dict(t) for t in targets])
    losses = out.losses if hasattr(out, "losses") else out
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    return {k: v.detach() for k, v in losses.items()}, {tv: params[own].grad for tv, own in names.items()}


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_losses_and_head_gradients_equal_torchvision(variant):
    images, targets = sample_inputs()
    tv = torchvision_train_model(variant)
    ours = our_train_model(variant)
    # torchvision parameter name -> ours, through the checkpoint converter (so it follows any
    # renaming on our side); the heads, and whatever else both sides train
    our_params = dict(ours.named_parameters())
    mapping = {tv_name: next(iter(convert_state_dict({tv_name: p})))
               for tv_name, p in tv.named_parameters()}
    # (our frozen batch norm's weight and bias are buffers, not parameters)
    trained = {t: o for t, o in mapping.items() if o in our_params and our_params[o].requires_grad}
    assert all(any(t.startswith(h) for t in trained) for h in HEADS)

    tv_losses, tv_grads = losses_and_grads(tv, images, targets, {t: t for t in trained})
    our_losses, our_grads = losses_and_grads(ours, images, targets, trained)

    assert sorted(our_losses) == sorted(tv_losses) == sorted(LOSSES)
    for name in LOSSES:
        rel = ((our_losses[name] - tv_losses[name]).abs() / tv_losses[name].abs()).item()
        MAXIMA.update(f"{variant}: {name}", rel, variant)
        assert rel <= LOSS_RTOL, f"{variant} {name}: ours {our_losses[name].item()}, torchvision {tv_losses[name].item()}"

    for name in trained:
        theirs, own = tv_grads[name], our_grads[name]
        assert own is not None and theirs is not None, name
        rel = ((own - theirs).norm() / theirs.norm()).item()
        part = next((h for h in HEADS if name.startswith(h)), "backbone.body." if name.startswith("backbone.body") else "backbone.fpn.")
        MAXIMA.update(f"{variant}: grad {part.rstrip('.')}", rel, name)
        assert rel <= GRAD_RTOL[variant], f"{variant} {name}: gradients differ by {rel:.3g} (relative norm)"
