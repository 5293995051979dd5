"""`saddlejax run`: the main job (Jacot et al. Fig. 1 problem at a few α, seeds batched); the
computation is `saddlejax.experiments.run_matrix_completion`."""

from pathlib import Path


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
        "extra) run.png.",
    )
    p.add_argument("--alphas", type=float, nargs="+", default=list(d.alphas))
    p.add_argument("--seeds", type=int, default=len(d.seeds), help="number of seeds (0..n-1)")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--solver", default=d.solver, choices=SOLVER_NAMES, help="ODE solver")
    p.add_argument("--rtol", type=float, default=d.rtol)
    p.add_argument("--t1-factor", type=float, default=d.t1_factor, help="t1 = factor/α^(L-2)")
    p.add_argument("--escape-radius", type=float, default=d.escape_radius)
    p.add_argument("--out", type=Path, default=Path("results/run"), help="output folder")
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="folder to resume an interrupted run from"
    )
    p.add_argument("--quick", action="store_true", help="two α, two seeds: a smoke test")
    p.set_defaults(func=main)


# The command-line options that are fields of `MatrixCompletionConfig` as they are.
SETTINGS = ("width", "depth", "solver", "rtol", "t1_factor", "escape_radius")


def _config(args):
    from ..experiments import MatrixCompletionConfig

    return MatrixCompletionConfig(
        alphas=(0.2, 0.1) if args.quick else tuple(args.alphas),
        seeds=tuple(range(2 if args.quick else args.seeds)),
        **{k: getattr(args, k) for k in SETTINGS},
    )


def _save(summary: dict, out: Path) -> list[Path]:
    """summary.json and trajectories.npz, and run.png when matplotlib is installed (a missing
    figure does not discard minutes of computation)."""
    from ..experiments import has_matplotlib, plot_matrix_completion, save_matrix_completion

    paths = save_matrix_completion(summary, out)
    if has_matplotlib():
        paths.append(plot_matrix_completion(summary, out / "run.png"))
    else:
        print("no run.png: matplotlib is not installed (pip install 'saddlejax[plot]')")
    return paths


def main(args) -> int:
    from ..experiments import matrix_completion_table, run_matrix_completion

    config = _config(args)
    print(
        f"saddlejax run: deep linear net L = {config.depth}, w = {config.width}, "
        f"{config.n}×{config.n} rank-{config.rank} completion ({config.observed:.0%} observed); "
        f"α ∈ {list(config.alphas)}, {len(config.seeds)} seeds, solver {config.solver}",
        flush=True,
    )
    summary = run_matrix_completion(config, progress=True, checkpoint=args.checkpoint)
    print()
    print(matrix_completion_table(summary))
    for alpha, seed, message in summary["failures"]:
        print(f"FAILED α = {alpha:g}, seed {seed}: {message}")
    paths = _save(summary, args.out)
    print(f"\ntotal {summary['wall_time']:.1f} s; wrote " + ", ".join(str(p) for p in paths))
    return 1 if summary["failures"] else 0
