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
one Hessian-vector product (still dearer than Tsit5's steps there, hence `AutoStiff`). A
failed solve (indefinite curvature detected, or the iteration cap) rejects the step and the
controller shrinks h, which restores definiteness and conditioning.

The vector field must be autonomous (gradient flow is): the ∂f/∂t terms are omitted.
"""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree
from optax.tree_utils import tree_add_scale, tree_scale, tree_size, tree_sub
from optimistix import two_norm

from .._tree import tree_all_finite
from ._base import AbstractMatrixFreeSolver, set_missing
from ._krylov import (
    conjugate_gradient,
    initial_basis,
    stack_combine,
    stack_dot,
    track_subspace,
)


class RosenbrockTableau(eqx.Module):
    """Coefficients of an s-stage Rosenbrock method in the (A, C, m, e) form of Hairer–Wanner
    (IV.7.25): stage i evaluates f at θₙ + Σ aᵢⱼKⱼ and adds Σ (cᵢⱼ/h)Kⱼ to it; θₙ₊₁ = θₙ + Σ mⱼKⱼ
    and the local-error estimate is Σ eⱼKⱼ. `dense`: the rows (d₂ⱼ), (d₃ⱼ), … of the method's
    continuous extension (see `RosenbrockInterpolation`), or `None` (dense output by a line)."""

    gamma: float = eqx.field(static=True)
    a: tuple = eqx.field(static=True)
    c: tuple = eqx.field(static=True)
    m: tuple = eqx.field(static=True)
    e: tuple = eqx.field(static=True)
    order: int = eqx.field(static=True)
    error_order: int = eqx.field(static=True)
    dense: tuple | None = eqx.field(static=True, default=None)


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
    # The continuous extension of order 3 (Hairer & Wanner's RODAS code, coefficients D2j, D3j).
    dense=(
        (10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823,
         1.025137723295662, 0.0),
        (-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386,
         -6.594389125716872, 0.0),
    ),
)


_A6 = [
    -7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
    0.030198172008377946,
]
# Rodas5P (Steinebach 2023, "Construction of Rosenbrock–Wanner method Rodas5P and numerical
# benchmarks within the Julia Differential Equations package", BIT 63:27; the coefficients
# distributed with the method, to 16 digits): 8 stages, order 5 (embedded 4), L-stable,
# stiffly accurate, with a continuous extension of order 4.
RODAS5P = RosenbrockTableau(
    gamma=0.21193756319429014,
    a=_lower(
        [
            [],
            [3.0],
            [2.849394379747939, 0.45842242204463923],
            [-6.954028509809101, 2.489845061869568, -10.358996098473584],
            [2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641],
            _A6,
            _A6 + [1.0],
            _A6 + [1.0, 1.0],
        ]
    ),
    c=_lower(
        [
            [],
            [-14.155112264123755],
            [-17.97296035885952, -2.859693295451294],
            [147.12150275711716, -1.41221402718213, 71.68940251302358],
            [165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306],
            [
                24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
                -0.6610691825249471,
            ],
            [
                30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
                -19.097331116725623, -28.087943162872662,
            ],
            [
                37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
                -40.06618937091002, -54.66780262877968, -9.48861652309627,
            ],
        ]
    ),
    m=tuple(_A6) + (1.0, 1.0, 1.0),
    e=(0.0,) * 7 + (1.0,),
    order=5,
    error_order=5,
    dense=(
        (25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204,
         0.524948541321073, 1.1241088310450404, 0.4272876194431874, -0.17202221070155493),
        (-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796,
         20.176138334709044, 15.98066361424651, -6.789040303419874, -6.710236069923372),
        (11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643,
         -52.072871366152654, -59.78993625266729, -0.15582684282751913, 4.883087185713722),
    ),
)


class RosenbrockInterpolation(diffrax.AbstractLocalInterpolation):
    """The continuous extension of a Rosenbrock step (Hairer & Wanner II, §IV.6 and their
    RODAS code): with s = (t − tₙ)/h,

        θ(tₙ + sh) = (1 − s)·θₙ + s·(θₙ₊₁ + (1 − s)·(q₁ + s·(q₂ + s·q₃ …))),   qᵣ = Σⱼ dᵣⱼKⱼ,

    built from the stages alone (no extra gradient), exact at both ends, of order 3 for
    RODAS4 (q₁, q₂) and 4 for RODAS5P (q₁, q₂, q₃), and — unlike a cubic Hermite with slopes
    h·f(θₙ), h·f(θₙ₊₁), whose stiff components are multiplied by hλ_max ≫ 1 — damped like the
    step itself. No q is the straight line (tableaus without `dense`)."""

    t0: jax.Array
    t1: jax.Array
    y0: PyTree
    y1: PyTree
    qs: tuple

    def evaluate(self, t0, t1=None, left=True):
        del left
        if t1 is not None:
            return tree_sub(self.evaluate(t1), self.evaluate(t0))
        s = (t0 - self.t0) / (self.t1 - self.t0)

        def blend(y0, y1, *qs):
            s_ = s.astype(y0.dtype)
            inner = 0.0
            for q in reversed(qs):
                inner = q + s_ * inner
            return (1 - s_) * y0 + s_ * (y1 + (1 - s_) * inner)

        return jax.tree_util.tree_map(blend, self.y0, self.y1, *self.qs)


def _grad_evals_per_step(tableau: RosenbrockTableau) -> int:
    """Gradients per Rosenbrock step: f(θₙ) (with the linearisation) and each stage whose
    argument differs from the previous stage's (the dense output is linear: no f(θₙ₊₁))."""
    n, prev = 1, ()
    for i, row in enumerate(tableau.a):
        if i > 0 and row != prev + (0.0,) * (len(row) - len(prev)):
            n += 1
        prev = row
    return n


def _every_stage_evaluates(tableau: RosenbrockTableau) -> bool:
    """Whether every stage after the first evaluates f at a new argument."""
    return _grad_evals_per_step(tableau) == len(tableau.m)


def _combine(coeffs, vecs, base=None):
    """base + Σ cⱼ·vecⱼ over the nonzero cⱼ (pytrees; the coefficients are static)."""
    out = base
    for c, v in zip(coeffs, vecs):
        if c != 0.0:
            out = tree_scale(c, v) if out is None else tree_add_scale(out, c, v)
    return out


class RosenbrockKrylov(AbstractMatrixFreeSolver):
    """A Rosenbrock method whose stage systems (I + hγ∇²L)K = b are solved matrix-free by
    conjugate gradients on Hessian-vector products (see the module docstring).

    **Arguments:**

    - `tableau`: `RODAS3` (default; 3 gradients + 4 CG solves per step, order 3), `RODAS4`
        (6 gradients + 6 CG solves, order 4; `AutoStiff`'s) or `RODAS5P` (8 + 8, order 5:
        fewer steps, each dearer; it pays at tight tolerances, see benchmarks/README.md).
    - `rtol`, `atol`: the tolerances the CG residual is measured in (default `None`: the
        step-size controller's); the CG residual tolerance is
        `linear_factor`·(atol + rtol·|θₙ|) in RMS.
    - `linear_factor`: see above (inexact solves: 0.1 keeps the solve error well inside the
        local error the controller accepts; at 0.5 the stage errors spoil the error estimate).
        The stages pass their solve errors on through the cᵢⱼ: into RODAS4's error estimate
        with gain 11 (RMS over independent errors; 20 at worst), so undeflated CG, which stops
        just under the tolerance, can spoil it already at 0.1 (a linear flow with a bulk
        spectrum: 307 steps against 119 at 0.03, 135 deflated; benchmarks/README.md): with
        `deflate=0`, pass 0.03.
    - `max_cg_steps`: cap on CG iterations per stage; reaching it rejects the step.
    - `deflate`: dimension k of the tracked dominant invariant subspace of ∇²L used as the
        deflation preconditioner M⁻¹ = I − Ṽᵀ diag(hγθ/(1 + hγθ)) Ṽ (0: plain CG); see
        `track_subspace`. On the plateaus of the default problem ∇²L has 12 eigenvalues in
        200–8,000 and a gap below, so 16 covers them. The basis lives in the solver state and
        is refreshed (k Hessian-vector products in one batch) every `refresh_every` accepted
        steps, or after a step whose stages needed more than `refresh_cg` CG iterations.
    - `deflate_above`: 0 (default) deflates from the first step. Else tracking and
        deflation start (and then stay on) once the stages need more than this many
        Hessian-vector products each (a step's mean over its stages, averaged with weight ½
        over the accepted steps): each deflated CG iteration also passes twice over the
        k-vector stacks (≈ 0.8 of a product at P = 22,000 on a CPU), and tracking costs k
        products every `refresh_every` steps, so where deflated stages take ≈ 4 products
        deflation pays from ≈ 8 undeflated ones. 8 saves ≈ 11 % of a large-α solve (short
        stiff stretches of 2–9 products a stage) and costs ≈ 6 % at small α, where the steps
        before it starts run undeflated (benchmarks/README.md).
    - `recycle`: the first `recycle` CG directions of stage 1 (and their products) project the
        initial error of the later stages, which share the matrix (see `conjugate_gradient`).

    Dense output: the tableau's continuous extension (`RosenbrockInterpolation`; order 3 for
    RODAS4, 4 for RODAS5P), else the straight line between θₙ and θₙ₊₁. `work` reports the
    gradients and Hessian-vector products (CG and subspace tracking) of the accepted steps and
    the largest per-stage CG count.
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = RosenbrockInterpolation

    rtol: jax.Array | float | None = None
    atol: jax.Array | float | None = None
    tableau: RosenbrockTableau = RODAS3
    linear_factor: float | jax.Array = 0.1
    max_cg_steps: int = eqx.field(static=True, default=200)
    deflate: int = eqx.field(static=True, default=16)
    refresh_every: int = eqx.field(static=True, default=4)
    refresh_cg: int = eqx.field(static=True, default=6)
    deflate_above: float = eqx.field(static=True, default=0.0)
    recycle: int = eqx.field(static=True, default=16)

    def order(self, terms):
        return self.tableau.order

    def error_order(self, terms):
        return self.tableau.error_order

    def with_tolerances(self, rtol, atol) -> "RosenbrockKrylov":
        return set_missing(self, rtol, atol)

    def work(self, solver_state) -> dict:
        return dict(
            grad_evals=solver_state["grads"],
            hvp_evals=solver_state["hvp"],
            max_cg_iterations=solver_state["max_cg"],
        )

    def init(self, terms, t0, t1, y0, args):
        zero = jnp.zeros((), jnp.int32)
        dtype = jax.tree_util.tree_leaves(y0)[0].dtype
        return dict(
            grads=zero,
            hvp=zero,
            max_cg=zero,
            basis=initial_basis(y0, self._k(y0)),
            ritz=jnp.zeros((self._k(y0),), dtype),
            age=jnp.asarray(self.refresh_every, jnp.int32),
            last_cg=zero,
            deflating=jnp.asarray(self.deflate_above <= 0.0),
            stage_products=jnp.zeros((), dtype),
        )

    def _k(self, y0) -> int:
        """Deflation dimension: `deflate`, at most the number of parameters."""
        return min(self.deflate, tree_size(y0))

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def _deflation(self, jvp, hg, solver_state):
        """The deflation preconditioner from the tracked Ritz pairs (Ṽ, θ) of ∇²L: the exact
        inverse of I + hγ∇²L on span Ṽ when it is invariant, so CG sees κ ≈ 1 + hγλ_{k+1}
        instead of 1 + hγλ_max. Only converged pairs (residual ≤ θ/10) are deflated: a
        preconditioner built on a mixture of eigenvectors removes directions A does not damp.

        **Returns:** (preconditioner or None, basis, Ritz values, age, Hessian-vector products).
        """
        basis, ritz, age = solver_state["basis"], solver_state["ritz"], solver_state["age"]
        if jax.tree_util.tree_leaves(basis)[0].shape[0] == 0:
            return None, basis, ritz, age, jnp.zeros((), jnp.int32)
        on = solver_state["deflating"]
        refresh = on & (
            (age >= self.refresh_every) | (solver_state["last_cg"] > self.refresh_cg)
        )

        def hvp_batch(stack):
            return jax.vmap(lambda v: tree_scale(-1.0, jvp(v)))(stack)

        def do_refresh():
            ritz_v, theta, nxt, n = track_subspace(hvp_batch, basis)
            return ritz_v, theta, nxt, jnp.zeros((), jnp.int32), jnp.asarray(n, jnp.int32)

        def keep():
            return basis, ritz, basis, age, jnp.zeros((), jnp.int32)

        pre_v, ritz, basis, age, n_track = jax.lax.cond(refresh, do_refresh, keep)
        shrink = jnp.where(ritz > 0, hg * ritz / (1 + hg * jnp.maximum(ritz, 0)), 0.0)

        def deflated(r):
            return tree_sub(r, stack_combine(shrink * stack_dot(pre_v, r), pre_v))

        if self.deflate_above <= 0:
            return deflated, basis, ritz, age, n_track

        def precondition(r):  # the identity (shrink = 0) until deflation starts: skip the passes
            return jax.lax.cond(on, deflated, lambda r: r, r)

        return precondition, basis, ritz, age, n_track

    def _stages(self, f, y0, f0, matvec, scale, precondition, hg):
        """The stage increments Kᵢ, each from one CG solve; stage 1 records its directions for
        the later stages (recycling). When every later stage evaluates f (RODAS4) they run as
        one `lax.scan` over the tableau's rows, so the stage — CG loop, linear-solve rule and
        all — is traced and compiled once rather than s − 1 times (most of a cold start).
        **Returns:** (Kᵢ, products, max CG count, all converged)."""
        tab = self.tableau
        n_stages = len(tab.m)
        k1, (n_hvp, ok, recycled) = self._solve(
            matvec, tree_scale(hg, f0), scale, precondition, self.recycle, None
        )
        n_hvp = jnp.asarray(n_hvp, jnp.int32)
        if not _every_stage_evaluates(tab):
            return self._unrolled_stages(
                f, y0, f0, k1, n_hvp, ok, recycled, matvec, scale, precondition, hg
            )
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(y0))

        def padded(rows, factor=1.0):
            return jnp.asarray(
                [[factor * x for x in row] + [0.0] * (n_stages - len(row)) for row in rows[1:]],
                dtype,
            )

        def weighted(coeffs, stack):  # Σⱼ coeffsⱼ·Kⱼ over the stacked stages
            return jax.tree_util.tree_map(lambda k: jnp.tensordot(coeffs, k, axes=1), stack)

        def stage(carry, row):
            stack, i = carry
            a_i, c_i = row
            stage_f = f(jax.tree_util.tree_map(jnp.add, y0, weighted(a_i, stack)))
            # b = hγ·(f(stage) + Σ (cᵢⱼ/h) Kⱼ) = hγ·f(stage) + γ·Σ cᵢⱼ Kⱼ
            b = tree_add_scale(weighted(c_i, stack), hg, stage_f)
            k_i, (n_i, conv, _) = self._solve(matvec, b, scale, precondition, 0, recycled)
            stack = jax.tree_util.tree_map(lambda s_, k: s_.at[i].set(k), stack, k_i)
            return (stack, i + 1), (jnp.asarray(n_i, jnp.int32), conv)

        stack = jax.tree_util.tree_map(
            lambda k: jnp.zeros((n_stages,) + k.shape, k.dtype).at[0].set(k), k1
        )
        rows = (padded(tab.a), padded(tab.c, tab.gamma))
        (stack, _), (n_i, conv) = jax.lax.scan(stage, (stack, 1), rows)
        ks = [jax.tree_util.tree_map(lambda s_: s_[j], stack) for j in range(n_stages)]
        max_cg = jnp.maximum(n_hvp, jnp.max(n_i))
        return ks, n_hvp + jnp.sum(n_i, dtype=jnp.int32), max_cg, ok & jnp.all(conv)

    def _unrolled_stages(
        self, f, y0, f0, k1, n_hvp, ok, recycled, matvec, scale, precondition, hg
    ):
        """`_stages` for tableaus where some stage reuses the previous stage's f (RODAS3)."""
        tab = self.tableau
        ks, stage_f, prev_row = [k1], f0, tab.a[0]
        max_cg = n_hvp
        for i in range(1, len(tab.m)):
            row = tab.a[i]
            if row != prev_row + (0.0,) * (len(row) - len(prev_row)):
                stage_f = f(_combine(row, ks, y0))
            prev_row = row
            b = _combine([tab.gamma * c for c in tab.c[i]], ks, tree_scale(hg, stage_f))
            k_i, (n_i, conv, _) = self._solve(matvec, b, scale, precondition, 0, recycled)
            ks.append(k_i)
            n_hvp = n_hvp + n_i
            max_cg = jnp.maximum(max_cg, n_i)
            ok = ok & conv
        return ks, n_hvp, max_cg, ok

    def _solve(self, matvec, b, scale, precondition, record, recycle):
        """K = (I + hγ∇²L)⁻¹ b by CG, differentiable by the implicit function theorem.

        `jax.lax.custom_linear_solve` differentiates the exact solution, dK = A⁻¹(db − dA·K),
        with one more (transposed: A is symmetric) CG solve per tangent or cotangent, instead
        of through CG's `while_loop` (which reverse mode cannot do). The preconditioner and
        recycled directions only speed CG up and carry no derivative. A tangent solve stops at
        the same accuracy relative to its right-hand side as the primal one.
        **Returns:** (K, (CG products, converged, recorded directions or None)).
        """
        b_norm = jax.lax.stop_gradient(two_norm(b))

        def solve(mv, rhs):
            # The primal rhs gives ratio 1 (the controller's scale, as without derivatives).
            ratio = two_norm(rhs) / jnp.where(b_norm > 0, b_norm, 1.0)
            ratio = jnp.where(b_norm > 0, ratio, 1.0)
            tol_scale = jax.tree_util.tree_map(lambda s: s * jnp.maximum(ratio, 1e-300), scale)
            x0 = rhs if precondition is None else precondition(rhs)
            out = conjugate_gradient(
                mv,
                rhs,
                x0,
                tol_scale,
                self.linear_factor,
                self.max_cg_steps,
                precondition,
                recycle=recycle,
                record=record,
            )
            x, n, conv = out[:3]
            rec = out[3] if record > 0 else None
            return x, (n, conv, rec)

        k, (n, conv, rec) = jax.lax.custom_linear_solve(
            matvec, b, solve, symmetric=True, has_aux=True
        )
        return k, jax.lax.stop_gradient((n, conv, rec))

    def solve_step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        tab = self.tableau
        h = t1 - t0

        def f(y):
            return terms.vf(t0, y, args)

        f0, jvp = jax.linearize(f, y0)  # jvp(v) = J v = −∇²L v
        hg = h * tab.gamma
        scale = jax.tree_util.tree_map(lambda x: self.atol + self.rtol * jnp.abs(x), y0)

        def matvec(v):
            return tree_add_scale(v, -hg, jvp(v))

        # The deflation basis is a preconditioner: it carries no derivative.
        precondition, basis, ritz, age, n_track = self._deflation(
            lambda v: jax.lax.stop_gradient(jvp(v)),
            jax.lax.stop_gradient(hg),
            jax.lax.stop_gradient(solver_state),
        )
        ks, n_hvp, max_cg, ok = self._stages(f, y0, f0, matvec, scale, precondition, hg)
        y1 = _combine(tab.m, ks, y0)
        finite = tree_all_finite(y1) & ok
        err = jax.tree_util.tree_map(lambda e: jnp.where(finite, e, jnp.inf), _combine(tab.e, ks))
        qs = () if tab.dense is None else tuple(_combine(row, ks) for row in tab.dense)
        dense_info = dict(y0=y0, y1=y1, qs=qs)
        products = 0.5 * (solver_state["stage_products"] + n_hvp / len(tab.m))
        products = products.astype(solver_state["stage_products"].dtype)
        state = dict(
            grads=solver_state["grads"] + _grad_evals_per_step(tab),
            hvp=solver_state["hvp"] + n_track + n_hvp,
            max_cg=jnp.maximum(solver_state["max_cg"], max_cg),
            basis=basis,
            ritz=ritz,
            age=age + 1,
            last_cg=max_cg,
            deflating=solver_state["deflating"] | (products > self.deflate_above),
            stage_products=products,
        )
        return y1, err, dense_info, state
