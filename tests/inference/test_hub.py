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


def use_entry(monkeypatch, path, prefix=None):
    """Point NAME at a local file (as a file:// URL), with its real hash prefix unless given."""
    prefix = prefix or hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    entry = dataclasses.replace(hub.NAMED_WEIGHTS[NAME], url=path.as_uri(), sha256_prefix=prefix)
    monkeypatch.setitem(hub.NAMED_WEIGHTS, NAME, entry)
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
