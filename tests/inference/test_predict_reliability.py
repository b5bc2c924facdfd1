"""`maskrcnn predict` never loses finished work: images fail one by one, results stream to
predictions.jsonl, a stopped run keeps (and `--resume` continues) what it finished, and outputs
are checked before inference. Each test asserts the exit code, that the message names the file,
and that what was written before is still there."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrcnn.inference import api
from maskrcnn.inference import predict as predict_module
from maskrcnn.inference.predict import PROGRESS_FILE, main

from inference_helpers import make_image


def _records(out: Path) -> list[dict]:
    """The image lines of predictions.jsonl (no header, no footer)."""
    lines = [json.loads(line) for line in (out / PROGRESS_FILE).read_text().splitlines()]
    return [r for r in lines if "path" in r]


def _results_by_file(out: Path) -> dict[str, list[dict]]:
    images = {i["id"]: Path(i["file_name"]).name for i in json.loads((out / "images.json").read_text())}
    by_file: dict[str, list[dict]] = {name: [] for name in images.values()}
    for entry in json.loads((out / "results.json").read_text()):
        by_file[images[entry["image_id"]]].append(entry)
    return by_file


@pytest.fixture()
def folder(tmp_path):
    """Three ordinary images."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(make_image(i)).save(src / f"img{i}.png")
    return src


def test_thin_strips_and_single_pixels_predict(tiny_weights, folder, tmp_path, capsys):
    # 2x5000 resizes to 1 row, not 0 (torchvision 0.29 fails on it in F.interpolate)
    Image.fromarray(np.full((2, 5000, 3), 90, np.uint8)).save(folder / "thin.png")
    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(folder / "dot.png")
    Image.fromarray(np.full((5000, 2, 3), 90, np.uint8)).save(folder / "tall.png")
    out = tmp_path / "out"
    code = main([str(folder), "-w", str(tiny_weights), "-o", str(out), "-q", "--batch-size", "3",
                 "--label-maps", "--csv", str(out / "s.csv")])
    assert code == 0, capsys.readouterr().err
    names = ["dot.png", "img0.png", "img1.png", "img2.png", "tall.png", "thin.png"]
    assert sorted(Path(r["file"]).name for r in _records(out)) == names
    assert not any("error" in r for r in _records(out))


def test_a_model_failure_costs_only_that_image(tiny_weights, folder, tmp_path, capsys, monkeypatch):
    Image.fromarray(make_image(7, 96, 77)).save(folder / "poison.png")
    forward = api.Predictor._forward

    def failing_forward(self, images, *thresholds):
        if any(img.shape[-1] == 77 for img in images):
            raise RuntimeError("simulated kernel failure")
        return forward(self, images, *thresholds)

    monkeypatch.setattr(api.Predictor, "_forward", failing_forward)
    out = tmp_path / "out"
    # batch size 4: poison.png shares a batch with the others, which are then retried alone
    code = main([str(folder), "-w", str(tiny_weights), "-o", str(out), "-q", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert code == 1
    assert "poison.png: the model failed on this 96x77 (HxW) image (RuntimeError: simulated kernel failure)" in err
    assert sorted(_results_by_file(out)) == ["img0.png", "img1.png", "img2.png"]


@pytest.mark.parametrize("flag", ["--csv", "--out"])
def test_unwritable_outputs_are_refused_before_inference(tiny_weights, folder, tmp_path, capsys,
                                                        monkeypatch, flag):
    (tmp_path / "a_file").write_text("keep me")
    bad = tmp_path / "a_file" / "x.csv"  # a folder path through a file: unwritable even as root
    argv = [str(folder), "-w", str(tiny_weights), "-q"]
    argv += ["-o", str(tmp_path / "out"), "--csv", str(bad)] if flag == "--csv" else ["-o", str(bad)]
    monkeypatch.setattr(predict_module, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a folder" in err
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_disk_full_stops_the_run_and_keeps_what_finished(tiny_weights, folder, tmp_path, capsys, monkeypatch):
    write_image = predict_module.write_image
    calls = []

    def full_disk(path, image, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_image(path, image, **kw)

    monkeypatch.setattr(predict_module, "write_image", full_disk)
    out = tmp_path / "out"
    code = main([str(folder), "-w", str(tiny_weights), "-o", str(out), "-q", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{out / 'overlays' / 'img1.png'}: cannot write: disk full" in err
    assert list(_results_by_file(out)) == ["img0.png"]  # the image finished before is kept
    # the disk has room again: --resume does the rest
    monkeypatch.setattr(predict_module, "write_image", write_image)
    assert main([str(folder), "-w", str(tiny_weights), "-o", str(out), "-q", "--resume"]) == 0
    assert sorted(_results_by_file(out)) == ["img0.png", "img1.png", "img2.png"]


def test_ctrl_c_keeps_the_finished_images(tiny_weights, folder, tmp_path, capsys, monkeypatch):
    forward = api.Predictor._forward
    calls = []

    def interrupted(self, images, *thresholds):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return forward(self, images, *thresholds)

    monkeypatch.setattr(api.Predictor, "_forward", interrupted)
    out = tmp_path / "out"
    code = main([str(folder), "-w", str(tiny_weights), "-o", str(out), "-q", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGINT
    assert "stopped by SIGINT; 1 image(s) not done, --resume continues" in err
    assert sorted(_results_by_file(out)) == ["img0.png", "img1.png"]
    # a plain re-run must not silently throw the unfinished run away
    monkeypatch.setattr(api.Predictor, "_forward", forward)
    before = (out / PROGRESS_FILE).read_bytes()
    assert main([str(folder), "-w", str(tiny_weights), "-o", str(out), "-q"]) == 2
    assert "did not finish: --resume to continue it, or --overwrite" in capsys.readouterr().err
    assert (out / PROGRESS_FILE).read_bytes() == before


def test_resume_skips_done_images_and_adds_new_ones(tiny_weights, folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(folder), "-w", str(tiny_weights), "-o", str(out), "-q", "--csv", str(out / "s.csv")]
    assert main(argv) == 0
    first = _results_by_file(out)
    Image.fromarray(make_image(9)).save(folder / "new.png")
    with open(out / PROGRESS_FILE, "ab") as f:
        f.write(b'{"path": "/torn/by/a/kill", "fi')  # a last line cut short by SIGKILL
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming: 3 of 4 image(s) already done" in err
    now = _results_by_file(out)
    assert sorted(now) == ["img0.png", "img1.png", "img2.png", "new.png"]
    for name, entries in first.items():
        assert [e["segmentation"] for e in now[name]] == [e["segmentation"] for e in entries]
    assert [Path(r["file"]).name for r in _records(out)] == ["img0.png", "img1.png", "img2.png", "new.png"]
    rows = (out / "s.csv").read_text().splitlines()
    assert {row.split(",")[0] for row in rows[1:]} == {"img0", "img1", "img2", "new"}


def test_resume_with_other_settings_is_refused(tiny_weights, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(folder / "img0.png"), "-w", str(tiny_weights), "-o", str(out), "-q"]) == 0
    before = (out / "results.json").read_bytes()
    code = main([str(folder), "-w", str(tiny_weights), "-o", str(out), "-q", "--resume",
                 "--score-threshold", "0.3"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{out / PROGRESS_FILE} was written with other settings (score_threshold 0.5 -> 0.3)" in err
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--score-threshold", "nan"], "--score-threshold must be a number in [0, 1], got nan"),
    (["--mask-threshold", "2"], "--mask-threshold must be a number in [0, 1], got 2.0"),
    (["--max-pixels", "-1"], "--max-pixels must be >= 0"),
    (["--resume", "--overwrite"], "exclude each other"),
])
def test_bad_numbers_are_refused(folder, tmp_path, capsys, argv, message):
    assert main([str(folder), "-w", "unused", "-o", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sigterm_during_predict_keeps_the_finished_results(tiny_weights, tmp_path, capsys):
    """A real process, stopped with SIGTERM after a few images: results.json holds exactly the
    finished ones, and --resume completes the run without redoing them."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(12):
        Image.fromarray(make_image(i, 64, 64)).save(src / f"im{i:02d}.png")
    out = tmp_path / "out"
    argv = [str(src), "-w", str(tiny_weights), "-o", str(out), "-q", "--no-overlays", "--batch-size", "1",
            "--score-threshold", "0.8"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "maskrcnn", "predict", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = out / PROGRESS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file() and progress.read_bytes().count(b'"results"') >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    finished = {Path(r["file"]).name: r["results"] for r in _records(out) if "results" in r}
    assert 2 <= len(finished) < 12
    kept = _results_by_file(out)
    assert sorted(kept) == sorted(finished)
    for name, entries in finished.items():
        assert [e["segmentation"] for e in kept[name]] == [e["segmentation"] for e in entries]

    assert main(argv + ["--resume"]) == 0
    assert f"resuming: {len(finished)} of 12 image(s) already done" in capsys.readouterr().err
    final = _results_by_file(out)
    assert len(final) == 12
    for name, entries in finished.items():  # nothing redone, nothing lost
        assert [e["segmentation"] for e in final[name]] == [e["segmentation"] for e in entries]
    assert sum(1 for r in _records(out) if "results" in r) == 12
