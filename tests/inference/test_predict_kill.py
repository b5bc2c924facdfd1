"""`maskrcnn predict` killed with SIGKILL (no handler runs, a line may be torn mid-write): every
image finished before the kill is kept in predictions.jsonl, and --resume finishes the others
without redoing them, ending with the results an uninterrupted run gives."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from maskrcnn.inference.predict import PROGRESS_FILE, main

from inference_helpers import make_image


def _finished_lines(progress: Path) -> dict[str, list]:
    """Results of the whole, parseable image lines (a torn last line is not one)."""
    done = {}
    for line in progress.read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        record = json.loads(line)
        if "results" in record:
            done[Path(record["file"]).name] = record["results"]
    return done


def _results_by_file(out: Path) -> dict[str, list]:
    images = {i["id"]: Path(i["file_name"]).name for i in json.loads((out / "images.json").read_text())}
    by_file: dict[str, list] = {name: [] for name in images.values()}
    for entry in json.loads((out / "results.json").read_text()):
        by_file[images[entry["image_id"]]].append(entry)
    return by_file


def test_sigkill_during_predict_keeps_finished_images_and_resume_completes(tiny_weights, tmp_path, capsys):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(12):
        Image.fromarray(make_image(i, 64, 64)).save(src / f"im{i:02d}.png")
    argv = [str(src), "-w", str(tiny_weights), "-q", "--no-overlays", "--batch-size", "1", "--score-threshold", "0.8"]
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "maskrcnn", "predict", *argv, "-o", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = out / PROGRESS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file() and progress.read_bytes().count(b'"results"') >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = _finished_lines(progress)
    assert 3 <= len(kept) < 12, "the kill came too late to test anything"
    assert not (out / "results.json").exists()  # only a finished run assembles it

    assert main(argv + ["-o", str(out), "--resume"]) == 0
    assert f"resuming: {len(kept)} of 12 image(s) already done" in capsys.readouterr().err
    final = _results_by_file(out)
    assert len(final) == 12
    for name, entries in kept.items():  # nothing lost, nothing redone
        assert [e["segmentation"] for e in final[name]] == [e["segmentation"] for e in entries]
    assert sum(1 for name in _finished_lines(progress)) == 12

    # and the same as a run that was never interrupted
    straight = tmp_path / "straight"
    assert main(argv + ["-o", str(straight)]) == 0
    assert _results_by_file(straight) == final
