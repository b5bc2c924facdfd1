"""Property tests (hypothesis) of the run-length codecs and of COCO parsing on generated input:
every mask survives encode/decode, every string the RLE check accepts decodes to the same,
fully defined mask every time, and no generated annotation file makes CocoDataset fail with
anything but DataError."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data import CocoDataset, DataError
from maskrcnn.inference.outputs import mask_to_rle, rle_to_mask
from maskrcnn.io import check_coco_rle, coco_rle_counts, decode_kaggle_rle, encode_kaggle_rle

QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def masks(draw, max_side: int = 24):
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    density = draw(st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((height, width)) < density


def runs_of(mask: np.ndarray) -> list[int]:
    """Column-major run lengths, background first (an obviously-correct reference)."""
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0] + runs if flat[0] else runs


@QUICK
@given(masks())
def test_coco_rle_round_trips_and_its_runs_are_the_masks(mask):
    rle = mask_to_rle(mask)
    assert np.array_equal(rle_to_mask(rle), mask)
    assert coco_rle_counts(rle["counts"]) == runs_of(mask)
    assert check_coco_rle(rle, *mask.shape) is None
    # the same mask as uncompressed RLE is accepted too, and decodes the same
    uncompressed = {"size": list(mask.shape), "counts": runs_of(mask)}
    assert check_coco_rle(uncompressed, *mask.shape) is None
    assert np.array_equal(rle_to_mask(uncompressed), mask)


@QUICK
@given(masks())
def test_kaggle_rle_round_trips(mask):
    assert np.array_equal(decode_kaggle_rle(encode_kaggle_rle(mask), mask.shape), mask)


RLE_DIGITS = st.text(alphabet=[chr(c) for c in range(48, 112)], max_size=12)


@settings(max_examples=400, deadline=None)
@given(RLE_DIGITS, st.integers(1, 6), st.integers(1, 6))
def test_every_accepted_rle_string_decodes_to_a_defined_mask(counts, height, width):
    problem = check_coco_rle({"size": [height, width], "counts": counts}, height, width)
    if problem is not None:
        assert isinstance(problem, str) and problem
        return
    runs = coco_rle_counts(counts)
    coded = {"size": [height, width], "counts": counts.encode("ascii")}
    first, second = mask_utils.decode(coded), mask_utils.decode(coded)
    assert first.shape == (height, width)
    assert np.array_equal(first, second) and set(np.unique(first)) <= {0, 1}  # no stray memory
    assert int(first.sum()) == sum(runs[1::2])


@QUICK
@given(st.lists(st.integers(-3, 40), max_size=8), st.integers(1, 6), st.integers(1, 6))
def test_uncompressed_rle_is_accepted_exactly_when_it_covers_the_image(counts, height, width):
    problem = check_coco_rle({"size": [height, width], "counts": counts}, height, width)
    assert (problem is None) == (all(c >= 0 for c in counts) and sum(counts) == height * width)


# ---------------------------------------------------------------------- COCO parsing

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 60), st.floats(allow_nan=True),
                         st.text(max_size=6))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.sampled_from(["size", "counts", "x"]), inner, max_size=3)),
    max_leaves=12)


@st.composite
def annotations(draw):
    segmentation = draw(st.one_of(
        JSON_VALUES,
        st.lists(st.lists(st.floats(-5, 60, allow_nan=False), min_size=0, max_size=10), max_size=2),
        st.fixed_dictionaries({"size": st.sampled_from([[20, 30], [30, 20], [20]]),
                               "counts": st.one_of(RLE_DIGITS, st.lists(st.integers(-1, 600), max_size=4))}),
    ))
    bbox = draw(st.one_of(JSON_VALUES, st.lists(st.floats(-5, 40, allow_nan=False), min_size=4, max_size=4)))
    ann = {"id": draw(st.one_of(st.integers(1, 4), JSON_VALUES)),
           "image_id": draw(st.one_of(st.just(1), JSON_VALUES)),
           "category_id": draw(st.one_of(st.just(1), JSON_VALUES)),
           "segmentation": segmentation, "bbox": bbox,
           "iscrowd": draw(st.one_of(st.sampled_from([0, 1]), JSON_VALUES)),
           "area": draw(st.one_of(st.none(), st.floats(allow_nan=True), JSON_VALUES))}
    return {k: v for k, v in ann.items() if draw(st.booleans()) or k in ("segmentation",)}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prop_images")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "a.png")
    return folder


@QUICK
@given(st.lists(annotations(), max_size=4), st.booleans())
def test_generated_annotation_files_parse_or_raise_data_error(image_dir, tmp_path_factory, anns, skip_bad):
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
            "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    path = tmp_path_factory.mktemp("prop") / "ann.json"
    path.write_text(json.dumps(data))
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = CocoDataset(path, image_dir, skip_bad=skip_bad)
    except DataError as e:
        assert str(path) in str(e)
        return
    _, target = dataset[0]  # whatever was accepted loads, with masks of 0 and 1 only
    assert target["masks"].shape[1:] == (20, 30)
    assert target["masks"].numel() == 0 or int(target["masks"].max()) <= 1
    assert target["boxes"].shape == (target["masks"].shape[0], 4)
