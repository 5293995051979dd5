"""Running configured jobs from the command line: one run folder per job, a finished one
skipped, the table and the checks printed, and the exit status (0: every job finished with its
checks passed; 1: a solve failed or a check did not hold)."""

import sys
from pathlib import Path


def default_out(name: str, quick: bool) -> str:
    """`results/<name>` (full) or `results/<name>/quick`."""
    return f"results/{name}" + ("/quick" if quick else "")


def check_jobs(jobs, out: str, force: bool) -> None:
    """Refuse, before any work, a run folder that holds a finished run of other settings, or
    where the run would write a file onto a folder."""
    from ..experiments import run_folder
    from ..experiments._execute import check_folder
    from ._main import check_output

    check_output(out, "--out", folder=True)
    for job in jobs:
        folder = run_folder(job, out)
        check_folder(job, folder, force)
        for name in ("summary.json", "config.yaml", "results.npz"):
            if (folder / name).is_dir():
                raise ValueError(
                    f"--out {str(folder)!r} holds a folder {name!r} where the run writes a file; "
                    "give another --out"
                )


def run_jobs(prog: str, jobs, out: str, *, force: bool, checkpoint: str | None = None) -> int:
    """Run every job into its folder under `out` and print what it found."""
    from .. import experiments as ex
    from ..flow import CheckpointMismatch
    from ._main import error_line

    status = 0
    for n, job in enumerate(jobs, 1):
        where = f" [{n}/{len(jobs)}: {job.label}]" if len(jobs) > 1 else ""
        print(f"{prog}: {job.experiment.name} from {job.source!r}{where}", flush=True)
        if job.description:
            print(f"  {job.description}", flush=True)
        try:
            record = ex.execute(job, out, force=force, checkpoints=checkpoint)
        except CheckpointMismatch as e:  # raised before any solve
            fix = "--checkpoint" if checkpoint else "--force (to discard it)"
            sys.stderr.write(error_line(prog, f"{e} ({fix})"))
            return 2
        if record.skipped:
            print(f"  already finished in {str(record.folder)!r}: skipped (--force reruns it)")
            continue
        status = max(status, report(prog, record))
    return status


def report(prog: str, record) -> int:
    """Print a finished run: table, failures, warnings, checks, files."""
    outcome = record.outcome
    if outcome.table:
        print()
        print(outcome.table)
    for line in outcome.failures:
        print(f"FAILED {line}")
    for line in outcome.warnings:
        print(f"{prog}: warning: {line}", file=sys.stderr)
    if outcome.checks:
        from ..experiments import checks_table

        print()
        print(checks_table(outcome.checks))
    n_bad = sum(not c.passed for c in outcome.checks)
    if outcome.figures_skipped:
        print("no figures: matplotlib is not installed (pip install 'saddlejax[plot]')")
    files = ", ".join(str(Path(p).name) for p in record.paths)
    print(f"\ntotal {record.wall_time:.1f} s; wrote {files} in {str(record.folder)!r}")
    if n_bad:
        print(f"{n_bad} of {len(outcome.checks)} checks failed")
    return 1 if outcome.failures or n_bad else 0
