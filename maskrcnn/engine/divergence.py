"""Which checkpoint to go back to when the loss becomes NaN.

The latest checkpoint is often not the answer: with a learning rate far too high the weights
blow up several iterations before the loss is NaN, and a checkpoint saved in between holds
finite but useless weights (max |w| 57,301 at lr 1e5). So the loop records every iteration's
total loss, and a checkpoint counts as good only when the loss computed *with its weights*
(the next iteration's) came before the divergence began. The divergence begins at the first
iteration of the final run of "high" losses that ends in the NaN; a loss is high when it is not
finite or more than `STEEP_FACTOR` times the median of the `WINDOW` losses before it.

While training, the newest checkpoint that was followed by a normal loss is protected from
pruning (`Checkpointer.protect`), so a good one is still on disk when the NaN comes however
many checkpoints were saved during the divergence.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpointer import Checkpointer

WINDOW = 20  # losses before an iteration that its own loss is compared with
STEEP_FACTOR = 5.0  # single-batch losses vary by 2-3x in healthy training; 5x the median does not


class LossHistory:
    """Total loss per iteration of this process's run (iterations count from 1)."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def add(self, iteration: int, loss: float) -> None:
        self.losses[iteration] = loss

    def is_high(self, iteration: int) -> bool:
        """Not finite, or more than STEEP_FACTOR x the median of the WINDOW finite losses before.
        An iteration with no earlier losses recorded cannot be judged and counts as normal."""
        loss = self.losses.get(iteration)
        if loss is None:
            return False
        if not math.isfinite(loss):
            return True
        before = [v for i in range(iteration - WINDOW, iteration) if (v := self.losses.get(i)) is not None
                  and math.isfinite(v)]
        return bool(before) and loss > STEEP_FACTOR * statistics.median(before)

    def divergence_start(self, last: int) -> int:
        """First iteration of the run of high losses ending at `last` (the non-finite one)."""
        start = last
        while start - 1 in self.losses and self.is_high(start - 1):
            start -= 1
        return start


def finite_weights(path: Path) -> bool:
    try:
        return all(torch.isfinite(t).all() for t in load_file(str(path)).values() if t.is_floating_point())
    except Exception:  # unreadable: not a checkpoint to recommend
        return False


def last_good_checkpoint(checkpointer: Checkpointer, history: LossHistory, nan_iteration: int,
                         first_iteration: int) -> int | None:
    """The newest checkpoint on disk whose weights are finite and produced a loss before the
    divergence started; None if there is none. Checkpoints from before `first_iteration` (this
    process's first recorded loss, after a resume) were followed by the earlier run's normal
    training and count as good when their weights are finite."""
    start = history.divergence_start(nan_iteration)
    for iteration in sorted(checkpointer.iterations(), reverse=True):
        # the loss of iteration c + 1 is the one computed with checkpoint c's weights
        if iteration + 1 >= start and iteration + 1 >= first_iteration:
            continue
        if finite_weights(checkpointer.directory / checkpointer.names(iteration)[0]):
            return iteration
    return None


def nan_message(iteration: int, values: dict[str, float], checkpointer: Checkpointer, history: LossHistory,
                first_iteration: int, solver) -> str:
    """The NaN guard's message. Moves the checkpoint pointer to the good checkpoint, so that
    `--resume` continues from there (the later checkpoints stay on disk, unchanged)."""
    terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    bad = ", ".join(k for k, v in values.items() if not math.isfinite(v))
    start = history.divergence_start(iteration)
    rise = ""
    if start < iteration:
        before = [v for i in range(start - WINDOW, start) if (v := history.losses.get(i)) is not None]
        if before:
            rise = (f"; the loss had been rising steeply since iteration {start} "
                    f"({history.losses[start]:.4g}, median before {statistics.median(before):.4g})")
    good = last_good_checkpoint(checkpointer, history, iteration, first_iteration)
    latest = checkpointer.latest()
    if good is not None:
        name = checkpointer.names(good)[0]
        if latest is not None and latest["iteration"] != good:
            checkpointer.point_to(good)
            where = (f"the last checkpoint before the divergence is {checkpointer.directory / name} (iteration "
                     f"{good}, finite weights); {checkpointer.directory / 'last_checkpoint.json'} now points at it "
                     f"(later checkpoints, saved while diverging, are left on disk), so --resume continues from it")
        else:
            where = (f"the last good checkpoint is {checkpointer.directory / name} (iteration {good}, finite "
                     "weights), unchanged; continue from it with --resume")
    elif latest is not None:
        where = ("every checkpoint on disk was saved after the loss began to diverge; start again from "
                 "iteration 0 in a new train.output_dir")
    else:
        where = "no checkpoint had been written yet"
    s = solver
    clip = (f"set gradient clipping (solver.clip_grad_norm=10)" if s.clip_grad_norm is None
            else f"clip gradients harder (solver.clip_grad_norm={s.clip_grad_norm / 10:g}, now {s.clip_grad_norm:g})")
    return (f"non-finite loss at iteration {iteration} ({bad} not finite): {terms}{rise}. Training stopped; {where}. "
            f"To change: lower the learning rate (solver.base_lr={s.base_lr / 10:g}, now {s.base_lr:g}), "
            f"lengthen the warm-up (solver.warmup_iters={max(2 * s.warmup_iters, 100)}, now {s.warmup_iters}), "
            f"{clip}; or look for bad annotations (--skip-bad lists what it drops).")
