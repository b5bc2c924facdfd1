"""The training loop end to end on a tiny model: exact resume, surviving SIGKILL, the NaN guard,
--skip-bad, and refusing to overwrite a run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maskrcnn.checkpoint import load_native
from maskrcnn.engine import train as train_module
from maskrcnn.engine.checkpointer import Checkpointer
from maskrcnn.engine.config import load_config
from maskrcnn.modeling.mask_rcnn import MaskRCNN

from .conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def run(overrides, resume=False):
    return train_module.train(load_config(None, overrides), resume=resume)


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_gives_bit_identical_weights(tiny_shapes, tmp_path):
    n = 6
    # The straight run also evaluates mid-way: evaluation must not disturb the run either.
    straight = run(tiny_overrides(tiny_shapes, tmp_path / "a", max_iter=n, val=True) + ["train.eval_period=3"])
    run(tiny_overrides(tiny_shapes, tmp_path / "b", max_iter=n // 2))
    resumed = run(tiny_overrides(tiny_shapes, tmp_path / "b", max_iter=n), resume=True)
    assert resumed.iteration == n
    assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())
    # and the files on disk agree with the models in memory
    assert_same_weights(load_file(str(tmp_path / "a" / "model_final.safetensors")),
                        load_file(str(tmp_path / "b" / "model_final.safetensors")))
    # the dataset's COCO category ids travel with the weights (shapes uses ids 1, 3, 7)
    categories = {c["id"] for c in json.loads(tiny_shapes.read_text())["categories"]}
    for folder in ("a", "b"):
        meta = json.loads((tmp_path / folder / "model_final.json").read_text())
        assert set(meta["category_ids"].values()) == categories
    # the resumed run's log has every iteration once
    iterations = [json.loads(line)["iteration"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
                  if "loss" in json.loads(line)]
    assert iterations == list(range(1, n + 1))
    assert "segm/AP" in (tmp_path / "a" / "metrics.jsonl").read_text()
    assert_run_plots(tmp_path / "a")


def assert_run_plots(out: Path):
    """A run with an evaluation ends with results.png and plots/ (matplotlib installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "results.png").exists()
        return
    from PIL import Image

    names = sorted(p.name for p in (out / "plots").iterdir())
    assert names == ["ap_per_class_bbox.png", "ap_per_class_segm.png", "confusion_matrix.csv",
                     "confusion_matrix.png", "pr_curve_bbox.png", "pr_curve_segm.png"]
    for path in [out / "results.png", *(out / "plots").glob("*.png")]:
        with Image.open(path) as im:
            im.load()


def test_sigkill_mid_run_then_resume(tiny_shapes, tmp_path):
    out = tmp_path / "run"
    total = 60
    # A checkpoint every iteration, so the kill is likely to land during a write.
    command = [sys.executable, "-m", "maskrcnn", "train", "--config", str(_empty_config(tmp_path)),
               *tiny_overrides(tiny_shapes, out, max_iter=total), "train.checkpoint_period=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = out / "last_checkpoint.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if pointer.is_file() and json.loads(pointer.read_text())["iteration"] >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    record = Checkpointer(out).latest()  # intact: both files exist and load
    assert 3 <= record["iteration"] < total
    model = load_native(record["model"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    Checkpointer(out).load(record, model)

    # the same command with --resume finishes the run
    done = subprocess.run(command + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {record['model']}" in done.stdout
    assert Checkpointer(out).latest()["iteration"] == total
    assert (out / "model_final.safetensors").is_file()
    assert not list(out.glob(".*.tmp")), "half-written files of the killed run were left behind"

    # ... and ends where a run that was never killed ends, bit for bit (same thread count)
    straight = [a.replace(str(out), str(tmp_path / "straight")) for a in command]
    subprocess.run(straight, cwd=REPO, env=env, capture_output=True, check=True, timeout=300)
    assert_same_weights(load_file(str(tmp_path / "straight" / "model_final.safetensors")),
                        load_file(str(out / "model_final.safetensors")))


def test_nan_loss_stops_with_a_clear_message_and_points_at_the_good_checkpoint(tiny_shapes, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_forward = MaskRCNN.forward
    calls = {"n": 0}

    def forward_with_nan(self, images, targets=None, **kwargs):
        output = real_forward(self, images, targets, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th training iteration
            output.losses["loss_mask"] = output.losses["loss_mask"] * float("nan")
        return output

    monkeypatch.setattr(MaskRCNN, "forward", forward_with_nan)
    code = train_module.main(["--config", str(_empty_config(tmp_path)), *tiny_overrides(tiny_shapes, out, max_iter=8)])
    err = capsys.readouterr().err
    assert code == 3
    assert "non-finite loss at iteration 5" in err
    assert "loss_mask not finite" in err and "loss_classifier=" in err
    # checkpoint 4's weights gave the NaN loss of iteration 5: the guard goes back to 2, whose
    # weights gave the normal loss of iteration 3, and points --resume at it
    assert "model_0000002.safetensors (iteration 2, finite weights)" in err
    assert "solver.base_lr=0.001" in err and "solver.clip_grad_norm=10" in err
    record = Checkpointer(out).latest()
    assert record["iteration"] == 2
    assert (out / "model_0000004.safetensors").is_file()  # left on disk
    model = load_native(record["model"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert not (out / "model_final.safetensors").exists()
    assert not (out / "model_0000006.safetensors").exists()


def test_refuses_to_overwrite_a_run_without_resume(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--config", str(_empty_config(tmp_path)), *tiny_overrides(tiny_shapes, out, max_iter=2)]
    assert train_module.main(args) == 0
    assert train_module.main(args) == 2
    assert "already holds checkpoints; pass --resume" in capsys.readouterr().err
    assert train_module.main(args + ["--resume"]) == 0  # already complete: nothing to do, no error


def test_skip_bad_reports_what_was_skipped(tiny_shapes, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_shapes.parent, data)
    bad = sorted((data / "images").glob("*.png"))[3]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated file
    # 8 iterations of 2 images: one whole epoch, so the bad image is certainly read
    overrides = tiny_overrides(data / "annotations.json", tmp_path / "strict", max_iter=8)
    code = train_module.main(["--config", str(_empty_config(tmp_path)), *overrides])
    assert code == 2 and bad.name in capsys.readouterr().err
    overrides = tiny_overrides(data / "annotations.json", tmp_path / "run", max_iter=2)
    code = train_module.main(["--config", str(_empty_config(tmp_path)), "--skip-bad", *overrides])
    assert code == 0
    assert "skipped 1 bad images/annotations" in capsys.readouterr().out
    assert bad.name in (tmp_path / "run" / "skipped.json").read_text()


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "empty.yaml"
    path.write_text("# everything comes from the command line\n")
    return path


@pytest.mark.cuda
def test_cuda_mixed_precision_trains_and_resumes(tiny_shapes, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cuda = ["train.device=cuda", "solver.amp=true"]
    run(tiny_overrides(tiny_shapes, tmp_path / "run", max_iter=2) + cuda)
    result = run(tiny_overrides(tiny_shapes, tmp_path / "run", max_iter=4) + cuda, resume=True)
    assert result.iteration == 4
    state = torch.load(tmp_path / "run" / "state_0000004.pt", weights_only=True)
    assert "scale" in state["scaler"] and "cuda" in state["rng"][0]
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values() if v.is_floating_point())



def test_training_log_names_the_architecture_options_a_config_changes():
    import dataclasses

    from maskrcnn.engine.config import load_config
    from maskrcnn.engine.train import _ARCHITECTURE_OPTIONS, describe_model
    from maskrcnn.modeling.build import ModelConfig

    # a renamed ModelConfig option would otherwise drop out of the log without a word
    assert set(_ARCHITECTURE_OPTIONS) <= {f.name for f in dataclasses.fields(ModelConfig)}

    paths = ["data.train_annotations=a.json", "data.train_images=a"]
    # shapes_cpu.yaml itself moves the preset to v2 heads; depth and norm come from the command line
    assert describe_model(load_config("shapes_cpu.yaml", paths)) == "maskrcnn_resnet18_small (variant=v2)"
    described = describe_model(load_config("shapes_cpu.yaml", [*paths, "model.depth=50", "model.backbone_norm=gn"]))
    assert described == "maskrcnn_resnet18_small (variant=v2, depth=50, backbone_norm=gn)"
    # an option set to the preset's own value is not news
    assert describe_model(load_config(None, [*paths, "model.depth=50"])) == "maskrcnn_resnet50_fpn"
