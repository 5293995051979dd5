"""What the implicit steps resolve after a drop on a long plateau, and whether an exponential
integrator, exact on a linear flow, would step further there.

    python benchmarks/bench_relaxation.py [--quick] [--instance 8] [--alpha 1e-3] [--lanczos 300]

Instance `--instance` of `bench_instances.py` at α, to t1 = 4·α⁻²: the default solver's run
(rtol 1e−6, `record_steps=True`: its step sizes, and t_d, the last step at which the loss
was at least twice its final value), then a reference flow (rtol 1e−8) saved densely after t_d.
At t_d + Δ (Δ = 10, 10², …) it reports the state's remaining motion ‖θ − θ(t1)‖, L − L(t1) and
‖∇L‖; the default solver's step there (median of its steps in [Δ/1.5, 1.5Δ]); the error of
exponential Euler, θ + h·φ₁(−h∇²L(θ))(−∇L(θ)), over that step, in the solvers' error norm
(rtol 1e−6, atol = rtol·RMS(θ₀)) against the reference; and the longest h (among the
reference's saves, growing by 20 % a try, 0 when the shortest fails) for which it stays
within that tolerance. φ₁ by Lanczos on Hessian-vector products (`--lanczos` of them, fully
reorthogonalised).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from _common import parser, print_table, write_json
from bench_instances import draw_instances, instance
from jax.flatten_util import ravel_pytree

import saddlejax

RTOL = 1e-6


def last_drop(ts, loss) -> float:
    """The end of the last drop: the last step at which the loss was still at least twice its
    final value."""
    return float(ts[np.flatnonzero(loss >= 2 * loss[-1])[-1]])


def lanczos_phi1(hvp, v, h, m):
    """φ₁(−hA)v for symmetric A by m Lanczos steps with full reorthogonalisation (two passes),
    stopped early where the Krylov space is invariant (there the result is exact)."""
    n, beta0 = v.size, float(np.linalg.norm(v))
    Q, a, b = np.zeros((m, n)), np.zeros(m), np.zeros(m)
    q, q_prev, beta = v / beta0, np.zeros(n), 0.0
    for k in range(m):
        Q[k] = q
        Aq = np.asarray(hvp(jnp.asarray(q)))
        w = Aq - beta * q_prev
        a[k] = q @ w
        for _ in range(2):  # twice is enough (Kahan–Parlett) where one pass loses orthogonality
            w = w - Q[: k + 1].T @ (Q[: k + 1] @ w)
        beta = float(np.linalg.norm(w))
        b[k] = beta
        if not beta > 1e-8 * float(np.linalg.norm(Aq)):  # an invariant subspace: exact
            m = k + 1
            break
        q_prev, q = q, w / beta
    T = np.diag(a[:m]) + np.diag(b[: m - 1], 1) + np.diag(b[: m - 1], -1)
    theta, S = np.linalg.eigh(T)
    z = -h * theta
    with np.errstate(over="ignore", invalid="ignore"):
        phi = np.where(np.abs(z) > 1e-8, np.expm1(z) / np.where(z == 0, 1.0, z), 1 + z / 2)
    return beta0 * Q[:m].T @ (S @ (phi * S[0]))


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--instance", type=int, default=8)
    p.add_argument("--alpha", type=float, default=1e-3)
    p.add_argument("--lanczos", type=int, default=300)
    args = p.parse_args(argv)
    if args.quick:  # a plateau 100× shorter, a shorter Krylov space
        args.alpha, args.lanczos = max(args.alpha, 1e-2), min(args.lanczos, 100)
    inst = draw_instances(args.instance + 1)[args.instance]
    problem, init = instance(inst, args.alpha)
    t1 = 4.0 / args.alpha**2
    run = saddlejax.gradient_flow(problem, init, t1, n_save=4000, rtol=RTOL, record_steps=True,
                                  max_steps=200_000)
    step_t, step_loss = (np.asarray(run.steps[k]) for k in ("t", "loss"))
    done = np.isfinite(step_t)
    step_t, step_loss = step_t[done], step_loss[done]
    t_d = last_drop(step_t, step_loss)
    step_h = np.diff(step_t)
    saves = np.unique(np.concatenate([np.geomspace(1.0, t_d, 200),
                                      t_d + np.geomspace(1.0, t1 - t_d, 3000)]))
    ref = saddlejax.gradient_flow(problem, init, t1, saveat=saves, rtol=1e-8, max_steps=200_000)
    ts, loss, grad_norm = (np.asarray(a) for a in (ref.ts, ref.loss, ref.grad_norm))
    theta0, unravel = ravel_pytree(init)
    atol = RTOL * float(jnp.sqrt(jnp.mean(theta0**2)))
    f = lambda v: problem(unravel(v))  # noqa: E731
    grad = jax.jit(jax.grad(f))
    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,))[1])

    def state(i):
        return np.asarray(ravel_pytree(ref.params_at(i))[0])

    def err(e, y):
        return float(np.sqrt(np.mean((e / (atol + RTOL * np.abs(y))) ** 2)))

    end = state(len(ts) - 1)
    rows = []
    deltas = [10.0**k for k in range(1, 8) if 1.5 * 10.0**k < t1 - t_d]
    for delta in deltas:
        i = int(np.searchsorted(ts, t_d + delta))
        y = state(i)
        near = (step_t[:-1] >= t_d + delta / 1.5) & (step_t[:-1] <= t_d + 1.5 * delta)
        h_solver = float(np.median(step_h[near])) if np.any(near) else float("nan")
        fy = -np.asarray(grad(jnp.asarray(y)))

        def exp_euler_error(j):
            h = ts[j] - ts[i]
            step = lanczos_phi1(lambda v: hvp(jnp.asarray(y), v), fy, h, args.lanczos)
            return err(y + h * step - state(j), state(j))

        at_solver = exp_euler_error(min(int(np.searchsorted(ts, ts[i] + h_solver)), len(ts) - 1))
        h_exp, j = 0.0, i + 1
        while j < len(ts):  # h growing by ≥ 20 % a try
            if not exp_euler_error(j) <= 1.0:  # NaN too: e^{−hθ} overflows on a θ < 0
                break
            h_exp = ts[j] - ts[i]
            j = max(j + 1, int(np.searchsorted(ts, ts[i] + 1.2 * h_exp)))
        rows.append(dict(delta=ts[i] - t_d, motion=float(np.linalg.norm(y - end)),
                         loss_above_end=float(loss[i] - loss[-1]), grad_norm=float(grad_norm[i]),
                         solver_step=h_solver, exp_euler_error_at_solver_step=at_solver,
                         exp_euler_step=h_exp, shortest_tried=float(ts[i + 1] - ts[i])))
        print(rows[-1], flush=True)
    print(f"instance {args.instance}, α = {args.alpha:g}: last drop at t = {t_d:.6g}; "
          f"default solver {int(run.stats['num_steps'])} steps, reference "
          f"{int(ref.stats['num_steps'])}")
    print_table(rows, list(rows[0]) if rows else [],
                title=f"instance {args.instance}, α = {args.alpha:g}, t − t_d after the last drop")
    write_json("relaxation", dict(
        instance=inst, alpha=args.alpha, t1=t1, last_drop=t_d, rtol=RTOL, lanczos=args.lanczos,
        steps=int(run.stats["num_steps"]), reference_steps=int(ref.stats["num_steps"]),
        rows=rows), args.out)


if __name__ == "__main__":
    sys.exit(main())
