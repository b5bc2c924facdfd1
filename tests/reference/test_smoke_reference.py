"""The reference venv is what it claims: torchvision's compiled ops are there."""
import torch

from reference_utils import torchvision


def test_torchvision_compiled_nms_runs():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
