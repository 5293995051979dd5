"""Accuracy-matched comparison of saddlejax against the alternatives on one trajectory:
gradient descent in `lax.scan` at the papers' step η = 1e−3 and at its largest stable
step ≈ 2/λ_max, scipy `solve_ivp` (RK45, LSODA, BDF) on the same jitted gradient, and
torchdiffeq (dopri5, on the same loss written in torch) when torch is installed. Each is scored
against a tight reference (Tsit5, rtol 1e−10): the largest loss-curve error on a uniform grid,
the error of the time at which the loss halves, and the relative error of the final parameters.

    python benchmarks/bench_compare.py [--quick] [--width 100] [--alpha 0.1] [--torch-device cuda]
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    default_problem,
    parser,
    print_table,
    solver_named,
    timed_flow,
    timeit,
    to_float,
    write_json,
)
from jax.flatten_util import ravel_pytree

import saddlejax
from saddlejax.experiments import gradient_seconds, lambda_max

N_GRID = 256


def scores(ts, loss, final_flat, ref_loss, ref_final, ref_half, loss0):
    loss = np.asarray(loss)
    err_curve = float(np.max(np.abs(loss - ref_loss)) / loss0)
    hit = np.nonzero(loss <= 0.5 * loss0)[0]
    t_half = float(ts[hit[0]]) if hit.size else float("inf")
    err_half = abs(t_half - ref_half) / ref_half
    err_final = float(np.linalg.norm(final_flat - ref_final) / np.linalg.norm(ref_final))
    return dict(err_loss=err_curve, err_t_half=err_half, err_final=err_final)


def torchdiffeq_row(torch, torchdiffeq, problem, params0, x0, gradf, ts, device, add):
    """torchdiffeq's dopri5 on the same loss written in torch (W_L ⋯ W_1 and the masked mean
    square of `MatrixCompletion`), float64, rtol 1e−6 and the atol of scipy's runs; the gradient
    is checked against JAX's (`gradf`, on the flat vector `x0`) before timing."""
    weights = [torch.tensor(np.asarray(w), dtype=torch.float64) for w in params0.weights]
    shapes = [w.shape for w in weights]
    sizes = [w.numel() for w in weights]
    target = torch.tensor(np.asarray(problem.target), dtype=torch.float64, device=device)
    mask = torch.tensor(np.asarray(problem.mask), dtype=torch.float64, device=device)
    n_obs = mask.sum()

    def loss_of(y):
        ws = [v.view(s) for v, s in zip(torch.split(y, sizes), shapes)]
        a = ws[0]
        for w in ws[1:]:
            a = w @ a
        return torch.sum(mask * (a - target) ** 2) / n_obs

    count = [0]

    def vector_field(t, y):
        count[0] += 1
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_of(y), y)
        return -g

    # The flat order of `ravel_pytree` is W_1, ..., W_L row-major, as `torch.cat` below.
    y0 = torch.cat([w.reshape(-1) for w in weights]).to(device)
    assert np.allclose(y0.cpu().numpy(), np.asarray(x0), rtol=0, atol=0)
    g_jax = np.asarray(gradf(x0))
    g_torch = -vector_field(0.0, y0).cpu().numpy()
    err = np.linalg.norm(g_torch - g_jax) / np.linalg.norm(g_jax)
    assert err < 1e-10, f"torch gradient differs from JAX's by {err:.2e}"
    t = torch.tensor(np.asarray(ts), dtype=torch.float64, device=device)
    atol = 1e-6 * float(jnp.sqrt(jnp.mean(x0**2)))

    def solve():
        count[0] = 0
        out = torchdiffeq.odeint(vector_field, y0, t, rtol=1e-6, atol=atol, method="dopri5")
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    start = time.perf_counter()
    solve()  # warm-up (cuBLAS handles, allocator)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    ys = solve()
    wall = time.perf_counter() - start
    loss = [float(loss_of(y)) for y in ys]
    add(
        f"torchdiffeq dopri5 ({device})",
        wall,
        count[0],
        warm,
        loss,
        ys[-1].cpu().numpy(),
        torch=torch.__version__,
    )


def flat(model):
    """The trainable parameters of `model` as one numpy vector (the order of `ravel_pytree`)."""
    return np.asarray(ravel_pytree(eqx.partition(model, eqx.is_inexact_array)[0])[0])


def reference(problem, params0, ts, t1):
    """The tight reference (Tsit5 at rtol 1e−10 on the grid `ts`) and `add(method, wall,
    evals, compile_s, loss, final_flat, **extra)`, which scores a method against it."""
    ref, ref_wall, _ = timed_flow(
        problem,
        params0,
        t1,
        solver=solver_named("tsit5"),
        rtol=1e-10,
        saveat=ts,
        max_steps=2_000_000,
    )
    assert bool(ref.successful), "reference failed"
    ref_loss = np.asarray(ref.loss)
    loss0 = float(ref_loss[0])
    ref_final = flat(ref.final_params)
    ref_half = float(ts[np.nonzero(ref_loss <= 0.5 * loss0)[0][0]])
    tg = gradient_seconds(problem, params0, n=500)
    rows = []

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

    return ref, dict(wall=ref_wall, grad_s=tg, rows=rows), add


def saddlejax_rows(problem, params0, ts, t1, add):
    """saddlejax's solvers at rtol 1e−6 (the default). Best of 3: the first run after compiling
    can be up to 2× slower on XLA:CPU (auto-switching, width 100: 2.26 s against 1.07–1.16 s)."""
    for name in ["tsit5", "auto", "rodas4"]:
        sol, wall, compile_s = timed_flow(
            problem, params0, t1, solver=solver_named(name), saveat=ts, repeat=3
        )
        assert bool(sol.successful), name
        st = {k: to_float(v) for k, v in sol.stats.items()}
        add(
            f"saddlejax {name}",
            wall,
            st["grad_evals"],
            compile_s,
            sol.loss,
            flat(sol.final_params),
            steps=int(st["num_steps"]),
            hvp=int(st["hvp_evals"]),
        )


def descent_rows(problem, params0, t1, ref, quick, add) -> float:
    """Gradient descent at η = 1e−3 (the papers') and at 1.9/λ_max (largest stable), λ_max the
    largest along the reference path; returns λ_max."""
    lam = max(lambda_max(problem, ref.params_at(i)) for i in range(0, N_GRID + 1, 32))
    lam = max(lam, lambda_max(problem, ref.final_params))
    for name, eta in [("GD η=1e-3", 1e-3), ("GD η=1.9/λmax", 1.9 / lam)]:
        k = max(1, int(np.ceil(t1 / (N_GRID * eta))))  # steps per save, η = t1 / (N_GRID k)
        eta = t1 / (N_GRID * k)
        if quick and N_GRID * k > 600_000:
            continue

        def gd(steps):
            return saddlejax.gradient_descent(
                problem, params0, learning_rate=eta, steps=steps, save_every=k, throw=False
            )

        start = time.perf_counter()
        jax.block_until_ready(gd(k))
        compile_s = time.perf_counter() - start
        sol, wall = timeit(gd, N_GRID * k, repeat=3 if N_GRID * k <= 20_000 else 1)
        final = flat(sol.final_params)
        add(name, wall, N_GRID * k, compile_s, sol.loss, final, steps=N_GRID * k, eta=eta)
    return lam


def scipy_rows(x0, gradf, loss_of, ts, t1, quick, add, rows):
    """scipy `solve_ivp` on the same jitted gradient (flat numpy vectors)."""
    import scipy.integrate

    n_dense = x0.size
    for method in ["RK45", "LSODA", "BDF"]:
        if method != "RK45" and n_dense > 5000:
            note = (
                f"skipped: a dense {n_dense}×{n_dense} Jacobian by finite differences "
                f"({n_dense} gradients each)"
            )
            rows.append(dict(method=f"scipy {method}", note=note))
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
        loss = [loss_of(y) for y in out.y.T]
        add(f"scipy {method}", wall, count[0], 0.0, loss, out.y[:, -1])


def run(width=100, alpha=0.1, t1=512.0, quick=False, torch_device="cpu"):
    widths = (10, width, width, width, 10)
    problem, params0 = default_problem(alpha, widths)
    state0, static = eqx.partition(params0, eqx.is_inexact_array)
    x0, unravel = ravel_pytree(state0)
    ts = np.linspace(0.0, t1, N_GRID + 1)
    ref, info, add = reference(problem, params0, ts, t1)
    rows = info["rows"]
    saddlejax_rows(problem, params0, ts, t1, add)
    lam = descent_rows(problem, params0, t1, ref, quick, add)
    gradf = jax.jit(jax.grad(lambda x: problem(eqx.combine(unravel(x), static))))
    jax.block_until_ready(gradf(x0))

    def loss_of(y):
        return float(problem(eqx.combine(unravel(jnp.asarray(y)), static)))

    scipy_rows(x0, gradf, loss_of, ts, t1, quick, add, rows)
    try:
        import torch
        import torchdiffeq
    except ImportError:
        rows.append(dict(method="torchdiffeq dopri5", note="skipped: torch not installed"))
    else:
        torchdiffeq_row(torch, torchdiffeq, problem, params0, x0, gradf, ts, torch_device, add)
    auto_wall = next(x["wall_s"] for x in rows if x.get("method") == "saddlejax auto")
    for r in rows:
        if "wall_s" in r:
            r["wall_vs_auto"] = r["wall_s"] / auto_wall
    return dict(
        width=width,
        alpha=alpha,
        t1=t1,
        lambda_max=lam,
        grad_us=info["grad_s"] * 1e6,
        reference_wall_s=info["wall"],
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
    p.add_argument("--torch-device", default="cpu", help="torchdiffeq's device: cpu or cuda")
    args = p.parse_args(argv)
    widths = [args.width] if args.width else ([10] if args.quick else [10, 100])
    out = []
    for w in widths:
        res = run(w, args.alpha, args.t1, quick=args.quick, torch_device=args.torch_device)
        print_table(
            res["rows"],
            COLUMNS,
            f"width {w}, α = {args.alpha}, t1 = {args.t1}, λ_max ≈ {res['lambda_max']:.3g}",
        )
        out.append(res)
    write_json("compare", {"results": out}, args.out)


if __name__ == "__main__":
    main()
