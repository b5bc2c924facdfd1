"""`maskrcnn demo` plumbing on a very short run (the full demo's accuracy and time are measured
by running it; see the slow test)."""
import json
import re

import pytest

from maskrcnn.engine.demo import main

FINAL = re.compile(r"^demo: mask AP50 = \d\.\d{3}, mask AP = \d\.\d{3}, time = \d+ s$")


def test_short_demo_writes_everything_and_ends_with_the_summary_line(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["--out", str(out), "--iterations", "2", "--train-images", "8", "--val-images", "3",
                 "--overlays", "2", "train.progress=false", "train.tensorboard=false"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert FINAL.match(lines[-1]), lines[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and set(summary["evaluation"]) == {"bbox", "segm"}
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert (out / "summary.txt").read_text().startswith("maskrcnn demo:")
    assert (out / "train" / "model_final.safetensors").is_file()
    # a second run in the same folder starts over instead of failing on the old checkpoints
    assert main(["--out", str(out), "--iterations", "1", "--train-images", "8", "--val-images", "2",
                 "--overlays", "0", "train.progress=false", "train.tensorboard=false"]) == 0


@pytest.mark.slow
def test_full_demo_meets_its_target(tmp_path, capsys):
    """The README's promise: mask AP50 >= 0.9 within 5 minutes on 2 CPU cores."""
    assert main(["--out", str(tmp_path / "demo")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    ap50, _, seconds = (float(v) for v in re.findall(r"= ([\d.]+)", last))
    assert ap50 >= 0.9, last
    assert seconds <= 300, last
