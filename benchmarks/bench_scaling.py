"""Width, depth and Chen–Luo–Wang scaling of the engine, Tsit5 and the auto-switching solver.

- width w ∈ {100, 1000} of the default problem (L = 4, α = 0.1, t1 = 500);
- depth L ∈ {2, …, 6} at w = 100, α = 0.1, t1 = 5·α^{−(L−2)} (log-length plateaus at L = 2);
- Chen–Luo–Wang two-layer tanh, m ∈ {5,000, 50,000}, σ = m^{−α_CL} with α_CL = 1 (their
  small-initialisation regime), three-tanh target, 1000 samples, t1 = 20.

Each run: compile timed separately, correctness checked (successful, loss decreased), then timed.

    python benchmarks/bench_scaling.py [--quick]
"""

import jax.random as jr
from _common import (
    default_problem,
    parser,
    print_table,
    solver_named,
    timed_flow,
    write_json,
)

import saddlejax
from saddlejax.experiments import gradient_seconds


def measure(name, objective, params0, t1, solver, max_steps, **extra):
    sol, wall, compile_s = timed_flow(
        objective, params0, t1, solver=solver_named(solver), max_steps=max_steps, n_save=64
    )
    st = {k: float(v) for k, v in sol.stats.items()}
    loss0, loss1 = float(sol.loss[0]), float(sol.loss[-1])
    ok = bool(sol.successful) and loss1 < loss0
    tg = gradient_seconds(objective, params0, n=50)
    evals = st["grad_evals"]
    row = dict(
        problem=name,
        solver=solver,
        ok=ok,
        steps=int(st["num_steps"]),
        grad_evals=int(evals),
        hvp=int(st["hvp_evals"]),
        wall_s=wall,
        compile_s=compile_s,
        grad_us=tg * 1e6,
        overhead=wall / (evals * tg) if evals > 0 else float("nan"),
        loss_ratio=loss1 / loss0,
        **extra,
    )
    print(row, flush=True)
    return row


def run(quick=False, only=None, widths=None, depths=None, ms=None):
    rows = []
    solvers = ["tsit5", "auto"]
    if widths is None:
        widths = [] if only not in (None, "width") else [100] if quick else [100, 1000]
    for w in widths:
        problem, params0 = default_problem(0.1, (10, w, w, w, 10))
        for s in solvers:
            rows.append(measure(f"width {w}", problem, params0, 500.0, s, 100_000, width=w))
    if depths is None:
        depths = [] if only not in (None, "depth") else [2, 3] if quick else [2, 3, 4, 5, 6]
    for depth in depths:
        widths_l = (10,) + (100,) * (depth - 1) + (10,)
        problem, params0 = default_problem(0.1, widths_l)
        t1 = 5.0 * 0.1 ** (-(depth - 2)) if depth > 2 else 100.0
        for s in solvers:
            rows.append(
                measure(f"depth {depth}", problem, params0, t1, s, 200_000, depth=depth, horizon=t1)
            )
    if ms is None:
        ms = [] if only not in (None, "clw") else [5000] if quick else [5000, 50_000]
    for m in ms:
        problem = saddlejax.clw_problem("three_tanh")
        net = saddlejax.nn.TwoLayer(
            1, m, 1, "tanh", key=jr.key(0), std=saddlejax.init.clw_std(m, 1.0)
        )
        t1 = 20.0  # loss falls to ≈ 3 % by t = 20; one gradient costs ≈ 21 ms at m = 5,000
        for s in solvers:
            rows.append(measure(f"CLW tanh m={m}", problem, net, t1, s, 20_000, m=m, horizon=t1))
    return rows


COLUMNS = [
    "problem",
    "solver",
    "ok",
    "steps",
    "grad_evals",
    "hvp",
    "wall_s",
    "compile_s",
    "grad_us",
    "overhead",
    "loss_ratio",
]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--only", choices=["width", "depth", "clw"], default=None)
    p.add_argument("--widths", nargs="*", type=int, default=None, help="e.g. --widths 1000")
    p.add_argument("--depths", nargs="*", type=int, default=None)
    p.add_argument("--ms", nargs="*", type=int, default=None, help="CLW widths m")
    args = p.parse_args(argv)
    rows = run(args.quick, args.only, args.widths, args.depths, args.ms)
    print_table(rows, COLUMNS, "width / depth / Chen–Luo–Wang scaling")
    write_json("scaling", {"rows": rows}, args.out)


if __name__ == "__main__":
    main()
