"""Named weights: cache, download with hash check, offline message; torchvision checkpoint files.

Nothing here touches the network: downloads come from file:// URLs or a fake opener.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import urllib.error

import pytest
import torch

from maskrcnn.checkpoint.seeded import seeded_state_dict
from maskrcnn.inference import hub, load_model
from maskrcnn.inference.hub import WeightsUnavailableError, weights_path

from testing_utils import parity_keys

NAME = "torchvision:maskrcnn_resnet50_fpn"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """An empty cache and torch hub folder per test; downloads allowed unless a test says no."""
    monkeypatch.setenv("MASKRCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MASKRCNN_OFFLINE", raising=False)
    return tmp_path / "cache"


def use_entry(monkeypatch, path, prefix=None, name=NAME):
    """Point `name` at a local file (as a file:// URL), with its real hash prefix unless given."""
    prefix = prefix or hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    entry = dataclasses.replace(hub.NAMED_WEIGHTS[name], url=path.as_uri(), sha256_prefix=prefix)
    monkeypatch.setitem(hub.NAMED_WEIGHTS, name, entry)
    return entry


def no_network(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.fixture(scope="session")
def torchvision_v1_file(tmp_path_factory):
    """A torchvision-layout v1 checkpoint (the parity fixtures' seeded weights) as a .pth."""
    path = tmp_path_factory.mktemp("tv") / "maskrcnn_resnet50_fpn_coco-local.pth"
    torch.save(seeded_state_dict(parity_keys("v1")), path)
    return path


def small_file(tmp_path, content=b"pretend weights"):
    path = tmp_path / "published" / "weights-abc.pth"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def test_the_published_table():
    v1, v2 = hub.NAMED_WEIGHTS[NAME], hub.NAMED_WEIGHTS[NAME + "_v2"]
    assert v1.url == "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert v2.url == "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    for entry in (v1, v2):
        assert entry.filename.endswith(f"-{entry.sha256_prefix}.pth")  # torchvision's naming rule
        assert len(entry.class_names) == 90 and entry.class_names[0] == "person"


# torchvision's Faster R-CNN and Keypoint R-CNN weights, as torchvision 0.29.1 names them
# (torchvision/models/detection/faster_rcnn.py, keypoint_rcnn.py: the COCO_V1 entries)
OTHER_TORCHVISION = {
    "fasterrcnn_resnet50_fpn": ("https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", "faster"),
    "fasterrcnn_resnet50_fpn_v2": ("https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
                                   "faster_v2"),
    "keypointrcnn_resnet50_fpn": ("https://download.pytorch.org/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
                                  "keypoint"),
}


def test_the_published_faster_and_keypoint_table():
    for name, (url, variant) in OTHER_TORCHVISION.items():
        entry = hub.NAMED_WEIGHTS[f"torchvision:{name}"]
        assert (entry.url, entry.variant, entry.kind) == (url, variant, "torchvision")
        assert entry.filename.endswith(f"-{entry.sha256_prefix}.pth") and len(entry.sha256_prefix) == 8
        assert entry.class_names == (("person",) if variant == "keypoint" else tuple(hub.COCO_CATEGORY_NAMES[1:]))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MASKRCNN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.cache_dir() == tmp_path / ".cache" / "maskrcnn"


def test_download_into_the_cache_then_reuse_it(tmp_path, monkeypatch, isolated_cache):
    source = small_file(tmp_path)
    entry = use_entry(monkeypatch, source)
    path = weights_path(NAME, progress=False)
    assert path == isolated_cache / "torchvision" / entry.filename
    assert path.read_bytes() == source.read_bytes()
    # second time: from the cache, never the opener
    assert weights_path(NAME, opener=no_network) == path
    assert [p.name for p in path.parent.iterdir()] == [entry.filename], "no temporary file left"


def test_hash_mismatch_saves_nothing(tmp_path, monkeypatch, isolated_cache):
    use_entry(monkeypatch, small_file(tmp_path), prefix="00000000")
    with pytest.raises(ValueError, match="does not start with 00000000"):
        weights_path(NAME, progress=False)
    folder = isolated_cache / "torchvision"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_corrupt_cached_file_is_reported(tmp_path, monkeypatch, isolated_cache):
    entry = use_entry(monkeypatch, small_file(tmp_path))
    cached = isolated_cache / "torchvision" / entry.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with pytest.raises(ValueError, match=f"{cached.name}: SHA-256 .* delete it"):
        weights_path(NAME, opener=no_network)


def test_offline_message_names_the_url_and_the_path(isolated_cache):
    entry = hub.NAMED_WEIGHTS[NAME]
    with pytest.raises(WeightsUnavailableError) as info:
        weights_path(NAME, opener=no_network, progress=False)
    message = str(info.value)
    assert "download failed" in message and "name resolution" in message
    assert f"Fetch {entry.url}" in message
    assert f"put it at {isolated_cache / 'torchvision' / entry.filename}" in message


def test_offline_environment_never_calls_the_opener(monkeypatch):
    monkeypatch.setenv("MASKRCNN_OFFLINE", "1")
    called = []
    with pytest.raises(WeightsUnavailableError, match="downloads are off"):
        weights_path(NAME, opener=lambda *a, **k: called.append(a))
    assert not called


def test_fake_opener_with_progress(tmp_path, monkeypatch):
    content = b"x" * 3_000_000  # several read() blocks
    use_entry(monkeypatch, small_file(tmp_path, content))

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(content))}

    path = weights_path(NAME, opener=lambda url, timeout: Response(content), progress=True)
    assert path.read_bytes() == content


def test_torch_hub_file_is_used(tmp_path, monkeypatch):
    entry = use_entry(monkeypatch, small_file(tmp_path))
    existing = tmp_path / "torch_home" / "hub" / "checkpoints" / entry.filename
    existing.parent.mkdir(parents=True)
    existing.write_bytes(small_file(tmp_path).read_bytes())
    assert weights_path(NAME, opener=no_network) == existing


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown named weights 'torchvision:resnet50'"):
        load_model("torchvision:resnet50")


# ------------------------------------------------------------------ torchvision checkpoints


def test_named_weights_load_end_to_end(torchvision_v1_file, monkeypatch):
    use_entry(monkeypatch, torchvision_v1_file)
    predictor = load_model(NAME, box_score_thresh=0.34)
    model = predictor.model
    assert model.config.variant == "v1" and model.config.depth == 50 and model.num_classes == 91
    assert model.config.norm_eps == 1e-5  # seeded weights carry num_batches_tracked
    assert model.roi_heads.score_thresh == 0.34
    assert predictor.class_names[0] == "person" and predictor.category_ids is None
    state = seeded_state_dict(parity_keys("v1"))
    assert torch.equal(model.state_dict()["roi_heads.mask_head.predictor.weight"],
                       state["roi_heads.mask_predictor.mask_fcn_logits.weight"])


def test_torchvision_file_variant_is_inferred_and_checked(torchvision_v1_file):
    predictor = load_model(torchvision_v1_file)
    assert predictor.model.config.variant == "v1"
    assert len(predictor.class_names) == 90  # 91 outputs: torchvision's COCO labels
    with pytest.raises(ValueError, match="has the v1 layout but variant='v2' was asked for"):
        load_model(torchvision_v1_file, variant="v2")
    with pytest.raises(ValueError, match="num_classes=5 but the checkpoint has 91 classes"):
        load_model(torchvision_v1_file, num_classes=5)


def torchvision_layout_file(folder, variant: str):
    """A torchvision-layout checkpoint of fasterrcnn_resnet50_fpn(_v2) or keypointrcnn_resnet50_fpn
    (shapes only: every tensor a 0-stride view of one number, so the file is a few hundred kB),
    and the value put in the one tensor the test then looks for."""
    layout = "v2" if variant == "faster_v2" else "v1"
    keys = {k: shape for k, shape, _ in parity_keys(layout) if not k.startswith("roi_heads.mask_")}
    if variant == "keypoint":  # keypointrcnn_resnet50_fpn: 2 classes, 8 convs of 512, a deconv to 17 maps
        keys.update({"roi_heads.box_predictor.cls_score.weight": [2, 1024], "roi_heads.box_predictor.cls_score.bias": [2],
                     "roi_heads.box_predictor.bbox_pred.weight": [8, 1024], "roi_heads.box_predictor.bbox_pred.bias": [8]})
        for i in range(8):
            keys[f"roi_heads.keypoint_head.{2 * i}.weight"] = [512, 256 if i == 0 else 512, 3, 3]
            keys[f"roi_heads.keypoint_head.{2 * i}.bias"] = [512]
        keys["roi_heads.keypoint_predictor.kps_score_lowres.weight"] = [512, 17, 4, 4]
        keys["roi_heads.keypoint_predictor.kps_score_lowres.bias"] = [17]
    state = {k: torch.zeros((), dtype=torch.int64) if not shape else torch.full((), 0.5).expand(shape)
             for k, shape in keys.items()}
    state["rpn.head.cls_logits.bias"] = torch.full((), 0.25).expand(keys["rpn.head.cls_logits.bias"])
    path = folder / f"{variant}.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name", OTHER_TORCHVISION)
def test_faster_and_keypoint_names_load_end_to_end(name, tmp_path, monkeypatch):
    """What `maskrcnn predict --weights torchvision:NAME` does (load_model), on a local file."""
    variant = OTHER_TORCHVISION[name][1]
    use_entry(monkeypatch, torchvision_layout_file(tmp_path, variant), name=f"torchvision:{name}")
    predictor = load_model(f"torchvision:{name}", download=True)
    config = predictor.model.config
    assert config.mask_on is False and config.variant == ("v2" if variant == "faster_v2" else "v1")
    assert config.num_keypoints == (17 if variant == "keypoint" else 0)
    assert predictor.model.num_classes == (2 if variant == "keypoint" else 91)
    assert predictor.class_names == (["person"] if variant == "keypoint" else hub.COCO_CATEGORY_NAMES[1:])
    assert torch.equal(predictor.model.state_dict()["rpn.head.objectness.bias"], torch.full((3,), 0.25))
