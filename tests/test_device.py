"""The one device rule: auto -> CUDA, else MPS, else CPU; clear errors for devices that are not
there; fp16 only on CUDA. CUDA and MPS presence is monkeypatched, so this runs on any machine."""
import pytest
import torch

from maskrcnn import device as device_module
from maskrcnn.device import DeviceError, check_precision, resolve_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_order(monkeypatch, no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 3)


def test_cuda_indices(two_gpus):
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"'cuda:2': there are only 2 CUDA devices \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")


def test_cuda_on_a_cpu_build(monkeypatch, no_gpu):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceError, match=r"'cuda': this PyTorch build has no CUDA support \(torch .*use cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(DeviceError, match="no CUDA GPU is visible"):
        resolve_device("cuda:0")


def test_unknown_and_unsupported(no_gpu):
    with pytest.raises(DeviceError, match=r"unknown device 'gpu': use auto \(CUDA, else MPS, else CPU\), cpu"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="MPS is not available"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="'meta' is not supported"):
        resolve_device("meta")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_precision():
    assert check_precision("fp32", torch.device("cpu")) == "fp32"
    assert check_precision("fp16", torch.device("cuda", 0)) == "fp16"
    with pytest.raises(DeviceError, match="precision 'fp16' needs a CUDA device, and this model is on cpu"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(DeviceError, match="precision 'fp64' is not one of fp32, bf16, fp16"):
        check_precision("fp64", torch.device("cpu"))
    assert check_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(DeviceError, match="'bf16' is for the CPU and CUDA"):
        check_precision("bf16", torch.device("mps"))


def test_load_model_and_clis_use_the_rule(monkeypatch, no_gpu, tmp_path, capsys):
    from maskrcnn.engine.train import select_device
    from maskrcnn.engine import distributed
    from maskrcnn.engine.config import ConfigError
    from maskrcnn.inference.api import Predictor
    from maskrcnn.modeling import build_preset

    model = build_preset("maskrcnn_resnet18_small", num_classes=3)
    predictor = Predictor(model)  # default "auto"
    assert predictor.device == torch.device("cpu") and predictor.precision == "fp32"
    with pytest.raises(DeviceError, match="CUDA"):
        Predictor(model, device="cuda")
    with pytest.raises(DeviceError, match="fp16"):
        Predictor(model, precision="fp16")
    assert Predictor(model, precision="bf16").model.precision == "bf16"  # the model runs it

    info = distributed.env_info()
    assert select_device("auto", info) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device: device 'cuda'"):
        select_device("cuda", info)

    from maskrcnn.inference.predict import main as predict_main
    from maskrcnn.evaluation.evaluate import main as eval_main

    from PIL import Image

    image = str(tmp_path / "x.png")
    Image.new("RGB", (8, 8)).save(image)
    out = str(tmp_path / "out")
    assert predict_main([image, "--weights", "w", "--out", out, "--device", "gpu"]) == 2
    assert "unknown device 'gpu'" in capsys.readouterr().err
    assert predict_main([image, "--weights", "w", "--out", out, "--precision", "fp16"]) == 2
    assert "precision 'fp16' needs a CUDA device" in capsys.readouterr().err
    assert eval_main(["--weights", "w", "--data", "d.json", "--images", "i", "--device", "cuda:1"]) == 2
    assert "device 'cuda:1'" in capsys.readouterr().err


@pytest.mark.cuda
def test_fp16_predictions_match_fp32_on_cuda():
    from maskrcnn.inference.api import Predictor
    from maskrcnn.modeling import build_preset

    torch.manual_seed(0)
    model = build_preset("maskrcnn_resnet18_small", num_classes=3, box_score_thresh=0.0)
    images = [torch.rand(3, 96, 128)]
    full = Predictor(model, device="cuda").predict(images, score_threshold=0.0)[0]
    half = Predictor(model, device="cuda", precision="fp16").predict(images, score_threshold=0.0)[0]
    assert half.boxes.dtype == torch.float32
    assert len(full) == len(half)
    torch.testing.assert_close(half.boxes, full.boxes, atol=1.0, rtol=0.02)
