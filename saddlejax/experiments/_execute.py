"""Running jobs into run folders, and presets from Python (notebooks, research code)."""

import dataclasses
import shutil
import time
from pathlib import Path

import jax

from ._config import Job, configure
from ._progress import RunContext
from ._record import Outcome, finished_config, write_run


@dataclasses.dataclass
class RunRecord:
    """A job's run: its `folder`, the `outcome` (None when skipped), whether it was `skipped`
    (a finished run with the same config was already there), the wall time and the paths
    written."""

    job: Job
    folder: Path
    outcome: Outcome | None
    skipped: bool
    wall_time: float = 0.0
    paths: list = dataclasses.field(default_factory=list)


def run_folder(job: Job, out: str | Path) -> Path:
    """The folder of `job` under `out`: `out` itself for a single run, `out/<key=value,...>`
    for a member of a grid."""
    out = Path(out).expanduser()
    return out / job.label if job.label else out


class StaleRun(ValueError):
    """A run folder holds a finished run of another config."""


def check_folder(job: Job, folder: Path, force: bool) -> bool:
    """Whether `folder` already holds this job finished (then it is skipped). A finished run of
    a different config is refused, naming the fields that differ, unless `force`."""
    done = finished_config(folder)
    if done is None or force:
        return False
    want = job.resolved()
    if done == want:
        return True
    differ = sorted(k for k in set(done) | set(want) if done.get(k) != want.get(k))
    raise StaleRun(
        f"--out {str(folder)!r} holds a finished run with other settings ({', '.join(differ)} "
        "differ); give another --out, or --force to replace it"
    )


def execute(
    job: Job,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    checkpoints: str | Path | None = None,
) -> RunRecord:
    """Run `job` into its folder under `out` (see `run_folder`), or skip it when that folder
    already holds it finished. The folder's `summary.json` is written last: a run interrupted
    before it is redone next time, and its sweeps resume from the finished chunks kept in
    `checkpoints` (default: the run folder's `checkpoints/`); a finished run is never
    recomputed. Under `jax.distributed` every process runs the job (the sweeps split their
    chunks) and process 0 alone writes the folder, which should be on a shared filesystem so
    that every process skips the same finished jobs."""
    folder = run_folder(job, out)
    if check_folder(job, folder, force):
        return RunRecord(job, folder, None, True)
    if force:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    start = time.perf_counter()
    own = checkpoints is None  # the run folder's own checkpoints, removed once it is written
    context = RunContext(progress, folder / "checkpoints" if own else checkpoints)
    outcome = job.experiment.run(job.config, context)
    wall = time.perf_counter() - start
    paths = []
    if jax.process_index() == 0:  # the files' temporary names are not per process
        paths = write_run(folder, job.experiment.name, job.resolved(), job.yaml(), outcome, wall)
    if own:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return RunRecord(job, folder, outcome, False, wall, paths)


def run_preset(
    name: str, *, quick: bool = True, overrides=(), progress: bool = True
) -> Outcome:
    """Run preset `name` (its quick mode unless `quick=False`) with optional `key=value`
    `overrides` and return its `Outcome` (checks, values, arrays, figures) without writing a
    folder: what the notebooks use. A grid override is refused here (use `configure`)."""
    jobs = configure(name, overrides, quick=quick)
    if len(jobs) != 1:
        raise ValueError("run_preset runs one config; a grid override gives several")
    job = jobs[0]
    return job.experiment.run(job.config, RunContext(progress))


def show(outcome: Outcome, figure: str | None = None):
    """Draw one of `outcome`'s figures (the first by default) into a new matplotlib `Figure`
    and return it (it displays itself in a notebook)."""
    from ._plot import figure as new_figure

    name = figure or next(iter(outcome.figures))
    fig = new_figure(layout="constrained")
    outcome.figures[name](fig)
    return fig
