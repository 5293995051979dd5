"""Automatic explicit/implicit switching for the gradient flow (`solver="auto"`).

Near the origin of a deep net and during the fast drops between plateaus, the flow is not stiff
at the step its accuracy needs, and an explicit Runge–Kutta step (Tsit5, 6 gradients) is ten
times cheaper than a Rosenbrock–Krylov step (`_stiff.py`: 7 gradients plus tens of
Hessian-vector products). On plateaus after an escape, ∇²L has λ_max ≈ 10 while the dynamics
is slow: the explicit step is capped at its stability limit h·λ_max ≈ 3.5 and only an implicit
step can follow the accuracy-limited step size (Hairer & Wanner II, §IV.2: stiffness
detection). The switch uses the curvature along the step:

- explicit mode: λ ≈ ‖f(θₙ₊₁) − f(θₙ)‖ / ‖θₙ₊₁ − θₙ‖ (a free secant estimate, f = −∇L; it sees the
    stiff components an explicit step excites). Switch to implicit when h·λ ≥ `to_implicit`
    (default 2.5: the step is at Tsit5's stability boundary ≈ 3.4 on the negative real axis).
- implicit mode: λ by one power-iteration Hessian-vector product per step (the vector is kept
    across steps). Switch back to explicit when h·λ < `to_explicit` (default 10: the implicit
    step is less than about three times the largest stable explicit step, so the explicit
    method is cheaper), after at least `min_implicit_steps` accepted implicit steps.

Both modes produce cubic-Hermite dense output, and each step's error estimate is that of the
method which made it.
"""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._stiff import RODAS4, RosenbrockKrylov, RosenbrockTableau


def _flat(tree):
    return ravel_pytree(tree)[0]


class AutoStiff(diffrax.AbstractAdaptiveSolver):
    """Tsit5 where the flow is not stiff, Rosenbrock–Krylov (RODAS4 + CG) where it is.

    **Arguments:** `rtol`, `atol`, `tableau`, `linear_factor`, `max_cg_steps` as for
    `RosenbrockKrylov`; `to_implicit`, `to_explicit`, `min_implicit_steps` as in the module
    docstring.

    The solver state counts Hessian-vector products, explicit and implicit accepted steps.
    Under `jax.vmap` both branches run for every trajectory (a batched `lax.cond`).
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation

    rtol: jax.Array
    atol: jax.Array
    tableau: RosenbrockTableau = RODAS4
    linear_factor: float | jax.Array = 0.1
    max_cg_steps: int = eqx.field(static=True, default=200)
    to_implicit: float = 2.5
    to_explicit: float = 10.0
    min_implicit_steps: int = eqx.field(static=True, default=4)

    def order(self, terms):
        return self.tableau.order

    def error_order(self, terms):
        return self.tableau.error_order

    def _stiff(self):
        return RosenbrockKrylov(
            rtol=self.rtol,
            atol=self.atol,
            tableau=self.tableau,
            linear_factor=self.linear_factor,
            max_cg_steps=self.max_cg_steps,
        )

    def init(self, terms, t0, t1, y0, args):
        f0 = terms.vf(t0, y0, args)
        flat = _flat(y0)
        zero = jnp.zeros((), jnp.int32)
        # Power-iteration start: a fixed pseudo-random unit vector (cos of a golden-ratio ramp).
        v = jnp.cos(jnp.arange(flat.size, dtype=flat.dtype) * 2.399963229728653)
        return dict(
            f=f0,
            implicit=jnp.asarray(False),
            dwell=zero,
            v=v / jnp.linalg.norm(v),
            lam=jnp.zeros((), flat.dtype),
            hvp=zero,
            max_cg=zero,
            n_implicit=zero,
            n_explicit=zero,
        )

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        h = t1 - t0
        st = solver_state

        def explicit(_):
            tsit = diffrax.Tsit5()
            y1, err, dense, (_, f1), result = tsit.step(
                terms, t0, t1, y0, args, (jnp.asarray(False), st["f"]), made_jump
            )
            k = dense["k"]
            dense = dict(
                y0=y0,
                y1=y1,
                k0=jax.tree_util.tree_map(lambda x: x[0], k),
                k1=jax.tree_util.tree_map(lambda x: x[-1], k),
            )
            dy = _flat(y1) - _flat(y0)
            df = _flat(f1) - _flat(st["f"])
            lam = jnp.linalg.norm(df) / jnp.maximum(jnp.linalg.norm(dy), jnp.finfo(dy.dtype).tiny)
            err = jax.tree_util.tree_map(
                lambda e: jnp.where(result == diffrax.RESULTS.successful, e, jnp.inf), err
            )
            return y1, err, dense, f1, st["v"], lam, jnp.zeros((), jnp.int32), jnp.zeros(
                (), jnp.int32
            )

        def implicit(_):
            stiff = self._stiff()
            zero = jnp.zeros((), jnp.int32)
            y1, err, dense, inner, _ = stiff.step(
                terms, t0, t1, y0, args, dict(hvp=zero, max_cg=zero), made_jump
            )
            f1 = jax.tree_util.tree_map(lambda k: k / h, dense["k1"])
            # One power-iteration step for λ_max(∇²L) at θₙ (the vector persists across steps).
            flat0, unravel = ravel_pytree(y0)
            _, hv = jax.jvp(lambda x: _flat(terms.vf(t0, unravel(x), args)), (flat0,), (st["v"],))
            hv = -hv
            lam = jnp.abs(jnp.dot(st["v"], hv))
            nrm = jnp.linalg.norm(hv)
            v = jnp.where(nrm > 0, hv / jnp.where(nrm > 0, nrm, 1.0), st["v"])
            return y1, err, dense, f1, v, lam, inner["hvp"] + 1, inner["max_cg"]

        y1, err, dense, f1, v, lam, n_hvp, max_cg = jax.lax.cond(
            st["implicit"], implicit, explicit, None
        )
        was_implicit = st["implicit"]
        hl = jnp.abs(h) * lam
        dwell = jnp.where(was_implicit, st["dwell"] + 1, 0)
        go_implicit = (~was_implicit) & (hl >= self.to_implicit)
        go_explicit = was_implicit & (dwell >= self.min_implicit_steps) & (hl < self.to_explicit)
        implicit_next = jnp.where(was_implicit, ~go_explicit, go_implicit)
        state = dict(
            f=f1,
            implicit=implicit_next,
            dwell=jnp.where(implicit_next == was_implicit, dwell, 0),
            v=v,
            lam=lam.astype(st["lam"].dtype),
            hvp=st["hvp"] + n_hvp,
            max_cg=jnp.maximum(st["max_cg"], max_cg),
            n_implicit=st["n_implicit"] + was_implicit.astype(jnp.int32),
            n_explicit=st["n_explicit"] + (~was_implicit).astype(jnp.int32),
        )
        return y1, err, dense, state, diffrax.RESULTS.successful
