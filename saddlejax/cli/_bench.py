"""`saddlejax bench`: a quick benchmark of the engine on this machine (about a minute or two on a
2-core CPU); the computation is `saddlejax.experiments.run_bench`, the full suite is in
`benchmarks/` of the repository."""

import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="quick benchmark of the gradient-flow engine on this machine",
        description="Times gradient flow on the default problem (L = 4, w = 100, 10×10 rank-3 "
        "completion) at α = 0.1 and 0.01: solver steps, gradient and Hessian-vector-product "
        "evaluations, wall and compile time, solver overhead (wall ÷ gradient evaluations × one "
        "gradient), against gradient descent at 1.9/λ_max, and 16 seeds by `sweep` and by "
        "vmap. Prints a table naming the machine; the full suite is in benchmarks/.",
    )
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    p.add_argument(
        "--alphas", type=float, nargs="+", default=[0.1, 0.01], help="initialisation scales"
    )
    p.set_defaults(func=main)


def main(args) -> int:
    from ..experiments import bench_table, run_bench

    result = run_bench(tuple(args.alphas), progress=True)
    print()
    print(bench_table(result))
    print(f"total {result['wall_time_s']:.0f} s; machine: {result['machine']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0
