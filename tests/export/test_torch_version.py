"""Export needs torch >= 2.6 (the dynamo exporter), the rest of the package torch 2.4: an older
torch gets an error that names both versions, from the Python API and the CLI, before anything
is written or the onnx extra is asked for. Runs without the onnx extra."""
from __future__ import annotations

import pytest
import torch

from maskrcnn.cli import main as cli_main
from maskrcnn.export.onnx import export_onnx, export_unsupported_reason


@pytest.mark.parametrize("version, supported", [
    ("2.4.1+cu121", False), ("2.5.1", False), ("2.6.0", True), ("2.10.0+cpu", True), ("2.14.1", True),
    ("3.0.0a0+git1234", True),
])
def test_the_version_rule(monkeypatch, version, supported):
    monkeypatch.setattr(torch, "__version__", version)
    reason = export_unsupported_reason()
    assert (reason is None) == supported
    if not supported:
        assert reason.startswith(f"ONNX export needs torch >= 2.6 (this is {version})")


def test_old_torch_is_refused_by_name(monkeypatch, tmp_path, capsys, small_model):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    out = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError, match=r"ONNX export needs torch >= 2\.6 \(this is 2\.5\.1\+cpu\)"):
        export_onnx(small_model, out)
    code = cli_main(["export", "--weights", str(tmp_path / "model.safetensors"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "maskrcnn export: ONNX export needs torch >= 2.6 (this is 2.5.1+cpu)" in err
    assert "Traceback" not in err and not out.exists()
