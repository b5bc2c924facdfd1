"""One way to open a checkpoint: names and files alike in load_model, eval and model.weights=.
Named weights are served from local file:// URLs; nothing touches the network."""
from __future__ import annotations

import dataclasses
import hashlib
import pickle

import pytest
import torch

from maskrcnn.checkpoint import save_model
from maskrcnn.checkpoint.loader import build_from_checkpoint, open_checkpoint
from maskrcnn.engine.checkpointer import load_initial_weights
from maskrcnn.evaluation.evaluate import load_model_for_eval
from maskrcnn.inference import hub, load_model
from maskrcnn.modeling import build_preset

from maskrcnn.checkpoint.seeded import seeded_state_dict

from testing_utils import parity_keys, small_detectron2_state_dict

TV = "torchvision:maskrcnn_resnet50_fpn"
D2 = "detectron2:mask_rcnn_R_50_FPN_3x"
TINY = dict(min_size=64, max_size=64)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MASKRCNN_OFFLINE", raising=False)
    return tmp_path / "cache"


def serve(monkeypatch, name, path, *, hashed=True):
    """Publish `path` under `name` as a file:// URL (with its true hash prefix when hashed)."""
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8] if hashed else None
    entry = dataclasses.replace(hub.NAMED_WEIGHTS[name], url=path.as_uri(), sha256_prefix=prefix)
    monkeypatch.setitem(hub.NAMED_WEIGHTS, name, entry)
    return entry


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_preset("maskrcnn_resnet18_small", num_classes=3, class_names=["a", "b"], **TINY).eval()


def test_kinds_of_files(tmp_path, tiny_model):
    native = save_model(tiny_model, tmp_path / "m.safetensors")
    ckpt = open_checkpoint(native)
    assert ckpt.kind == "native" and ckpt.meta["format"] == "maskrcnn"
    assert open_checkpoint(tmp_path / "m.json").path == native  # the config points at its weights
    model, names, _ = build_from_checkpoint(ckpt)
    assert names == ["a", "b"]
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k

    bare = tmp_path / "bare.pth"
    torch.save(tiny_model.state_dict(), bare)
    assert open_checkpoint(bare).kind == "native_bare"
    with pytest.raises(ValueError, match="own layout, but its config .*bare.json is missing"):
        load_model(bare)

    imagenet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)},
               imagenet)
    assert open_checkpoint(imagenet).kind == "imagenet"
    with pytest.raises(ValueError, match="ImageNet classification ResNet: it can start training"):
        load_model(imagenet)

    d2 = tmp_path / "model_final.pkl"
    d2.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in small_detectron2_state_dict().items()}}))
    assert open_checkpoint(d2).kind == "detectron2"

    with pytest.raises(FileNotFoundError, match="checkpoint .*nope.pth does not exist"):
        open_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="named weights are torchvision:maskrcnn_resnet50_fpn"):
        open_checkpoint("torchvison:maskrcnn_resnet50_fpn")  # a typo in the prefix reads as a path
    with pytest.raises(ValueError, match="unknown named weights 'detectron2:nope'; known: .*detectron2:mask_rcnn_R_50_FPN_3x"):
        open_checkpoint("detectron2:nope")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    with pytest.raises(ValueError, match="cannot read checkpoint .*corrupt.safetensors"):
        open_checkpoint(corrupt)


def test_torchvision_name_in_eval_and_training(tmp_path, monkeypatch, tiny_model, isolated_cache):
    """What failed before: `eval --weights torchvision:...` and `model.weights=torchvision:...`
    took the name for a file. Here the name serves a small state dict, downloaded once (hash
    checked) and then read from the cache."""
    published = tmp_path / "published" / "weights.pth"
    published.parent.mkdir()
    torch.save(tiny_model.state_dict(), published)
    serve(monkeypatch, TV, published)

    fresh = build_preset("maskrcnn_resnet18_small", num_classes=3, **TINY)
    report = load_initial_weights(fresh, TV)  # model.weights=torchvision:... goes through this
    assert "0 of the model's stay freshly initialized" in report
    assert torch.equal(fresh.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                       tiny_model.state_dict()["roi_heads.box_predictor.cls_score.weight"])
    assert (isolated_cache / "torchvision" / "weights.pth").is_file()

    # served from the cache now: the URL is gone
    published.unlink()
    ckpt = open_checkpoint(TV, download=False)
    assert ckpt.path == isolated_cache / "torchvision" / "weights.pth" and ckpt.named is hub.NAMED_WEIGHTS[TV]


def test_torchvision_name_in_eval(tmp_path, monkeypatch):
    """`maskrcnn eval --weights torchvision:...` (the parity fixture's seeded R50 weights)."""
    published = tmp_path / "maskrcnn_resnet50_fpn_coco-local.pth"
    torch.save(seeded_state_dict(parity_keys("v1")), published)
    serve(monkeypatch, TV, published)
    model = load_model_for_eval(TV, torch.device("cpu"))
    assert model.num_classes == 91 and model.config.depth == 50
    assert model.class_names[0] == "person" and len(model.class_names) == 90


def test_detectron2_name_downloads_without_a_published_hash(tmp_path, monkeypatch, isolated_cache):
    published = tmp_path / "model_final_f10217.pkl"
    published.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in small_detectron2_state_dict().items()}}))
    entry = serve(monkeypatch, D2, published, hashed=False)
    predictor = load_model(D2)
    assert predictor.model.first_label == 0 and predictor.class_names[0] == "person"
    assert predictor.category_ids[0] == 1 and predictor.category_ids[79] == 90
    assert (isolated_cache / "detectron2" / entry.filename).read_bytes() == published.read_bytes()


def test_detectron2_offline_message(monkeypatch, isolated_cache):
    monkeypatch.setenv("MASKRCNN_OFFLINE", "1")
    entry = hub.NAMED_WEIGHTS[D2]
    with pytest.raises(hub.WeightsUnavailableError) as info:
        load_model(D2)
    message = str(info.value)
    assert f"Fetch {entry.url}" in message and str(isolated_cache / "detectron2" / "model_final_f10217.pkl") in message
    assert "SHA-256" not in message  # none is published for the zoo


def test_the_zoo_table():
    urls = {name: e.url for name, e in hub.NAMED_WEIGHTS.items() if e.kind == "detectron2"}
    assert urls[D2] == ("https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/"
                        "mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl")
    assert {n.split(":")[1] for n in urls} == {"mask_rcnn_R_50_FPN_1x", "mask_rcnn_R_50_FPN_3x", "mask_rcnn_R_101_FPN_3x"}
    assert all(len(e.class_names) == 80 for e in hub.NAMED_WEIGHTS.values() if e.kind == "detectron2")
