"""Flip and resize move image, boxes and masks together; randomness follows torch's RNG."""
from __future__ import annotations

import pytest
import torch

from maskrcnn.data import Compose, RandomHorizontalFlip, ResizeShortestEdge, generate_shapes_dataset, CocoDataset
from maskrcnn.data.transforms import hflip, resize

from .conftest import box_of_mask


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    ann = generate_shapes_dataset(root, 6, image_size=(96, 128), seed=3, empty_fraction=0.0)
    ds = CocoDataset(ann, root / "images")
    return [ds[i] for i in range(len(ds))]


def test_flip_moves_image_boxes_and_masks_together(samples):
    for image, target in samples:
        before = {k: v.clone() for k, v in target.items() if isinstance(v, torch.Tensor)}
        flipped, out = hflip(image, target)
        assert torch.equal(flipped, image.flip(-1))
        for box, mask in zip(out["boxes"], out["masks"]):
            assert box.tolist() == box_of_mask(mask)  # the flipped mask's box is the flipped box
        back_image, back = hflip(flipped, out)
        assert torch.equal(back_image, image) and torch.equal(back["boxes"], target["boxes"])
        for k, v in before.items():  # inputs untouched
            assert torch.equal(target[k], v)


def test_resize_moves_image_boxes_and_masks_together(samples):
    for image, target in samples:
        for size in [(144, 192), (48, 64), (70, 100)]:
            out_image, out = resize(image, target, size)
            assert out_image.shape == (3, *size) and out["masks"].shape[1:] == size
            assert out["masks"].dtype == torch.uint8 and set(out["masks"].unique().tolist()) <= {0, 1}
            assert out["orig_size"] == target["orig_size"]
            for box, mask in zip(out["boxes"], out["masks"]):
                # nearest sampling moves a mask edge by about one output pixel; shrinking can also
                # drop a one-pixel tip (a star point), hence a little more slack
                assert box.tolist() == pytest.approx(box_of_mask(mask), abs=1.5)


def test_resize_of_empty_target(samples):
    image, target = samples[0]
    empty = {**target, "boxes": torch.zeros((0, 4)), "masks": torch.zeros((0, 96, 128), dtype=torch.uint8)}
    out_image, out = resize(image, empty, (48, 64))
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 48, 64)


def test_resize_shortest_edge_size_rule():
    t = ResizeShortestEdge((800,), 1333)
    assert t.get_size(480, 640, 800) == (800, 1067)
    assert t.get_size(100, 1000, 800) == (133, 1333)  # long side capped
    assert ResizeShortestEdge(600, 1000).get_size(600, 900, 600) == (600, 900)


def test_random_transforms_follow_torch_rng(samples):
    image, target = samples[0]
    aug = Compose([RandomHorizontalFlip(0.5), ResizeShortestEdge((64, 80, 96), 200)])

    def run(seed):
        torch.manual_seed(seed)
        return [aug(image, target) for _ in range(12)]

    a, b = run(0), run(0)
    for (ia, ta), (ib, tb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ta["masks"], tb["masks"])
    sizes = {img.shape[-2] for img, _ in a}
    assert sizes == {64, 80, 96}  # every scale gets drawn
    flips = {torch.equal(t["boxes"] * 1, resize(image, target, t["masks"].shape[1:])[1]["boxes"]) for _, t in a}
    assert flips == {True, False}  # some flipped, some not


def test_flip_probability_extremes(samples):
    image, target = samples[0]
    assert torch.equal(RandomHorizontalFlip(1.0)(image, target)[0], image.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(image, target)[0], image)
    with pytest.raises(ValueError):
        RandomHorizontalFlip(1.5)
