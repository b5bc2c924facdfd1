"""Checkpoint writes that fail, and what a killed run leaves: a full disk or a missing
permission is reported as such, with the file, and the previous checkpoint stays usable; the
temporaries of an interrupted write are removed at the next start."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors import SafetensorError

from maskrcnn import build_preset
from maskrcnn.checkpoint import native
from maskrcnn.engine import checkpointer as checkpointer_module
from maskrcnn.engine.checkpointer import POINTER, Checkpointer, CheckpointWriteError, load_initial_weights
from maskrcnn.io import files


@pytest.fixture(scope="module")
def model():
    return build_preset("maskrcnn_resnet18_small", num_classes=3, class_names=["a", "b"])


def _saved_once(tmp_path, model) -> tuple[Checkpointer, dict[str, bytes]]:
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(10, model, {"optimizer": {"x": torch.ones(2)}, "rng": []})
    return ckpt, {p.name: p.read_bytes() for p in tmp_path.iterdir()}


def _assert_untouched(tmp_path, before: dict[str, bytes]) -> None:
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporaries either


def test_a_full_disk_while_writing_the_state_is_reported_as_disk_full(tmp_path, model, monkeypatch):
    ckpt, before = _saved_once(tmp_path, model)
    real_save = torch.save

    class FullDisk:
        """A file that takes 100 bytes, then fails as a full disk does."""

        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    def save_to_a_full_disk(obj, f, *args, **kwargs):
        real_save(obj, FullDisk(f), *args, **kwargs)  # the error passes through torch's writer

    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        ckpt.save(20, model, {"optimizer": {"x": torch.ones(2)}, "rng": []})
    error = info.value
    assert error.errno == errno.ENOSPC and isinstance(error, OSError) and isinstance(error, RuntimeError)
    message = str(error)
    assert f"cannot save the checkpoint of iteration 20: {tmp_path / 'state_0000020.pt'}: cannot write: disk full" in message
    assert "the previous checkpoint model_0000010.safetensors (iteration 10) is intact" in message
    assert "free disk space" in message
    # the iteration-20 weights written before the state failed are removed (a full disk needs
    # the space); the pointer and iteration 10 are unchanged and still load
    _assert_untouched(tmp_path, before)
    assert ckpt.load(ckpt.latest(), build_preset("maskrcnn_resnet18_small", num_classes=3))["iteration"] == 10


def test_a_full_disk_inside_safetensors_is_reported_as_disk_full(tmp_path, model, monkeypatch):
    ckpt, before = _saved_once(tmp_path, model)

    def full(state, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")  # what a full disk leaves
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(native, "save_file", full)
    with pytest.raises(CheckpointWriteError) as info:
        ckpt.save(20, model, {"rng": []})
    assert info.value.errno == errno.ENOSPC
    assert f"{tmp_path / 'model_0000020.safetensors'}: cannot write: disk full" in str(info.value)
    _assert_untouched(tmp_path, before)


def test_permission_denied_is_reported_with_the_path(tmp_path, model, monkeypatch):
    ckpt, before = _saved_once(tmp_path, model)

    def no_permission(*args, **kwargs):  # chmod cannot stop root, so the refusal is simulated
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(files.tempfile, "mkstemp", no_permission)
    with pytest.raises(CheckpointWriteError) as info:
        ckpt.save(20, model, {"rng": []})
    assert info.value.errno == errno.EACCES
    assert f"{tmp_path / 'model_0000020.safetensors'}: cannot write: permission denied" in str(info.value)
    _assert_untouched(tmp_path, before)


def test_other_errors_are_not_dressed_up_as_io(tmp_path, model):
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(Exception) as info:
        ckpt.save(20, model, {"rng": [lambda: None]})  # not picklable: a bug, not the disk
    assert not isinstance(info.value, CheckpointWriteError)


def test_temporaries_of_an_interrupted_write_are_removed_at_the_next_start(tmp_path, model):
    ckpt, before = _saved_once(tmp_path, model)
    stale = [".state_0000020.pt.k3j2h1.tmp.pt", ".model_0000020.safetensors.a8x.tmp.safetensors",
             ".model_0000020.json.zz9.tmp.json", ".last_checkpoint.json.q1.tmp.json", ".old_style.x1.tmp"]
    for name in stale:
        (tmp_path / name).write_bytes(b"half written")
    (tmp_path / "notes.tmp.txt").write_text("mine")  # not a temporary of ours: kept
    assert sorted(ckpt.remove_temporaries()) == sorted(stale)
    assert {p.name for p in tmp_path.iterdir()} == set(before) | {"notes.tmp.txt"}


def test_killed_mid_write_then_restarted_leaves_no_temporaries(tmp_path, model, monkeypatch):
    """A real interrupted write: KeyboardInterrupt inside torch.save leaves nothing behind, and
    the rest of a killed writer (simulated: the temporary is left) is swept at the next start."""
    ckpt, before = _saved_once(tmp_path, model)

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointer_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(20, model, {"rng": []})
    assert json.loads((tmp_path / POINTER).read_text())["iteration"] == 10
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_corrupt_checkpoint_weights_are_named(tmp_path, model):
    ckpt, _ = _saved_once(tmp_path, model)
    (tmp_path / "model_0000010.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint weights .*model_0000010\.safetensors"):
        ckpt.load(ckpt.latest(), build_preset("maskrcnn_resnet18_small", num_classes=3))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_initial_weights_are_a_value_error_naming_the_file(tmp_path, model, suffix):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(b"this is not a weights file at all")
    with pytest.raises(ValueError, match=rf"weights{suffix}"):
        load_initial_weights(model, path)
