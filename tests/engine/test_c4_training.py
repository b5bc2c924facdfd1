"""The C4 model is trained by the same engine as the FPN one."""
import json

from maskrcnn.engine.config import load_config
from maskrcnn.engine.train import train
from maskrcnn.modeling.roi_heads.res5_head import Res5RoIHeads

from .conftest import tiny_overrides


def test_engine_trains_the_c4_model_and_the_loss_goes_down(tiny_shapes, tmp_path):
    out = tmp_path / "c4"
    n = 12
    overrides = tiny_overrides(tiny_shapes, out, max_iter=n) + [
        "model.architecture=c4", "solver.base_lr=0.02",
        "train.checkpoint_period=100"]
    result = train(load_config(None, overrides))
    assert isinstance(result.model.roi_heads, Res5RoIHeads)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == n
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, losses
