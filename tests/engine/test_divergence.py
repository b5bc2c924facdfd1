"""The NaN guard's choice of checkpoint: finite weights, saved before the loss began to diverge."""
import math

import torch
from safetensors.torch import load_file

from maskrcnn.engine import train as train_module
from maskrcnn.engine.checkpointer import Checkpointer
from maskrcnn.engine.divergence import LossHistory

from .conftest import tiny_overrides


def history(losses):
    h = LossHistory()
    for i, v in enumerate(losses, start=1):
        h.add(i, v)
    return h


def test_divergence_starts_at_the_final_run_of_steep_losses():
    # a spike at 3 that recovered is not the divergence; 7 (10x the median) starts it
    h = history([4.0, 3.0, 30.0, 2.5, 2.4, 2.6, 26.0, 900.0, float("nan")])
    assert h.is_high(3) and not h.is_high(4) and h.is_high(7)
    assert h.divergence_start(9) == 7
    assert history([2.0, 2.1, float("inf")]).divergence_start(3) == 3
    assert not history([5.0]).is_high(1)  # nothing before it to compare with


def test_lr_1e5_points_at_a_checkpoint_before_the_blow_up(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "run"
    # four iterations at lr 1e-4 (constant warm-up), then lr 1e5: the weights blow up at once
    overrides = tiny_overrides(tiny_shapes, out, max_iter=30) + [
        "solver.base_lr=1e5", "solver.warmup_method=constant", "solver.warmup_factor=1e-9",
        "solver.warmup_iters=4", "train.checkpoint_period=1", "train.keep_checkpoints=2",
    ]
    code = train_module.main(overrides_config(tmp_path) + overrides)
    err = capsys.readouterr().err
    assert code == 3, err
    assert "model_0000004.safetensors (iteration 4, finite weights)" in err
    assert "solver.base_lr=10000" in err and "solver.warmup_iters=100" in err and "clip_grad_norm" in err
    record = Checkpointer(out).latest()
    assert record["iteration"] == 4
    weights = load_file(str(record["model"]))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    # the checkpoint saved after the lr jump (the latest; the old guard's choice) is kept, and
    # holds the diverged weights (max 57,301 in the issue)
    later = Checkpointer(out).iterations()[-1]
    assert later == 5
    blown = load_file(str(out / Checkpointer.names(later)[0]))
    good_max = max(float(v.abs().max()) for v in weights.values() if v.is_floating_point() and v.numel())
    blown_max = max(float(v.abs().max()) if torch.isfinite(v).all() else math.inf
                    for v in blown.values() if v.is_floating_point() and v.numel())
    assert blown_max > 100 * good_max


def overrides_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return ["--config", str(path)]
