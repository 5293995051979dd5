"""Rosenbrock–Krylov solvers for the stiff gradient flow: one symmetric linear solve per stage.

The flow dθ/dt = f(θ) = −∇L(θ) has Jacobian J = −∇²L, symmetric. A Rosenbrock method
(Hairer & Wanner, *Solving ODEs II*, §IV.7, eq. (7.4)) replaces the Newton iterations of an
implicit Runge–Kutta method by one linear solve per stage with the same matrix

    (I + hγ∇²L(θₙ)) Kᵢ = hγ [ f(θₙ + Σⱼ aᵢⱼKⱼ) + Σⱼ (cᵢⱼ/h) Kⱼ ],

which is symmetric, and positive definite whenever hγ·|λ_min(∇²L)| < 1 — on plateaus, where
the negative curvature is tiny (that is why they are long), even for hγλ_max ≫ 1. So the
systems are solved by conjugate gradients on Hessian-vector products (one `jax.linearize` of
the gradient per step, then one cheap tangent evaluation per CG iteration), started from the
explicit guess Kᵢ = hγ·rhsᵢ and stopped as soon as the residual is below a fraction of the
step-size controller's error scale atol + rtol·|θ| (inexact, error-controlled solves: since
I + hγ∇²L ⪰ (1 − hγ|λ_min|)·I, the error is at most that residual). Where ∇²L is tiny (near the
origin of a deep net) the first residual already passes and a stage costs one gradient and
one Hessian-vector product (still dearer than Tsit5's steps there, hence `solver="auto"` in
`_auto.py`). A failed solve (indefinite curvature detected, or the iteration cap) rejects the
step and the controller shrinks h, which restores definiteness and conditioning.

The vector field must be autonomous (gradient flow is): the ∂f/∂t terms are omitted.
"""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


class RosenbrockTableau(eqx.Module):
    """Coefficients of an s-stage Rosenbrock method in the (A, C, m, e) form of Hairer–Wanner
    (IV.7.25): stage i evaluates f at θₙ + Σ aᵢⱼKⱼ and adds Σ (cᵢⱼ/h)Kⱼ to it; θₙ₊₁ = θₙ + Σ mⱼKⱼ
    and the local-error estimate is Σ eⱼKⱼ."""

    gamma: float = eqx.field(static=True)
    a: tuple = eqx.field(static=True)
    c: tuple = eqx.field(static=True)
    m: tuple = eqx.field(static=True)
    e: tuple = eqx.field(static=True)
    order: int = eqx.field(static=True)
    error_order: int = eqx.field(static=True)


def _lower(rows):
    """Strictly lower-triangular rows (row i has i entries) as a tuple of tuples."""
    return tuple(tuple(float(x) for x in row) for row in rows)


# RODAS3 (Sandu et al. 1997, Atmos. Environ. 31, "Benchmarking stiff ODE solvers for
# atmospheric chemistry II: Rosenbrock solvers"): 4 stages, order 3 (embedded 2), L-stable,
# stiffly accurate; stage 2 reuses f(θₙ).
RODAS3 = RosenbrockTableau(
    gamma=0.5,
    a=_lower([[], [0.0], [2.0, 0.0], [2.0, 0.0, 1.0]]),
    c=_lower([[], [4.0], [1.0, -1.0], [1.0, -1.0, -8.0 / 3.0]]),
    m=(2.0, 0.0, 1.0, 1.0),
    e=(0.0, 0.0, 0.0, 1.0),
    order=3,
    error_order=3,
)

_A5 = [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950]
# RODAS4 (Hairer & Wanner, Solving ODEs II, §VI.4, Table 4.1 of the 2nd edition): 6 stages,
# order 4 (embedded 3), L-stable, stiffly accurate.
RODAS4 = RosenbrockTableau(
    gamma=0.25,
    a=_lower(
        [
            [],
            [1.544],
            [0.9466785280815826, 0.2557011698983284],
            [3.314825187068521, 2.896124015972201, 0.9986419139977817],
            _A5,
            _A5 + [1.0],
        ]
    ),
    c=_lower(
        [
            [],
            [-5.6688],
            [-2.430093356833875, -0.2063599157091915],
            [-0.1073529058151375, -9.594562251023355, -20.47028614809616],
            [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160],
            [
                8.083246795921522,
                -7.981132988064893,
                -31.52159432874371,
                16.31930543123136,
                -6.058818238834054,
            ],
        ]
    ),
    m=tuple(_A5) + (1.0, 1.0),
    e=(0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    order=4,
    error_order=4,
)


def _rms(x):
    return jnp.sqrt(jnp.mean(x**2))


def conjugate_gradient(
    matvec: Callable, b, x0, scale, tol, max_steps: int, precondition: Callable | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Solve A x = b for symmetric A by (preconditioned) conjugate gradients, from x0.

    Stops when RMS(r/scale) ≤ tol (r = b − A x), when pᵀAp ≤ 0 (A not positive definite along
    p: failure), or after `max_steps` iterations (failure unless converged). `precondition`
    applies a symmetric positive-definite M⁻¹.

    **Returns:** (x, number of matrix-vector products, converged).
    """
    prec = (lambda r: r) if precondition is None else precondition
    r = b - matvec(x0)
    z = prec(r)
    rz = jnp.dot(r, z)

    def done_of(r, bad):
        return (_rms(r / scale) <= tol) | bad

    def cond(carry):
        k, done = carry[4], carry[5]
        return (~done) & (k < max_steps)

    def body(carry):
        x, r, p, rz, k, _, _ = carry
        ap = matvec(p)
        pap = jnp.dot(p, ap)
        bad = ~(pap > 0)
        alpha = jnp.where(bad, 0.0, rz / jnp.where(bad, 1.0, pap))
        x = x + alpha * p
        r = r - alpha * ap
        z = prec(r)
        rz_new = jnp.dot(r, z)
        beta = rz_new / jnp.where(rz > 0, rz, 1.0)
        p = z + beta * p
        return x, r, p, rz_new, k + 1, done_of(r, bad), bad

    init = (x0, r, z, rz, jnp.asarray(0), done_of(r, False), jnp.asarray(False))
    x, r, _, _, k, _, bad = jax.lax.while_loop(cond, body, init)
    converged = (_rms(r / scale) <= tol) & ~bad
    return x, k + 1, converged


def lanczos_top(hvp: Callable, v0, n_steps: int, n_keep: int):
    """The `n_keep` largest Ritz pairs of a symmetric operator after `n_steps` Lanczos steps
    with full reorthogonalisation (Golub & Van Loan §10.1), started from v0.

    **Returns:** (V of shape (n_keep, n), orthonormal rows; Ritz values θ, descending).
    """
    n = v0.size
    q0 = v0 / jnp.linalg.norm(v0)
    basis = jnp.zeros((n_steps + 1, n), v0.dtype).at[0].set(q0)

    def body(j, carry):
        basis, alphas, betas = carry
        w = hvp(basis[j])
        a = jnp.dot(basis[j], w)
        w = w - basis.T @ (basis @ w)  # one full reorthogonalisation pass (rows > j are zero)
        nb = jnp.linalg.norm(w)
        basis = basis.at[j + 1].set(jnp.where(nb > 0, w / jnp.where(nb > 0, nb, 1.0), 0.0))
        return basis, alphas.at[j].set(a), betas.at[j].set(nb)

    zeros = jnp.zeros((n_steps,), v0.dtype)
    basis, alphas, betas = jax.lax.fori_loop(0, n_steps, body, (basis, zeros, zeros))
    off = betas[:-1]
    tri = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    theta, vecs = jnp.linalg.eigh(tri)
    theta, vecs = theta[::-1][:n_keep], vecs[:, ::-1][:, :n_keep]
    return vecs.T @ basis[:n_steps], theta


class RosenbrockKrylov(diffrax.AbstractAdaptiveSolver):
    """A Rosenbrock method whose stage systems (I + hγ∇²L)K = b are solved matrix-free by
    conjugate gradients on Hessian-vector products (see the module docstring).

    **Arguments:**

    - `tableau`: `RODAS3` (default; 4 gradients + 4 CG solves per step, order 3) or `RODAS4`
        (7 gradients + 6 CG solves, order 4); gradient counts include f(θₙ₊₁) for dense output.
    - `rtol`, `atol`: the step-size controller's tolerances (may be traced); the CG residual
        tolerance is `linear_factor`·(atol + rtol·|θₙ|) in RMS.
    - `linear_factor`: see above (inexact solves: 0.1 keeps the solve error well inside the
        local error the controller accepts).
    - `max_cg_steps`: cap on CG iterations per stage; reaching it rejects the step.
    - `deflate`: number k of top Ritz vectors of ∇²L (Lanczos, `lanczos_steps` steps) used as
        the deflation preconditioner M⁻¹ = I − V diag(hγθ/(1 + hγθ)) Vᵀ (0: plain CG). They are
        kept in the solver state and refreshed every `refresh_every` accepted steps or when a
        stage needed more than `refresh_cg` products.

    Dense output: cubic Hermite on θₙ, θₙ₊₁, f(θₙ), f(θₙ₊₁) (one more gradient per step).
    The solver state counts Hessian-vector products (CG, Lanczos) over the accepted steps and
    the largest per-stage CG count.
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation

    rtol: jax.Array
    atol: jax.Array
    tableau: RosenbrockTableau = RODAS3
    linear_factor: float | jax.Array = 0.1
    max_cg_steps: int = eqx.field(static=True, default=200)
    deflate: int = eqx.field(static=True, default=0)
    lanczos_steps: int = eqx.field(static=True, default=24)
    refresh_every: int = eqx.field(static=True, default=64)
    refresh_cg: int = eqx.field(static=True, default=12)

    def order(self, terms):
        return self.tableau.order

    def error_order(self, terms):
        return self.tableau.error_order

    def init(self, terms, t0, t1, y0, args):
        zero = jnp.zeros((), jnp.int32)
        flat = ravel_pytree(y0)[0]
        return dict(
            hvp=zero,
            max_cg=zero,
            basis=jnp.zeros((self.deflate, flat.size), flat.dtype),
            ritz=jnp.zeros((self.deflate,), flat.dtype),
            age=jnp.asarray(self.refresh_every, jnp.int32),
            last_cg=zero,
        )

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        tab = self.tableau
        h = t1 - t0
        flat0, unravel = ravel_pytree(y0)

        def f(x):
            return ravel_pytree(terms.vf(t0, unravel(x), args))[0]

        f0, jvp = jax.linearize(f, flat0)  # jvp(v) = J v = −∇²L v
        hg = h * tab.gamma
        scale = self.atol + self.rtol * jnp.abs(flat0)
        tol = self.linear_factor

        def matvec(v):
            return v - hg * jvp(v)

        n_hvp = jnp.zeros((), jnp.int32)
        basis, ritz, age = solver_state["basis"], solver_state["ritz"], solver_state["age"]
        if self.deflate > 0:
            # Deflation preconditioner M⁻¹ = I − V diag(hγθ/(1 + hγθ)) Vᵀ from the top Ritz
            # pairs (V, θ) of ∇²L: exact inverse of I + hγ∇²L on span V. On plateaus ∇²L has a
            # few large eigenvalues and a gap (e.g. 12 above 200, the rest below 0.2), so CG
            # then sees κ ≈ 1 + hγλ_{k+1} instead of 1 + hγλ_max. Refreshed by Lanczos every
            # `refresh_every` accepted steps or when a stage needed > `refresh_cg` iterations.
            refresh = (age >= self.refresh_every) | (solver_state["last_cg"] > self.refresh_cg)

            def new_basis():
                start = jnp.sum(basis, axis=0) + jnp.cos(
                    jnp.arange(flat0.size, dtype=flat0.dtype) * 2.399963229728653
                ) / jnp.sqrt(flat0.size)
                v, th = lanczos_top(
                    lambda v: -jvp(v), start, self.lanczos_steps, self.deflate
                )
                return v, th, jnp.zeros((), jnp.int32)

            basis, ritz, age = jax.lax.cond(refresh, new_basis, lambda: (basis, ritz, age))
            n_hvp = n_hvp + jnp.where(refresh, self.lanczos_steps, 0)
            shrink = jnp.where(ritz > 0, hg * ritz / (1 + hg * jnp.maximum(ritz, 0)), 0.0)

            def precondition(r):
                return r - basis.T @ (shrink * (basis @ r))
        else:
            precondition = None

        ks, stage_f, prev_row = [], f0, ()
        max_cg = jnp.zeros((), jnp.int32)
        ok = jnp.asarray(True)
        for i in range(len(tab.m)):
            row = tab.a[i]
            if i > 0 and row != prev_row + (0.0,) * (len(row) - len(prev_row)):
                stage_f = f(flat0 + sum(a * k for a, k in zip(row, ks) if a != 0.0))
            prev_row = row
            rhs = stage_f + sum((c / h) * k for c, k in zip(tab.c[i], ks) if c != 0.0)
            b = hg * rhs
            x0 = b if precondition is None else precondition(b)
            k_i, n_i, conv = conjugate_gradient(
                matvec, b, x0, scale, tol, self.max_cg_steps, precondition
            )
            ks.append(k_i)
            n_hvp = n_hvp + n_i
            max_cg = jnp.maximum(max_cg, n_i)
            ok = ok & conv
        flat1 = flat0 + sum(m * k for m, k in zip(tab.m, ks) if m != 0.0)
        err = sum(e * k for e, k in zip(tab.e, ks) if e != 0.0)
        err = jnp.where(ok & jnp.all(jnp.isfinite(flat1)), err, jnp.inf)
        f1 = f(flat1)
        y1 = unravel(flat1)
        dense_info = dict(y0=y0, y1=y1, k0=unravel(h * f0), k1=unravel(h * f1))
        state = dict(
            hvp=solver_state["hvp"] + n_hvp,
            max_cg=jnp.maximum(solver_state["max_cg"], max_cg),
            basis=basis,
            ritz=ritz,
            age=age + 1,
            last_cg=max_cg,
        )
        return y1, unravel(err), dense_info, state, diffrax.RESULTS.successful

    @staticmethod
    def grad_evals_per_step(tableau: RosenbrockTableau) -> int:
        """Gradient evaluations per step: f(θₙ) (with the linearisation), the new stage values,
        and f(θₙ₊₁) for dense output."""
        n, prev = 1, ()
        for i, row in enumerate(tableau.a):
            if i > 0 and row != prev + (0.0,) * (len(row) - len(prev)):
                n += 1
            prev = row
        return n + 1


TABLEAUS = {"rodas3": RODAS3, "rodas4": RODAS4}
