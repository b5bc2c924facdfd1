"""Every bash command and Python block in README.md, run as written.

Each block is run in a workspace folder holding the files the README names (a tiny model as
`model.safetensors`, images `a.jpg`, `photos/`, `more/*.jpg`, LabelMe folders, a narrow
Detectron2 `.pkl`, ...), so the text is unchanged and only the data is small. Python blocks of
one section share a namespace, in order; bash blocks of one section run in one shell, in order,
with `maskrcnn` on PATH. Training commands get tiny settings appended (a small preset, two
iterations, the tiny model as `model.weights`) by that `maskrcnn` wrapper: the README's train
command is exactly what runs, with `TINY_TRAIN` as extra overrides. Nothing is downloaded
(MASKRCNN_OFFLINE=1).

Every block must be listed in HOW: "run" (main suite), "slow" (`-m slow`), or "skip: why"
(installs from the network, the test suite itself, several GPUs). A block added to the README
without an entry fails `test_every_block_is_listed`.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from testing_utils import need_export

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

TINY_MODEL = dict(min_size=64, max_size=64, anchor_sizes=[8, 16, 32, 64, 128], rpn_pre_nms_top_n_test=50,
                  rpn_post_nms_top_n_test=20, rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                  box_detections_per_img=10)
TINY_TRAIN = [
    "model.preset=maskrcnn_resnet18_small", "model.weights=tiny.safetensors", "model.norm_eps=1e-5",
    *(f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_MODEL.items()),
    "model.trainable_backbone_layers=5", "data.num_workers=0", "solver.batch_size=2", "solver.max_iter=2",
    "solver.warmup_iters=1", "solver.steps=[1]", "train.checkpoint_period=1", "train.eval_period=0",
    "train.eval_batch_size=2", "train.tensorboard=false",
]

# (section, first line of the block) -> how it is tested
HOW = {
    ("Quick start", "pip install -e . && maskrcnn demo"):
        "skip: installs the package (CI does, in .ci/run); the demo is tests/engine/test_demo.py",
    ("Quick start", "pip install torch --index-url https://download.pytorch.org/whl/cpu"):
        "skip: installs PyTorch from the network",
    ("torchvision weights, same outputs", "import torch"): "slow",
    ("torchvision weights, same outputs", "targets = ["): "slow",
    ("Detectron2 weights, same outputs", "import torch"): "run",
    ("Predict on images", "from maskrcnn import load_model"): "run",
    ("Predict on images", "maskrcnn predict photos/"): "run",
    ("Predict on images", 'for r in model.predict(["photos/", "clip.mp4"], stream=True)'): "run",
    ("Serve over HTTP", 'pip install -e ".[serve]"'):
        "skip: installs from the network and starts a server that runs until stopped; tests/serve/test_cli.py "
        "starts the same `maskrcnn serve` and posts to it as the curl lines do",
    ("The paper's variants", "import torch"): "run",
    ("Backbones, norm layers and the C4 model", "import torch"): "slow",
    ("Keypoint R-CNN", "maskrcnn demo --keypoints"):
        "skip: minutes of training; tests/engine/test_keypoint_training.py runs the same demo, shortened",
    ("Export to ONNX", 'pip install -e ".[onnx]"'): "skip: installs from the network",
    ("Export to ONNX", "maskrcnn export --weights model.safetensors"): "slow",
    ("Export to ONNX", "import maskrcnn"): "slow",
    ("Train on your data", "maskrcnn convert labelme my_labelme_folder/train"): "slow",
    ("Train on your data", "maskrcnn train --config finetune_coco_to_custom.yaml"): "slow",
    ("Train on your data", "torchrun --nproc_per_node=8"):
        "skip: 8 processes; DDP is tests/engine/test_distributed.py",
    ("Tests and benchmarks", "python -m venv .venv-reference"):
        "skip: creates the 5.6 GB reference venv (CI does, in .ci/run)",
    ("Tests and benchmarks", "python -m pytest -q"): "skip: the test suite and benchmarks themselves",
}


def readme_blocks() -> list[tuple[str, str, str]]:
    """(section, language, code) of every ```bash / ```python block, in order."""
    blocks, section = [], ""
    for match in re.finditer(r"^## ([^\n]+)$|^```(bash|python)\n(.*?)^```", README.read_text(), re.M | re.S):
        if match.group(1):
            section = match.group(1).strip()
        else:
            blocks.append((section, match.group(2), match.group(3)))
    return blocks


def key(section: str, code: str) -> tuple[str, str]:
    first = code.strip().splitlines()[0]
    for (s, prefix) in HOW:
        if s == section and first.startswith(prefix):
            return s, prefix
    return section, first


def test_every_block_is_listed():
    blocks = readme_blocks()
    assert len(blocks) >= 10
    unlisted = [key(s, c) for s, _, c in blocks if key(s, c) not in HOW]
    assert not unlisted, f"README blocks without an entry in HOW: {unlisted}"
    stale = set(HOW) - {key(s, c) for s, _, c in blocks}
    assert not stale, f"HOW lists blocks the README no longer has: {stale}"


# ------------------------------------------------------------------ the workspace


def _labelme(folder: Path, name: str, shapes: list[tuple[str, list]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    doc = {"version": "5.4.1", "flags": {}, "imagePath": f"{name}.png", "imageData": None,
           "imageHeight": 64, "imageWidth": 64,
           "shapes": [{"label": label, "points": pts, "group_id": None, "shape_type": "rectangle", "flags": {}}
                      for label, pts in shapes]}
    (folder / f"{name}.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from maskrcnn.checkpoint import save_model
    from maskrcnn.modeling import build_preset

    from testing_utils import small_detectron2_state_dict

    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    model = build_preset("maskrcnn_resnet18_small", num_classes=3, class_names=["cat", "dog"], **TINY_MODEL)
    for path in ("model.safetensors", "tiny.safetensors", "demo_output/train/model_final.safetensors"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        save_model(model, root / path)
    rng = np.random.default_rng(0)
    for path in ("a.jpg", "photos/b.png", "more/c.jpg", "more/d.jpg"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / path)
    if _has_pyav():  # a 3-frame clip for the streaming example
        from maskrcnn.io.video import write_video

        write_video(root / "clip.mp4", [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(3)], fps=5)
    state = {k: v.numpy() for k, v in small_detectron2_state_dict().items()}
    (root / "model_final_f10217.pkl").write_bytes(pickle.dumps({"model": state}))
    for i in range(4):  # the training split has both classes; validation only "dog"
        _labelme(root / "my_labelme_folder" / "train", f"t{i}",
                 [("cat", [[4, 4], [30, 30]]), ("dog", [[34, 30], [60, 60]])])
    for i in range(2):
        _labelme(root / "my_labelme_folder" / "val", f"v{i}", [("dog", [[10, 10], [40, 50]])])
    # `maskrcnn` as README users have it, plus tiny settings for `train`
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "maskrcnn"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = train ]; then exec {shlex.quote(sys.executable)} -m maskrcnn "$@" {shlex.join(TINY_TRAIN)}; fi\n'
        f'exec {shlex.quote(sys.executable)} -m maskrcnn "$@"\n'
    )
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return root


def _has_pyav() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _run_section(section: str, workspace: Path, which: str, monkeypatch) -> None:
    blocks = [(lang, code) for s, lang, code in readme_blocks() if s == section and HOW.get(key(s, code)) == which]
    assert blocks, f"nothing to run in {section!r}"
    bash = "\n".join(code for lang, code in blocks if lang == "bash")
    if bash:
        env = {**os.environ, "PYTHONPATH": str(REPO), "MASKRCNN_OFFLINE": "1",
               "PATH": f"{workspace / '.bin'}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", bash], cwd=workspace, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{section}: bash failed\n{bash}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    python = [code for lang, code in blocks if lang == "python"]
    if python:
        monkeypatch.chdir(workspace)
        monkeypatch.setenv("MASKRCNN_OFFLINE", "1")
        namespace: dict = {"__name__": "__readme__"}
        for code in python:
            exec(compile(code, f"README.md ({section})", "exec"), namespace)


def test_predict_section(workspace, monkeypatch):
    if not _has_pyav():
        pytest.skip("the streaming example reads clip.mp4: needs PyAV (the [video] extra)")
    _run_section("Predict on images", workspace, "run", monkeypatch)
    out = workspace / "out"
    assert json.loads((out / "results.json").read_text()) is not None
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["b.png", "c.png", "d.png"]
    assert (out / "masks.csv").read_text().startswith("ImageId,EncodedPixels")


def test_detectron2_section(workspace, monkeypatch):
    _run_section("Detectron2 weights, same outputs", workspace, "run", monkeypatch)


def test_variants_section(workspace, monkeypatch):
    _run_section("The paper's variants", workspace, "run", monkeypatch)


@pytest.mark.slow
def test_backbones_section(workspace, monkeypatch):
    _run_section("Backbones, norm layers and the C4 model", workspace, "slow", monkeypatch)


@pytest.mark.slow
def test_train_section(workspace, monkeypatch):
    _run_section("Train on your data", workspace, "slow", monkeypatch)
    val = json.loads((workspace / "data" / "val.json").read_text())
    assert {c["name"]: c["id"] for c in val["categories"]} == {"cat": 1, "dog": 2}  # the train split's ids
    assert (workspace / "runs" / "mine" / "model_final.safetensors").is_file()
    assert (workspace / "predictions" / "results.json").is_file()


@pytest.mark.slow
def test_export_section(workspace, monkeypatch):
    pytest.importorskip("onnxruntime")
    need_export()
    _run_section("Export to ONNX", workspace, "slow", monkeypatch)
    assert (workspace / "model.onnx").is_file()


@pytest.mark.slow
def test_torchvision_section(workspace, monkeypatch):
    from maskrcnn.checkpoint.seeded import seeded_state_dict

    from testing_utils import parity_keys

    # the published file's name, holding the parity fixture's seeded weights (same layout)
    torch.save(seeded_state_dict(parity_keys("v1")), workspace / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    _run_section("torchvision weights, same outputs", workspace, "slow", monkeypatch)
