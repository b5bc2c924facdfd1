"""SGD and the learning-rate schedule: linear (or constant) warm-up, then step or cosine decay.

The paper's COCO schedule (Detectron2 `WarmupMultiStepLR`): lr 0.02 at batch 16, x0.1 at 60k
and 80k of 90k iterations, warm-up over the first 1000 iterations from lr/1000.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import SolverConfig


class LRFactor:
    """lr(it) / base_lr for iteration `it` (0-based, the iteration about to run)."""

    def __init__(self, cfg: SolverConfig):
        self.schedule = cfg.schedule
        self.max_iter = cfg.max_iter
        self.steps = tuple(cfg.steps)
        self.gamma = cfg.gamma
        self.warmup_iters = cfg.warmup_iters
        self.warmup_factor = cfg.warmup_factor
        self.warmup_method = cfg.warmup_method

    def __call__(self, it: int) -> float:
        if self.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * min(it, self.max_iter) / self.max_iter))
        else:
            decay = self.gamma ** sum(1 for s in self.steps if it >= s)
        if it < self.warmup_iters:
            if self.warmup_method == "constant":
                warm = self.warmup_factor
            else:
                alpha = it / self.warmup_iters
                warm = self.warmup_factor * (1 - alpha) + alpha
            return decay * warm
        return decay



class LRScheduler:
    """Sets every param group's lr to base_lr * LRFactor(iteration). Its state is only the
    iteration: the schedule itself comes from the config, so a resumed run that extends
    max_iter or moves the steps gets the new schedule (LambdaLR would restore the old one)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SolverConfig):
        self.optimizer = optimizer
        self.factor = LRFactor(cfg)
        self.base_lrs = [cfg.base_lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        self.iteration = 0
        self._apply()

    def _apply(self) -> None:
        f = self.factor(self.iteration)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self) -> None:
        """Call after optimizer.step(): moves to the next iteration's lr."""
        self.iteration += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self._apply()


def build_optimizer(model: nn.Module, cfg: SolverConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters, all of them weight-decayed as in the paper and
    torchvision's reference recipe, so published hyper-parameters carry over."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (check model.trainable_backbone_layers)")
    return torch.optim.SGD(params, lr=cfg.base_lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
