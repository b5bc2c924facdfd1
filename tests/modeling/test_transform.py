"""The resize arithmetic against sizes torchvision 0.29.1's eager transform was seen to give.

tests/reference/test_model_reference.py checks every size of a 4,804-size sweep against
torchvision itself; these are the cases that a float32 scale gets wrong, kept here so the main
suite (no torchvision) guards them too.
"""
import pytest
import torch

from maskrcnn.modeling.transform import ImageTransform, resized_size

# (height, width) -> torchvision's resized (height, width) at min_size 800, max_size 1333
TORCHVISION_SIZES = {
    (375, 500): (800, 1066),  # float32 scale gives 799 x 1066
    (427, 640): (800, 1199),
    (333, 500): (800, 1201),
    (480, 640): (800, 1066),
}


@pytest.mark.parametrize("size", sorted(TORCHVISION_SIZES))
def test_resized_size_matches_torchvision_eager(size):
    assert resized_size(*size, 800, 1333) == TORCHVISION_SIZES[size]


def test_transform_resizes_image_and_targets_to_the_same_size():
    transform = ImageTransform(min_size=800, max_size=1333).eval()
    image = torch.rand(3, 375, 500)
    target = {"boxes": torch.tensor([[0.0, 0.0, 500.0, 375.0]]), "labels": torch.tensor([1]),
              "masks": torch.ones(1, 375, 500, dtype=torch.uint8)}
    batch, (resized,) = transform([image], [target])
    assert batch.image_sizes == [(800, 1066)]
    assert tuple(resized["masks"].shape[-2:]) == (800, 1066)
    # boxes scale by the float32 ratio of the integer sizes, as torchvision's resize_boxes
    expected = torch.tensor([[0.0, 0.0, 500 * (torch.tensor(1066.0) / 500).item(), 800.0]])
    torch.testing.assert_close(resized["boxes"], expected, rtol=0, atol=1e-4)


def test_a_thin_strip_resizes_to_at_least_one_pixel_and_runs():
    assert resized_size(2, 5000, 800, 1333) == (1, 1333)
    transform = ImageTransform(min_size=800, max_size=1333).eval()
    batch, _ = transform([torch.rand(3, 2, 5000)])
    assert batch.image_sizes == [(1, 1333)] and batch.tensor.shape[-2:] == (32, 1344)
