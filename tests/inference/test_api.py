"""maskrcnn.load_model and Predictor.predict: input types, batching, thresholds, results."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn.checkpoint import save_model
from maskrcnn.inference import ImageLoadError, Predictor, load_model
from maskrcnn.inference.outputs import rle_to_mask

from inference_helpers import CLASS_NAMES, make_image, make_tiny_model


def assert_same(a, b, exact: bool = False):
    """Same detections; float tolerance for batched vs single convolutions."""
    assert len(a) == len(b)
    assert torch.equal(a.labels, b.labels)
    if exact:
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    else:
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    if a.masks.dtype == torch.bool:
        # a pixel whose probability sits on the threshold may flip under float noise
        assert (a.masks != b.masks).float().mean() < 1e-3
    else:
        torch.testing.assert_close(a.masks, b.masks, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def arrays():
    return [make_image(i) for i in range(3)]


@pytest.fixture(scope="module")
def by_type(tiny_predictor, arrays, tmp_path_factory):
    """The same image as a path, a PIL image, a numpy array and a tensor, in one call."""
    path = tmp_path_factory.mktemp("src") / "a.png"
    Image.fromarray(arrays[0]).save(path)
    tensor = torch.from_numpy(arrays[0]).permute(2, 0, 1).float() / 255
    sources = [path, Image.fromarray(arrays[0]), arrays[0], tensor]
    return tiny_predictor.predict(sources, score_threshold=0.3, batch_size=2)


def test_load_model_is_exported(tiny_weights):
    predictor = maskrcnn.load_model(tiny_weights)
    assert isinstance(predictor, Predictor)
    assert predictor.class_names == CLASS_NAMES
    assert predictor.model.num_classes == 4 and not predictor.model.training


def test_every_input_type_gives_the_same_result(by_type):
    assert len(by_type) == 4
    first = by_type[0]
    assert len(first) > 0, "the tiny model should detect something"
    assert first.source.endswith("a.png") and by_type[2].source is None
    for other in by_type[1:]:
        assert_same(first, other)


def test_result_fields(by_type):
    r = by_type[0]
    n = len(r)
    assert r.boxes.shape == (n, 4) and r.boxes.dtype == torch.float32
    assert r.scores.shape == (n,) and bool((r.scores > 0.3).all())
    assert bool((r.scores[:-1] >= r.scores[1:]).all()), "scores descend"
    assert r.labels.dtype == torch.int64 and bool(((r.labels >= 1) & (r.labels <= 3)).all())
    assert r.class_names == [CLASS_NAMES[int(l) - 1] for l in r.labels]
    assert r.masks.dtype == torch.bool and r.masks.shape == (n, 96, 128)
    assert r.image_size == (96, 128)


def test_batch_size_1_and_3_agree_and_order_is_kept(tiny_predictor, arrays):
    # a 128x96 image pads differently from the 96x128 ones, so it gets its own batch; results
    # still come back in input order
    tall = np.ascontiguousarray(arrays[1].transpose(1, 0, 2))
    batched = tiny_predictor.predict([arrays[0], tall, *arrays[1:]], score_threshold=0.3, batch_size=3)
    assert [r.image_size for r in batched] == [(96, 128), (128, 96), (96, 128), (96, 128)]
    single = tiny_predictor.predict(arrays, score_threshold=0.3, batch_size=1)
    for a, b in zip(single, [batched[0], *batched[2:]]):
        assert_same(a, b)


def test_probability_masks(tiny_predictor, by_type, arrays):
    [probs] = tiny_predictor.predict(arrays[0], score_threshold=0.3, mask_threshold=None)
    binary = by_type[2]
    assert probs.masks.dtype == torch.float32
    assert float(probs.masks.min()) >= 0 and float(probs.masks.max()) <= 1
    assert torch.equal(probs.masks >= 0.5, binary.masks)
    assert torch.equal(probs.label_map, binary.label_map)


def test_label_map_agrees_with_masks_and_scores(by_type):
    r = by_type[0]
    lm = r.label_map
    assert lm.shape == r.image_size and lm.dtype == torch.int32
    covered = r.masks.any(dim=0)
    assert torch.equal(lm > 0, covered)
    # where several masks cover a pixel, the winner has the highest score among them
    masked_scores = torch.where(r.masks, r.scores[:, None, None], torch.tensor(-1.0))
    best = masked_scores.max(dim=0).values
    winner = r.scores[(lm - 1).clamp(min=0).long()]
    assert torch.equal(winner[covered], best[covered])
    ys, xs = torch.nonzero(covered).T
    assert bool(r.masks[(lm[covered] - 1).long(), ys, xs].all())
    overlapping = r.masks.sum(dim=0) > 1
    assert bool(overlapping.any()), "the test image should have overlapping masks"


def test_score_threshold_runs_the_mask_head_only_on_returned_detections(tiny_predictor, arrays):
    """The caller's threshold is applied before the mask head; that must change nothing but
    the work done: same detections as running at the model's 0.05 and filtering."""
    [low] = tiny_predictor.predict(arrays[1], score_threshold=0.05, mask_threshold=None)
    [high] = tiny_predictor.predict(arrays[1], score_threshold=0.5, mask_threshold=None)
    keep = low.scores > 0.5
    assert 0 < int(keep.sum()) < len(low), "scores should straddle 0.5"
    assert torch.equal(high.boxes, low.boxes[keep])
    assert torch.equal(high.scores, low.scores[keep])
    assert torch.equal(high.labels, low.labels[keep])
    torch.testing.assert_close(high.masks, low.masks[keep], atol=1e-5, rtol=0)


def test_to_coco_rle_decodes_to_the_masks(by_type):
    r = by_type[0]
    entries = r.to_coco(image_id=7, category_ids={1: 10, 2: 20, 3: 30})
    assert len(entries) == len(r)
    for entry, mask, box, label in zip(entries, r.masks, r.boxes, r.labels):
        assert entry["image_id"] == 7 and entry["category_id"] == 10 * int(label)
        assert np.array_equal(rle_to_mask(entry["segmentation"]), mask.numpy())
        x, y, w, h = entry["bbox"]
        assert np.allclose([x, y, x + w, y + h], box.tolist(), atol=1e-4)
    json.dumps(entries)  # JSON-ready as it is


def test_draw_and_save(by_type, tmp_path):
    r = by_type[0]
    overlay = r.draw()
    assert overlay.size == (128, 96) and overlay.mode == "RGB"
    written = r.save(tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["a.json", "a.png", "a_labels.png"]
    assert Image.open(tmp_path / "out" / "a.png").size == (128, 96)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a_labels.png")), r.label_map.numpy())
    assert r.save(tmp_path / "x.json")[0].is_file()
    assert Image.open(r.save(tmp_path / "x.jpg")[0]).size == (128, 96)
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*")), "no temporary files left"


def test_bad_image_is_named(tiny_predictor, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        tiny_predictor.predict([bad])


def test_pixel_limit(tiny_weights, arrays):
    predictor = load_model(tiny_weights, max_pixels=1000)
    with pytest.raises(ImageLoadError, match="above the limit of 1000 pixels"):
        predictor.predict(arrays[0])


# ------------------------------------------------------------------------ checkpoint errors


def test_wrong_class_count_is_named(tiny_weights):
    with pytest.raises(ValueError, match=r"4 classes .* but the model has 6"):
        load_model(tiny_weights, num_classes=6)


def test_class_names_must_fit(tiny_weights):
    with pytest.raises(ValueError, match="got 2 class names but the model has 3 classes"):
        load_model(tiny_weights, class_names=["a", "b"])


def test_wrong_architecture_is_named(tiny_weights, tmp_path):
    # the weights of one architecture with the config of another
    weights = tmp_path / "model.safetensors"
    shutil.copy(tiny_weights, weights)
    meta = json.loads(tiny_weights.with_suffix(".json").read_text())
    meta["config"]["depth"] = 34
    weights.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model.safetensors does not fit this architecture: .*missing"):
        load_model(weights)


def test_native_weights_without_config(tiny_weights, tmp_path):
    lone = tmp_path / "lone.safetensors"
    shutil.copy(tiny_weights, lone)
    with pytest.raises(ValueError, match="lone.json is missing"):
        load_model(lone)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth does not exist"):
        load_model(tmp_path / "nothing.pth")


def test_not_a_mask_rcnn_checkpoint(tmp_path):
    path = tmp_path / "classifier.pth"
    torch.save({"fc.weight": torch.zeros(10, 5), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(ValueError, match="classifier.pth: not a torchvision Mask R-CNN state dict"):
        load_model(path)


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Predictor}, path)  # a class, which only a full unpickler would rebuild
    with pytest.raises(ValueError, match="weights-only"):
        load_model(path)


def test_wrap_a_model_and_keep_category_ids(tmp_path):
    model = make_tiny_model(seed=1)
    path = save_model(model, tmp_path / "m.safetensors", extra={"category_ids": {"1": 5, "2": 9, "3": 11}})
    predictor = load_model(path)
    assert predictor.category_ids == {1: 5, 2: 9, 3: 11}
    assert load_model(model).class_names == CLASS_NAMES


def test_malformed_config_is_named(tiny_weights, tmp_path):
    weights = tmp_path / "model.safetensors"
    shutil.copy(tiny_weights, weights)
    weights.with_suffix(".json").write_text('{"format": "maskrcnn", ')
    with pytest.raises(ValueError, match="model.json .* is not valid JSON"):
        load_model(weights)
