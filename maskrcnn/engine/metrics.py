"""Metrics: one JSON object per line in `metrics.jsonl`, mirrored to TensorBoard.

Each record has "iteration" plus scalar values ("loss", "loss_mask", "lr", "bbox/AP", ...).
On resume, records past the checkpoint's iteration (written by the interrupted run after its
last checkpoint, and about to be written again) are dropped, as is a half-written last line.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from ..io import atomic_write


class MetricsWriter:
    def __init__(self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency: pip install maskrcnn[tensorboard]
                warnings.warn("tensorboard is not installed; metrics go to metrics.jsonl only", stacklevel=2)
            else:
                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def truncate_after(self, iteration: int) -> None:
        """Keep only records with iteration <= `iteration` (called when resuming)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["iteration"] <= iteration:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
        atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in kept)))

    def write(self, iteration: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"iteration": iteration, **{k: _plain(v) for k, v in values.items()}}
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, iteration)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    @property
    def tensorboard(self):
        """The TensorBoard SummaryWriter, or None (disabled, or tensorboard not installed)."""
        return self._tb

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible
    return value
