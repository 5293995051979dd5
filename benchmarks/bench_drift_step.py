"""What sets the step size on a drift branch: the Rosenbrock step's frozen Hessian, not its
truncation error.

    python benchmarks/bench_drift_step.py [--quick] [--t0 2.2e6] [--span 1.2e6]

The default instance at α = 1e−3 leaves its first escape for the drift branch
(benchmarks/README.md, "Every trajectory"); after its second drop it crawls for ≈ 1.4·10⁶ time
units at L ≈ 0.1337 while ‖θ‖ shrinks from 26 to 6, and `AutoStiff` spends ≈ 2,300 implicit
steps of h ≈ 100–2,000 there. The solution is smooth on that stretch (its small entries drift
linearly over 10⁵ time units).

1. **One step** from θ(t0) (default 2.2·10⁶, on the stretch): a RODAS4-CG step of size h for L
   and for its linearisation at θ(t0), f₀ + J(θ − θ(t0)) with J = −∇²L(θ(t0)), which a
   Rosenbrock step integrates with the Jacobian it uses. Reported: the embedded error
   estimate and the true error (against 32 steps of h/32), RMS in the controller's weights
   atol + rtol·|θ| (1 = what the controller accepts).
   Also for the step of L: how far the 12-dimensional stiff subspace of ∇²L turns over it
   (largest principal angle), and how far ∇L at its end departs from the linear model
   ∇L(θ₀) + ∇²L(θ₀)(θ₁ − θ₀), against ‖∇L‖ itself.
2. **Newton within the step**: implicit Euler θ₁ = θ₀ − h∇L(θ₁) with one Newton iteration
   (the linearly implicit step) and with 8 (converged: ‖∇L(θ₁)‖ that of the reference), each
   iteration a CG solve on Hessian-vector products at the current iterate, deflated by the
   Ritz pairs of step 1, to a relative residual of 1e−12: error against 64 RODAS4 steps of
   h/64, ‖∇L(θ₁)‖, and CG iterations per Newton iteration.
3. **The stretch** [t0 − 10⁵, t0 − 10⁵ + span]: steps, Hessian-vector products and wall for
   RODAS3, RODAS4, RODAS5P, RODAS4 at rtol 10⁻⁵, and `AutoStiff` with a 16- (default) and a
   32-dimensional deflation basis, all from the same state and `atol`.

If truncation error limited the steps, the step count would fall with a higher order and with
a looser rtol (RODAS4, error order 3: ×0.56 for 10× rtol).
"""

import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from _common import (
    default_problem,
    parser,
    print_table,
    scalar_stats,
    solver_named,
    to_float,
    write_json,
)
from jax.flatten_util import ravel_pytree

import saddlejax
from saddlejax.solvers._krylov import (
    conjugate_gradient,
    stack_combine,
    stack_dot,
    stack_gram,
    track_subspace,
    weighted_rms,
)

ALPHA, KEY = 1e-3, 1
RTOL = 1e-6
SUBSTEPS = 32


def flat_step(problem, params, atol):
    """θ as one vector (the state a solver step works on), ∇L and its Hessian-vector product
    on such vectors, the jitted RODAS4-CG step `step(h, θ, state)` of the flow and `step_of`,
    which makes one for another vector field f(θ)."""
    arrays, static = eqx.partition(params, eqx.is_inexact_array)
    y0, unravel = ravel_pytree(arrays)
    grad = jax.jit(jax.grad(lambda y: problem(eqx.combine(unravel(y), static))))
    hvp = jax.jit(lambda y, v: jax.jvp(grad, (y,), (v,))[1])
    solver = saddlejax.RosenbrockKrylov(tableau=saddlejax.RODAS4, rtol=RTOL, atol=atol)

    def step_of(f):
        term = diffrax.ODETerm(lambda t, y, args: f(y))
        step = jax.jit(lambda h, y, s: solver.solve_step(term, 0.0, h, y, None, s, False))
        return step, solver.init(term, 0.0, 1.0, y0, None)

    return y0, grad, hvp, step_of


def reference(step, y, state, h, n):
    """θ after n steps of h/n from y: the reference a step of h is measured against."""
    for _ in range(n):
        y, _, _, state = step(h / n, y, state)
    return y


def stiff_subspace(hvp_batch, basis, iterations=30):
    """The Ritz pairs of ∇²L above 10³ (the stiff ones), by subspace iteration from `basis`."""
    for _ in range(iterations):
        vectors, theta, basis, _ = track_subspace(hvp_batch, basis)
    return vectors[theta > 1e3]


def one_step_errors(y0, grad, hvp, step_of, atol, steps):
    """Part 1: error estimate and true error of one RODAS4 step for L and its linearisation;
    for L also the turn of the stiff subspace and ∇L's departure from its linear model.
    Returns the rows, and the step of L with its solver state tracked at θ₀."""
    g0 = grad(y0)
    fields = {"L": lambda y: -grad(y), "linearised": lambda y: -g0 - hvp(y0, y - y0)}
    rows = []
    for name, field in fields.items():
        step, state = step_of(field)
        for _ in range(8):  # converge the tracked deflation basis at θ(t0)
            state = step(100.0, y0, state)[3]
        for h in steps:
            y1, err, _, _ = step(h, y0, state)
            ref = reference(step, y0, state, h, SUBSTEPS)
            scale = atol + RTOL * jnp.maximum(jnp.abs(y0), jnp.abs(y1))
            row = dict(
                problem=name,
                h=h,
                estimate=to_float(weighted_rms(err, scale)),
                true_error=to_float(weighted_rms(y1 - ref, scale)),
            )
            if name == "L":
                at = [jax.vmap(lambda v, y=y: hvp(y, v)) for y in (y0, y1)]
                v0, v1 = (stiff_subspace(b, state["basis"]) for b in at)
                cosines = jnp.linalg.svd(stack_gram(v0, v1), compute_uv=False)
                linear = g0 + hvp(y0, y1 - y0)
                row.update(
                    stiff_turn_rad=to_float(jnp.max(jnp.arccos(jnp.clip(cosines, -1.0, 1.0)))),
                    grad_minus_linear=to_float(jnp.linalg.norm(grad(y1) - linear)),
                    grad_norm_end=to_float(jnp.linalg.norm(grad(y1))),
                )
            rows.append(row)
        if name == "L":
            tracked = step, state
    return rows, tracked


def newton_euler(y0, grad, hvp, tracked, atol, steps, newton=8, cg_tol=1e-12, max_cg=400):
    """Part 2: implicit Euler with one Newton iteration and with `newton` of them."""
    step, state = tracked
    basis, ritz = state["basis"], state["ritz"]
    scale = atol + RTOL * jnp.abs(y0)

    def cg(y, h, b):  # (I + h∇²L(y)) x = b to ‖r‖ ≤ cg_tol·‖b‖, deflated by the Ritz pairs at θ₀
        shrink = jnp.where(ritz > 0, h * ritz / (1 + h * ritz), 0.0)
        x, n, _ = conjugate_gradient(
            lambda v: v + h * hvp(y, v),
            b,
            jnp.zeros_like(b),
            jnp.full_like(b, jnp.linalg.norm(b) / jnp.sqrt(b.size)),
            cg_tol,
            max_cg,
            precondition=lambda r: r - stack_combine(shrink * stack_dot(basis, r), basis),
        )
        return x, int(n)

    rows = []
    for h in steps:
        ref = reference(step, y0, state, h, 2 * SUBSTEPS)
        for iterations in (1, newton):
            y, counts = y0, []
            for _ in range(iterations):
                dy, n = cg(y, h, y0 - y - h * grad(y))
                y, counts = y + dy, counts + [n]
            rows.append(
                dict(
                    newton=iterations,
                    h=h,
                    error=to_float(weighted_rms(y - ref, scale)),
                    grad_norm_end=to_float(jnp.linalg.norm(grad(y))),
                    cg_per_iteration=counts,
                )
            )
            print(rows[-1], flush=True)
    return rows


def stretch(problem, params, atol, span, variants):
    """Part 3: the same stretch of the flow with each solver variant."""
    rows = []
    for name, options in variants.items():
        start = time.perf_counter()
        sol = saddlejax.gradient_flow(problem, params, span, atol=atol, max_steps=50_000, **options)
        jax.block_until_ready(sol.loss)
        st = scalar_stats(sol)
        rows.append(
            dict(
                solver=name,
                wall_s=time.perf_counter() - start,
                steps=int(st["num_accepted_steps"]),
                rejected=int(st["num_rejected_steps"]),
                hvp_evals=int(st["hvp_evals"]),
                final_loss=to_float(sol.loss[-1]),
            )
        )
        print(rows[-1], flush=True)
    return rows


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--t0", type=float, default=2.2e6, help="the state of part 1")
    p.add_argument("--span", type=float, default=1.2e6, help="the stretch of part 2")
    args = p.parse_args()
    problem, params0 = default_problem(ALPHA, key=KEY)
    begin = args.t0 - 1e5
    span = 1e5 if args.quick else args.span
    first = saddlejax.gradient_flow(problem, params0, begin, max_steps=50_000)
    atol = to_float(first.stats["atol"])  # the default atol of the whole solve, kept
    on_stretch = saddlejax.gradient_flow(problem, first.final_params, 1e5, atol=atol)
    steps = (1000.0, 4000.0) if args.quick else (1000.0, 2000.0, 4000.0, 8000.0)
    flat = flat_step(problem, on_stretch.final_params, atol)
    single, tracked = one_step_errors(*flat, atol, steps)
    print_table(
        single,
        ["problem", "h", "estimate", "true_error", "stiff_turn_rad", "grad_minus_linear",
         "grad_norm_end"],
        "One RODAS4 step",
    )
    newton = newton_euler(*flat[:3], tracked, atol, steps)
    print_table(newton, ["newton", "h", "error", "grad_norm_end", "cg_per_iteration"],
                "Implicit Euler: Newton iterations")
    rodas4 = dict(solver=solver_named("rodas4"))
    variants = {"rodas4": rodas4} if args.quick else {
        "rodas3": dict(solver=solver_named("rodas3")),
        "rodas4": rodas4,
        "rodas5p": dict(solver=solver_named("rodas5p")),
        "rodas4, rtol 1e-5": dict(rodas4, rtol=1e-5),
        "auto": {},
        "auto:deflate=32": dict(solver=solver_named("auto", deflate=32)),
    }
    runs = stretch(problem, first.final_params, atol, span, variants)
    print_table(runs, ["solver", "steps", "rejected", "hvp_evals", "wall_s", "final_loss"],
                f"The stretch [{begin:.3g}, {begin + span:.3g}]")
    path = write_json(
        "drift_step",
        dict(alpha=ALPHA, key=KEY, rtol=RTOL, atol=atol, t0=args.t0, stretch=[begin, begin + span],
             substeps=SUBSTEPS, one_step=single, newton_euler=newton, stretch_runs=runs),
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
