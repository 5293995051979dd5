"""`saddlejax run`: the main job (Jacot et al. Fig. 1 problem at a few α, seeds batched); the
computation is `saddlejax.experiments.run_matrix_completion`."""

import sys
from pathlib import Path

import numpy as np

# Output files of a run, in the --out folder.
OUTPUTS = ("summary.json", "trajectories.npz", "run.png")
MAX_SEEDS = 10_000

# Config fields (and checks of this module) named by the options that set them.
OPTIONS = {
    "alphas": "--alphas",
    "seeds": "--seeds",
    "width": "--width",
    "depth": "--depth",
    "solver": "--solver",
    "rtol": "--rtol",
    "t1_factor": "--t1-factor",
    "escape_radius": "--escape-radius",
}


def add_parser(subparsers) -> None:
    from ..experiments import MatrixCompletionConfig
    from ..solvers import SOLVER_NAMES

    d = MatrixCompletionConfig()
    p = subparsers.add_parser(
        "run",
        help="the default experiment: saddle-to-saddle dynamics of a deep linear network",
        description="Gradient flow of a deep linear network (L = 4, w = 100) on 10×10 rank-3 "
        "matrix completion from θ₀ = α·θ̃, for several α and seeds (Jacot et al. Fig. 1). "
        "Prints per α: escape time t_α(r), α^{L−2}·t_α (→ constant as α → 0), plateaus, final "
        "loss and rank; writes summary.json, trajectories.npz and (with matplotlib, the `plot` "
        "extra) run.png. Every option is checked before the computation starts.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=None,
        help="initialisation scales α, distinct, in (0, 1) (default: "
        + " ".join(map(str, d.alphas))
        + ")",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"number of seeds 0..n-1, 1 ≤ n ≤ {MAX_SEEDS:,} (default {len(d.seeds)})",
    )
    p.add_argument("--width", type=int, default=d.width, help="hidden width w ≥ 1")
    p.add_argument("--depth", type=int, default=d.depth, help="number of layers L, 2 ≤ L ≤ 100")
    p.add_argument("--solver", default=d.solver, choices=SOLVER_NAMES, help="ODE solver")
    p.add_argument("--rtol", type=float, default=d.rtol, help="relative tolerance, in [1e-14, 1)")
    p.add_argument(
        "--t1-factor", type=float, default=d.t1_factor, help="t1 = factor/α^(L-2), factor > 0"
    )
    p.add_argument(
        "--escape-radius",
        type=float,
        default=d.escape_radius,
        help="r of t_α(r): above α‖θ̃‖ ≈ 14.8α for every α, below the final norm ≈ 6.2 "
        "(for the default sizes)",
    )
    p.add_argument("--out", default="results/run", help="output folder (made if needed)")
    p.add_argument(
        "--checkpoint", default=None, help="folder to resume an interrupted run from"
    )
    p.add_argument(
        "--quick", action="store_true", help="α = 0.2, 0.1 and two seeds: a smoke test"
    )
    p.set_defaults(func=main, check=check, options=OPTIONS, parser=p)


# The command-line options that are fields of `MatrixCompletionConfig` as they are.
SETTINGS = ("width", "depth", "solver", "rtol", "t1_factor", "escape_radius")


def check(args):
    """The `MatrixCompletionConfig` of `args`, every option checked (the output folders too)."""
    from ..experiments import MatrixCompletionConfig
    from ..experiments._checks import check_int
    from ._main import check_output

    if args.quick and (args.alphas is not None or args.seeds is not None):
        raise ValueError(
            "--quick sets α = 0.2, 0.1 and two seeds; drop --alphas and --seeds, or --quick"
        )
    d = MatrixCompletionConfig()
    if args.quick:
        alphas, n_seeds = (0.2, 0.1), 2
    else:
        alphas = d.alphas if args.alphas is None else tuple(args.alphas)
        n_seeds = len(d.seeds) if args.seeds is None else args.seeds
    check_int("seeds", n_seeds, 1, MAX_SEEDS, why="the number of seeds")
    config = MatrixCompletionConfig(
        alphas=alphas, seeds=tuple(range(n_seeds)), **{k: getattr(args, k) for k in SETTINGS}
    )
    out = check_output(args.out, "--out", folder=True)
    for name in OUTPUTS:
        if (out / name).is_dir():
            raise ValueError(
                f"--out {args.out!r} holds a folder {name!r} where the run writes a file; "
                "give another --out"
            )
    check_output(args.checkpoint, "--checkpoint", folder=True)
    return config


def _save(summary: dict, out) -> list:
    """summary.json and trajectories.npz, and run.png when matplotlib is installed (a missing
    figure does not discard minutes of computation)."""
    from ..experiments import has_matplotlib, plot_matrix_completion, save_matrix_completion

    paths = save_matrix_completion(summary, out)
    if has_matplotlib():
        paths.append(plot_matrix_completion(summary, out / "run.png"))
    else:
        print("no run.png: matplotlib is not installed (pip install 'saddlejax[plot]')")
    return paths


def _warn_unescaped(summary: dict, config) -> None:
    """A warning on stderr for each α where a seed that did not fail never reached ‖θ‖ = r
    (t_α = inf: the radius is out of reach, or t1 too short)."""
    event = np.asarray(summary["trajectories"]["event_time"])
    failed = {(float(alpha), int(seed)) for alpha, seed, _ in summary["failures"]}
    r = config.escape_radius
    for i, alpha in enumerate(np.asarray(summary["trajectories"]["alphas"], float)):
        missed = [
            seed
            for j, seed in enumerate(config.seeds)
            if not np.isfinite(event[i, j]) and (alpha, seed) not in failed
        ]
        if missed:
            print(
                f"saddlejax run: warning: t_α(r = {r:g}) = inf at α = {alpha:g} for "
                f"{len(missed)} of {len(config.seeds)} seeds: the flow did not reach ‖θ‖ = {r:g} "
                f"by t1 = {config.t1(alpha):.4g}; raise --t1-factor, or lower --escape-radius "
                f"(the flow ends near ‖θ‖ ≈ {config.final_norm:.2g})",
                file=sys.stderr,
            )


def main(args, config) -> int:
    from ..experiments import matrix_completion_table, run_matrix_completion
    from ..flow import CheckpointMismatch
    from ._main import error_line

    print(
        f"saddlejax run: deep linear net L = {config.depth}, w = {config.width}, "
        f"{config.n}×{config.n} rank-{config.rank} completion ({config.observed:.0%} observed); "
        f"α ∈ {list(config.alphas)}, {len(config.seeds)} seeds, solver {config.solver}",
        flush=True,
    )
    try:
        summary = run_matrix_completion(config, progress=True, checkpoint=args.checkpoint)
    except CheckpointMismatch as e:  # raised before any solve
        sys.stderr.write(error_line("saddlejax run", f"--checkpoint: {e}"))
        return 2
    print()
    print(matrix_completion_table(summary))
    for alpha, seed, message in summary["failures"]:
        print(f"FAILED α = {alpha:g}, seed {seed}: {message}")
    _warn_unescaped(summary, config)
    paths = _save(summary, Path(args.out).expanduser())
    print(f"\ntotal {summary['wall_time']:.1f} s; wrote " + ", ".join(str(p) for p in paths))
    return 1 if summary["failures"] else 0
