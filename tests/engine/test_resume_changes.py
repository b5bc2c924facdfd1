"""--resume continues only the run that was checkpointed: a changed batch size, seed or data is
refused (ConfigError naming the checkpoint and what changed, exit 2, checkpoints untouched)
unless --accept-changed-run; OSErrors of a run (disk full, a file in the way) are reported with
the path, not as a traceback."""
import errno
import json
import shutil

import pytest

from maskrcnn.engine import train as train_module
from maskrcnn.engine.checkpointer import Checkpointer
from maskrcnn.engine.metrics import MetricsWriter

from .conftest import tiny_overrides


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "config.json"}


@pytest.fixture(scope="module")
def first_run(tiny_shapes, tmp_path_factory):
    """A 2-iteration run (checkpoint at 2) on a private copy of the data."""
    root = tmp_path_factory.mktemp("resume")
    shutil.copytree(tiny_shapes.parent, root / "data")
    annotations = root / "data" / tiny_shapes.name
    out = root / "run"
    assert train_module.main(config(root) + tiny_overrides(annotations, out, max_iter=2)) == 0
    return annotations, out


def config(root):
    path = root / "empty.yaml"
    path.write_text("{}\n")
    return ["--config", str(path)]


@pytest.mark.parametrize("change, message", [
    (["solver.batch_size=4"], "solver.batch_size (checkpoint 2, config now 4)"),
    (["train.seed=7"], "train.seed (checkpoint 0, config now 7)"),
])
def test_resume_with_changed_settings_is_refused(first_run, tmp_path, capsys, change, message):
    annotations, out = first_run
    before = snapshot(out)
    args = config(tmp_path) + tiny_overrides(annotations, out, max_iter=4) + change + ["--resume"]
    assert train_module.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and str(out / "model_0000002.safetensors") in err and "--accept-changed-run" in err
    assert snapshot(out) == before


def test_resume_with_changed_data_is_refused_then_accepted_when_told(first_run, tmp_path, capsys):
    annotations, out = first_run
    data = json.loads(annotations.read_text())
    changed = tmp_path / "changed.json"
    data["annotations"] = data["annotations"][:-1]  # one annotation fewer, same images
    changed.write_text(json.dumps(data))
    shutil.copytree(annotations.parent / "images", tmp_path / "images")
    before = snapshot(out)
    args = config(tmp_path) + tiny_overrides(changed, out, max_iter=4) + ["--resume"]
    assert train_module.main(args) == 2
    err = capsys.readouterr().err
    assert "the training data (annotations changed since the checkpoint" in err and str(changed) in err
    assert snapshot(out) == before

    assert train_module.main(args + ["--accept-changed-run"]) == 0
    assert Checkpointer(out).latest()["iteration"] == 4


def test_an_output_folder_blocked_by_a_file_is_named(tiny_shapes, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    args = config(tmp_path) + tiny_overrides(tiny_shapes, blocker / "run", max_iter=2)
    assert train_module.main(args) == 2
    err = capsys.readouterr().err
    assert f"{blocker / 'run'}: cannot write: {blocker} is a file, not a folder" in err
    assert blocker.read_text() == "not a folder"


def test_a_full_disk_while_logging_is_reported_with_the_path(tiny_shapes, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"

    def full(self, iteration, values):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(MetricsWriter, "write", full)
    assert train_module.main(config(tmp_path) + tiny_overrides(tiny_shapes, out, max_iter=2)) == 2
    err = capsys.readouterr().err
    assert f"{out / 'metrics.jsonl'}: cannot write: disk full" in err
    assert "Traceback" not in err
