"""α scaling of the engine on the default problem: steps, wall time, compile time,
gradient / Hessian-vector-product evaluations and the solver-overhead ratio per solver, α and
initialisation seed.

    python benchmarks/bench_alpha.py [--quick] [--solvers tsit5 rodas3] [--alphas 1e-1 1e-2]
                                     [--keys 1 2 3 4] [--t1-factor 4]

Each row also reports `max_sv1`, the largest top singular value of the end-to-end matrix along
the saved path: on the default problem the rank-1 plateau is the critical point with
σ₁ = 22.16 (loss 1.0781) for most seeds and α, but the default seed (key 1) at α = 1e−2 and
1e−3 leaves the first escape on another branch, along which the rank-1 loss decreases towards
1.134 while σ₁ grows without bound (to 2.8·10⁴ at α = 1e−3; λ_max(∇²L) ≈ 2·10⁵), a far stiffer
trajectory (benchmarks/README.md, "Known limits").
"""

import math

import jax.numpy as jnp
from _common import (
    default_problem,
    drop_time,
    parser,
    print_table,
    scalar_stats,
    solver_named,
    timed_flow,
    to_float,
    write_json,
)

from saddlejax.experiments import gradient_seconds, hvp_seconds

T1_FACTOR = 2.0


def t1_of(alpha: float, depth: int = 4) -> float:
    """The default horizons: 500 at α = 0.1, else 2·α^{−(L−2)} (20,000 at α = 1e−2)."""
    return 500.0 if alpha >= 0.1 else T1_FACTOR * alpha ** (-(depth - 2))


def top_singular_values(model):
    """The four largest singular values of the end-to-end matrix (saved along the path)."""
    return jnp.linalg.svd(model.matrix(), compute_uv=False)[:4]


def run(
    solvers,
    alphas,
    *,
    keys=(1,),
    rtol=1e-6,
    max_steps=200_000,
    quiet=False,
    deflate=16,
    recycle=16,
):
    rows = []
    for key, alpha in [(k, a) for k in keys for a in alphas]:
        problem, params0 = default_problem(alpha, key=key)
        tg = gradient_seconds(problem, params0, n=500)
        th = hvp_seconds(problem, params0)
        for solver in solvers:
            sol, wall, compile_s = timed_flow(
                problem,
                params0,
                t1_of(alpha),
                solver=solver_named(solver, deflate=deflate, recycle=recycle),
                rtol=rtol,
                max_steps=max_steps,
                observe=top_singular_values,
            )
            st = scalar_stats(sol)
            grads = st["grad_evals"]
            hvps = st["hvp_evals"]
            equiv = grads + hvps * th / tg if grads > 0 else float("nan")
            row = dict(
                key=key,
                solver=solver,
                deflate=deflate,
                recycle=recycle,
                alpha=alpha,
                t1=t1_of(alpha),
                ok=bool(sol.successful),
                steps=int(st["num_steps"]),
                rejected=int(st["num_rejected_steps"]),
                grad_evals=int(grads),
                hvp_evals=int(hvps),
                hvp_per_step=hvps / max(st["num_steps"], 1),
                wall_s=wall,
                compile_s=compile_s,
                grad_us=tg * 1e6,
                hvp_us=th * 1e6,
                overhead=wall / (equiv * tg) if equiv == equiv else float("nan"),
                t_half=drop_time(sol),
                final_loss=to_float(sol.loss[-1]),
                max_sv1=float(jnp.max(sol.params[:, 0])),
            )
            rows.append(row)
            if not quiet:
                print(row, flush=True)
    return rows


COLUMNS = [
    "key",
    "solver",
    "deflate",
    "recycle",
    "alpha",
    "t1",
    "ok",
    "steps",
    "rejected",
    "grad_evals",
    "hvp_evals",
    "hvp_per_step",
    "wall_s",
    "compile_s",
    "overhead",
    "t_half",
    "final_loss",
    "max_sv1",
]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--solvers", nargs="+", default=None, help="solver names (default: auto)")
    p.add_argument("--alphas", nargs="+", type=float, default=None)
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--t1-factor", type=float, default=2.0, help="t1 = factor·α^-(L-2), α < 0.1")
    p.add_argument("--deflate", type=int, default=16, help="tracked eigenvectors deflated in CG")
    p.add_argument("--recycle", type=int, default=16, help="CG directions recycled across stages")
    p.add_argument("--keys", nargs="+", type=int, default=[1], help="network initialisation seeds")
    args = p.parse_args(argv)
    global T1_FACTOR
    T1_FACTOR = args.t1_factor
    alphas = args.alphas or ([1e-1, 1e-2] if args.quick else [1e-1, 1e-2, 1e-3, 1e-4])
    solvers = args.solvers or ["auto"]
    rows = run(
        solvers,
        alphas,
        keys=args.keys,
        rtol=args.rtol,
        deflate=args.deflate,
        recycle=args.recycle,
    )
    # log(1/α) growth: wall-time ratio against the first α, per solver and seed.
    for s, key in [(s, k) for s in solvers for k in args.keys]:
        rs = [r for r in rows if r["solver"] == s and r["key"] == key]
        if len(rs) > 1:
            base = rs[0]
            for r in rs:
                r["wall_ratio"] = r["wall_s"] / base["wall_s"]
                r["log_ratio"] = math.log(1 / r["alpha"]) / math.log(1 / base["alpha"])
    print_table(rows, COLUMNS + ["wall_ratio", "log_ratio"], "α scaling, default problem")
    write_json("alpha", {"rtol": args.rtol, "t1_factor": T1_FACTOR, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
