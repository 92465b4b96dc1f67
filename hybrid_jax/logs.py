"""Run logs: ``metrics.jsonl`` (one JSON object per logged step or evaluation) and TensorBoard."""
from __future__ import annotations

import json
import pathlib

from tensorboardX import SummaryWriter


class MetricsLog:
    """Appends ``{"step": s, **scalars}`` lines to ``workdir/metrics.jsonl`` and the same scalars
    to TensorBoard event files in ``workdir/tensorboard``. Only the first process writes."""

    def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            workdir = pathlib.Path(workdir)
            self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
            self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
