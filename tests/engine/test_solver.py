"""Learning-rate schedule: warm-up, steps, cosine, and resuming the scheduler."""
import math

import pytest
import torch

from maskrcnn.engine.config import SolverConfig
from maskrcnn.engine.solver import LRFactor, LRScheduler


def test_paper_schedule_values():
    f = LRFactor(SolverConfig())  # defaults: the paper's 1x schedule
    assert f(0) == pytest.approx(0.001)
    assert f(500) == pytest.approx(0.001 * 0.5 + 0.5)  # linear from 1/1000 to 1
    assert f(1000) == 1.0
    assert f(59999) == 1.0
    assert f(60000) == pytest.approx(0.1)
    assert f(80000) == pytest.approx(0.01)


def test_constant_warmup_and_cosine():
    f = LRFactor(SolverConfig(schedule="cosine", max_iter=100, warmup_iters=10, warmup_factor=0.1,
                              warmup_method="constant"))
    assert f(0) == pytest.approx(0.1 * 1.0)
    assert f(9) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_sets_the_lr_of_each_step_and_resumes():
    cfg = SolverConfig(base_lr=0.1, max_iter=20, steps=[5], warmup_iters=2, warmup_factor=0.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    sched = LRScheduler(opt, cfg)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        sched.step()
    assert seen[:3] == pytest.approx([0.05, 0.075, 0.1])
    assert seen[5:] == pytest.approx([0.01] * 3)
    # a fresh scheduler given the state continues where this one is
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    sched2 = LRScheduler(opt2, cfg)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
