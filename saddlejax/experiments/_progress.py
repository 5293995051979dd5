"""What an experiment is given besides its config: progress bars and a checkpoint folder.

Progress is a tqdm bar per stage of an experiment, showing which α and seeds finished, the time
they reached, the loss there and the steps taken; it is quiet when standard error is not a
terminal (tqdm's `disable=None`) or when `progress=False`. The checkpoint folder (inside the
run folder) keeps every finished chunk of a sweep, so an interrupted run loses no finished
work."""

import contextlib
import shutil
import sys
from pathlib import Path

import numpy as np


class RunContext:
    """Progress bars and checkpoints for one run; `RunContext(False)` shows nothing and keeps
    no checkpoints (a notebook's run)."""

    def __init__(self, progress: bool = True, checkpoints: str | Path | None = None):
        self.enabled = progress
        self.checkpoints = None if checkpoints is None else Path(checkpoints)

    def checkpoint(self, name: str) -> Path | None:
        """The checkpoint folder of the sweep `name` (None when the run keeps none)."""
        return None if self.checkpoints is None else self.checkpoints / name

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None, unit: str = "it"):
        """A bar of `total` units for one stage; yields a `Task`."""
        bar = None
        if self.enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency
                tqdm = None
            if tqdm is not None:
                bar = tqdm(
                    total=total,
                    desc=description,
                    unit=unit,
                    disable=None,  # off when stderr is not a terminal
                    file=sys.stderr,
                    # the terminal's width, 100 columns where it reports none
                    ncols=shutil.get_terminal_size((100, 20)).columns or 100,
                    leave=True,
                )
        task = Task(bar)
        try:
            yield task
        finally:
            if bar is not None:
                bar.close()

    def sweep(self, description: str, n_alphas: int, n_seeds: int):
        """A `task` counting the trajectories of a sweep; its `Task.on_chunk` is the sweep's
        `on_chunk` callback."""
        return self.task(description, n_alphas * n_seeds, unit="traj")


class Task:
    """One bar: `advance(n, **shown)` moves it and shows the given values."""

    def __init__(self, bar):
        self.bar = bar

    def advance(self, n: int = 1, **shown) -> None:
        if self.bar is None:
            return
        if shown:
            self.bar.set_postfix({k: _short(v) for k, v in shown.items()}, refresh=False)
        self.bar.update(n)

    def on_chunk(self, report: dict) -> None:
        """`saddlejax.sweep`'s `on_chunk` callback: α, seeds, time reached, loss, steps."""
        seeds = report["seeds"]
        self.advance(
            len(seeds),
            α=report["alpha"],
            seeds=f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else seeds[0],
            t=float(np.nanmax(report["t"])) if np.any(np.isfinite(report["t"])) else np.nan,
            loss=float(np.nanmedian(report["loss"])) if np.any(np.isfinite(report["loss"]))
            else np.nan,
            steps=report["steps"],
            **({"failed": report["failed"]} if report["failed"] else {}),
            **({"from": "checkpoint"} if report["loaded"] else {}),
        )


def _short(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    return v
