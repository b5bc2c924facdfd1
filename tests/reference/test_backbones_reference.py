"""Our ResNet / ResNeXt trunks against torchvision's classifiers: the same weights give the
same c2..c5 features."""
import pytest
import torch

from reference_utils import torchvision
from maskrcnn.modeling.backbone.resnet import ResNet


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights and batch-norm statistics far from the identity, so that a layer mixed
    up, a group order or a norm misplaced shows in the features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bn1.bias", "bn2.bias", "bn3.bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 4:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
    return model.eval()


def torchvision_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for i in range(1, 5):
        x = getattr(model, f"layer{i}")(x)
        out[f"c{i + 1}"] = x
    return out


@pytest.mark.parametrize("name, depth, groups, width", [
    ("resnext50_32x4d", 50, 32, 4),
    ("resnext101_32x8d", 101, 32, 8),
    ("resnet50", 50, 1, 64),
])
def test_trunk_features_equal_torchvision(name, depth, groups, width):
    reference = randomized(getattr(torchvision.models, name)(), seed=depth + groups)
    ours = ResNet(depth=depth, groups=groups, width_per_group=width, frozen_blocks=0)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state)  # torchvision's names, every tensor (strict)
    ours.eval()
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torchvision_features(reference, x)
        got = ours(x.contiguous(memory_format=torch.channels_last))
    for level in ("c2", "c3", "c4", "c5"):
        scale = expected[level].abs().max()
        torch.testing.assert_close(got[level], expected[level], rtol=1e-4, atol=1e-4 * float(scale),
                                   msg=lambda m: f"{name} {level}: {m}")
