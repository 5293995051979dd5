"""Accuracy-matched comparison of saddlejax against the alternatives on one trajectory
(issue 5): gradient descent in `lax.scan` at the papers' step η = 1e−3 and at its largest stable
step ≈ 2/λ_max, scipy `solve_ivp` (RK45, LSODA, BDF) on the same jitted gradient, and
torchdiffeq (dopri5) when torch is installed. Each is scored against a tight reference (Tsit5,
rtol 1e−10): the largest loss-curve error on a uniform grid, the error of the time at which the
loss halves, and the relative error of the final parameters.

    python benchmarks/bench_compare.py [--quick] [--width 100] [--alpha 0.1]
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    default_problem,
    grad_time,
    parser,
    print_table,
    timed_flow,
    timeit,
    to_float,
    write_json,
)
from jax.flatten_util import ravel_pytree

import saddlejax

N_GRID = 256


def lambda_max(objective, params, iters=100):
    """λ_max(∇²L) at `params` by power iteration on Hessian-vector products."""
    state, static = eqx.partition(params, eqx.is_inexact_array)
    x, unravel = ravel_pytree(state)
    grad = jax.grad(lambda x: objective(eqx.combine(unravel(x), static)))
    hvp = jax.jit(lambda v: jax.jvp(grad, (x,), (v,))[1])
    v = jnp.cos(jnp.arange(x.size) * 2.399963229728653)
    v = v / jnp.linalg.norm(v)
    lam = 0.0
    for _ in range(iters):
        w = hvp(v)
        lam = float(v @ w)
        v = w / jnp.linalg.norm(w)
    return lam


def scores(ts, loss, final_flat, ref_loss, ref_final, ref_half, loss0):
    loss = np.asarray(loss)
    err_curve = float(np.max(np.abs(loss - ref_loss)) / loss0)
    hit = np.nonzero(loss <= 0.5 * loss0)[0]
    t_half = float(ts[hit[0]]) if hit.size else float("inf")
    err_half = abs(t_half - ref_half) / ref_half
    err_final = float(np.linalg.norm(final_flat - ref_final) / np.linalg.norm(ref_final))
    return dict(err_loss=err_curve, err_t_half=err_half, err_final=err_final)


def run(width=100, alpha=0.1, t1=512.0, quick=False):
    widths = (10, width, width, width, 10)
    problem, params0 = default_problem(alpha, widths)
    state0, static = eqx.partition(params0, eqx.is_inexact_array)
    x0, unravel = ravel_pytree(state0)
    ts = np.linspace(0.0, t1, N_GRID + 1)
    tg = grad_time(problem, params0)
    rows = []

    # Reference: Tsit5 at rtol 1e-10 on the same grid.
    ref, ref_wall, _ = timed_flow(
        problem, params0, t1, solver="tsit5", rtol=1e-10, saveat=ts, max_steps=2_000_000
    )
    assert bool(ref.successful), "reference failed"
    ref_loss = np.asarray(ref.loss)
    loss0 = float(ref_loss[0])
    ref_final = np.asarray(
        ravel_pytree(eqx.partition(ref.final_params, eqx.is_inexact_array)[0])[0]
    )
    hit = np.nonzero(ref_loss <= 0.5 * loss0)[0]
    ref_half = float(ts[hit[0]])

    def add(method, wall, evals, compile_s, loss, final_flat, **extra):
        row = dict(
            method=method,
            grad_evals=int(evals),
            wall_s=wall,
            compile_s=compile_s,
            **scores(ts, loss, final_flat, ref_loss, ref_final, ref_half, loss0),
            overhead=wall / (evals * tg) if evals > 0 else float("nan"),
            **extra,
        )
        rows.append(row)
        print(row, flush=True)

    def flat(model):
        return np.asarray(ravel_pytree(eqx.partition(model, eqx.is_inexact_array)[0])[0])

    # saddlejax solvers at rtol 1e-6 (the default).
    for solver in ["tsit5", "auto", "rodas4"]:
        sol, wall, compile_s = timed_flow(problem, params0, t1, solver=solver, saveat=ts)
        assert bool(sol.successful), solver
        st = {k: to_float(v) for k, v in sol.stats.items()}
        add(
            f"saddlejax {solver}",
            wall,
            st["grad_evals"],
            compile_s,
            sol.loss,
            flat(sol.final_params),
            steps=int(st["num_steps"]),
            hvp=int(st.get("hvp_evals", 0)),
        )

    # Gradient descent at η = 1e-3 (the papers') and at 1.9/λ_max (largest stable).
    lam = max(lambda_max(problem, ref.params_at(i)) for i in range(0, N_GRID + 1, 32))
    lam = max(lam, lambda_max(problem, ref.final_params))
    etas = [("GD η=1e-3", 1e-3), ("GD η=1.9/λmax", 1.9 / lam)]
    for name, eta in etas:
        k = max(1, int(np.ceil(t1 / (N_GRID * eta))))  # steps per save, η = t1 / (N_GRID k)
        eta = t1 / (N_GRID * k)
        if quick and N_GRID * k > 600_000:
            continue

        def gd():
            return saddlejax.gradient_descent(
                problem, params0, learning_rate=eta, steps=N_GRID * k, save_every=k, throw=False
            )

        start = time.perf_counter()
        jax.block_until_ready(
            saddlejax.gradient_descent(
                problem, params0, learning_rate=eta, steps=k, save_every=k, throw=False
            )
        )
        compile_s = time.perf_counter() - start
        sol, wall = timeit(gd)
        add(
            name,
            wall,
            N_GRID * k,
            compile_s,
            sol.loss,
            flat(sol.final_params),
            steps=N_GRID * k,
            eta=eta,
        )

    # scipy solve_ivp on the same jitted gradient (flat numpy vectors).
    import scipy.integrate

    gradf = jax.jit(jax.grad(lambda x: problem(eqx.combine(unravel(x), static))))
    jax.block_until_ready(gradf(x0))
    n_dense = x0.size
    for method in ["RK45", "LSODA", "BDF"]:
        if method != "RK45" and n_dense > 5000:
            rows.append(
                dict(
                    method=f"scipy {method}",
                    note=(
                        f"skipped: a dense {n_dense}×{n_dense} Jacobian by finite differences "
                        f"({n_dense} gradients each)"
                    ),
                )
            )
            print(rows[-1], flush=True)
            continue
        if method == "RK45" and quick and n_dense > 5000:
            continue
        count = [0]

        def fun(t, y):
            count[0] += 1
            return -np.asarray(gradf(jnp.asarray(y)))

        start = time.perf_counter()
        out = scipy.integrate.solve_ivp(
            fun,
            (0.0, t1),
            np.asarray(x0),
            method=method,
            t_eval=ts,
            rtol=1e-6,
            atol=1e-6 * float(jnp.sqrt(jnp.mean(x0**2))),
        )
        wall = time.perf_counter() - start
        if not out.success:
            rows.append(dict(method=f"scipy {method}", note=f"failed: {out.message}"))
            continue
        loss = [float(problem(eqx.combine(unravel(jnp.asarray(y)), static))) for y in out.y.T]
        add(f"scipy {method}", wall, count[0], 0.0, loss, out.y[:, -1])

    try:
        import torch  # noqa: F401
        import torchdiffeq  # noqa: F401

        rows.append(dict(method="torchdiffeq dopri5", note="installed but not wired up"))
    except ImportError:
        rows.append(dict(method="torchdiffeq dopri5", note="skipped: torch not installed"))
    for r in rows:
        if "wall_s" in r:
            r["wall_vs_auto"] = r["wall_s"] / next(
                x["wall_s"] for x in rows if x.get("method") == "saddlejax auto"
            )
    return dict(
        width=width,
        alpha=alpha,
        t1=t1,
        lambda_max=lam,
        grad_us=tg * 1e6,
        reference_wall_s=ref_wall,
        rows=rows,
    )


COLUMNS = [
    "method",
    "steps",
    "grad_evals",
    "hvp",
    "wall_s",
    "wall_vs_auto",
    "compile_s",
    "overhead",
    "err_loss",
    "err_t_half",
    "err_final",
    "note",
]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--t1", type=float, default=512.0)
    args = p.parse_args(argv)
    widths = [args.width] if args.width else ([10] if args.quick else [10, 100])
    out = []
    for w in widths:
        res = run(w, args.alpha, args.t1, quick=args.quick)
        print_table(
            res["rows"],
            COLUMNS,
            f"width {w}, α = {args.alpha}, t1 = {args.t1}, λ_max ≈ {res['lambda_max']:.3g}",
        )
        out.append(res)
    write_json("compare", {"results": out}, args.out)


if __name__ == "__main__":
    main()
