"""`saddlejax bench`: a quick benchmark of the engine on this machine (about a minute or two on a
2-core CPU); the computation is `saddlejax.experiments.run_bench`, the full suite is in
`benchmarks/` of the repository."""

import json

# Config fields named by the options that set them.
OPTIONS = {"alphas": "--alphas"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="quick benchmark of the gradient-flow engine on this machine",
        description="Times gradient flow on the default problem (L = 4, w = 100, 10×10 rank-3 "
        "completion) at α = 0.1 and 0.01: solver steps, gradient and Hessian-vector-product "
        "evaluations, wall and compile time, solver overhead (wall ÷ gradient evaluations × one "
        "gradient), against gradient descent at 1.9/λ_max, and 16 seeds by `sweep` and by "
        "vmap. Prints a table naming the machine; the full suite is in benchmarks/.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--json",
        default=None,
        help="also write the results as JSON to this file (checked writable before the run)",
    )
    p.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=[0.1, 0.01],
        help="initialisation scales, distinct, in (0, 1)",
    )
    p.set_defaults(func=main, check=check, options=OPTIONS, parser=p)


def check(args):
    """The `BenchConfig` of `args`; the --json path is checked too."""
    from ..experiments import BenchConfig
    from ._main import check_output

    config = BenchConfig(tuple(args.alphas))
    args.json = check_output(args.json, "--json", folder=False)
    return config


def main(args, config) -> int:
    from ..experiments import bench_table, run_bench

    result = run_bench(config.alphas, progress=True)
    print()
    print(bench_table(result))
    print(f"total {result['wall_time_s']:.0f} s; machine: {result['machine']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0
