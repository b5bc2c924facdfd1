"""benchmarks/ablations.py and benchmarks/norms_from_scratch.py: their arguments, and one tiny
training run each through to the printed table and the JSON, so a change to the engine or the
config that breaks them shows here rather than half an hour into a benchmark run."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--train-images", "4", "--val-images", "2", "--threads", "1"]


def test_norms_sweep_trains_each_variant_at_each_lr_and_reports_the_best(tmp_path, capsys):
    norms = load_script("norms_from_scratch")
    assert norms.main(["--iterations", "2", "--variants", "gn_heads", "--lrs", "0.01", "0.02", "--seeds", "3",
                       "--out", str(tmp_path), *TINY]) == 0
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [(r["variant"], r["lr"], r["seed"]) for r in rows] == [("gn_heads", 0.01, 3), ("gn_heads", 0.02, 3)]
    for r in rows:
        assert -1.0 <= r["mask_AP"] <= 1.0 and r["s_per_iter"] > 0
        assert "model.head_norm=gn" in r["overrides"]
    cfg = json.loads((tmp_path / "runs" / "gn_heads_lr0.02_seed3" / "config.json").read_text())
    assert cfg["solver"]["base_lr"] == 0.02 and cfg["model"]["head_norm"] == "gn"
    best = max(rows, key=lambda r: r["mask_AP"])
    printed = capsys.readouterr().out
    assert f"gn_heads     lr {best['lr']:g}: mask AP {best['mask_AP']:.3f}" in printed


def test_norms_rejects_unknown_variant_and_bad_iterations(tmp_path, capsys):
    norms = load_script("norms_from_scratch")
    with pytest.raises(SystemExit) as e:
        norms.main(["--variants", "layer_norm", "--out", str(tmp_path)])
    assert e.value.code == 2 and "layer_norm" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        norms.main(["--iterations", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--iterations must be >= 1" in capsys.readouterr().err


def test_ablations_one_row_prints_ours_beside_the_papers(tmp_path, capsys):
    ablations = load_script("ablations")
    out = tmp_path / "ablations.json"
    # 2 iterations: log_period (iterations // 4) would be 0, which train's config rejects
    assert ablations.main(["--variants", "align", "no_mask", "--iterations", "2", "--warmup", "1", "--json", str(out),
                           "--out", str(tmp_path / "runs"), *TINY]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"align", "no_mask"}
    assert saved["results"]["align"]["seconds_per_iter"] > 0
    assert saved["results"]["no_mask"]["mask_AP"] is None  # Faster R-CNN: box AP only
    printed = capsys.readouterr().out
    assert "RoIAlign, sigmoid, FCN (baseline)" in printed and "(R-50-C4, Tab. 2b/2c)" in printed
    assert "Mask R-CNN box AP, R-101-FPN (Tab. 3) 38.2" in printed
