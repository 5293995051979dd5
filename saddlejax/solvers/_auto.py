"""An explicit solver where the gradient flow is not stiff, an implicit one where it is.

Near the origin of a deep net ∇²L vanishes and an explicit Runge–Kutta step (Tsit5: 6
gradients) is far cheaper than a Rosenbrock–Krylov step (6 gradients plus tens of
Hessian-vector products). After an escape ∇²L has a few large eigenvalues (≈ 10³ on the default
problem) while the dynamics is slow: an explicit step is capped at its stability limit h·λ_max
≈ 3.4 and only an implicit step follows the accuracy-limited step size (stiffness detection,
Hairer & Wanner II, §IV.2). `AutoStiff` wraps one solver of each kind, as diffrax's
`HalfSolver` wraps one, and keeps each one's state as that solver made it:

- λ_max(∇²L) is tracked by power iteration, one Hessian-vector product every `power_every`-th
    explicit step and every implicit step, the vector kept across steps (a secant estimate
    ‖Δf‖/‖Δθ‖ between steps sees only the soft curvature along the motion). An explicit step
    raises it to its own stage estimate ‖k_s − k_{s−1}‖/‖y₁ − Y_{s−1}‖ (DOPRI5's, Hairer &
    Wanner II §IV.2; no extra gradient), which sees a stiff direction the moment a step excites
    it: where kinks of a smoothed ReLU net come and go the power vector lags behind them.
- explicit → implicit when h·λ ≥ `to_implicit` (the step is near the stability boundary, so
    it is stability-limited) and, with `min_gain` > 0 (default 0: off), the explicit step's
    own error estimate before the stability cap would let an accuracy-limited step be at least
    `min_gain` times longer (short stiff stretches then stay explicit; but a stiff mode left
    oscillating at the stability edge feeds that estimate, so near a minimum the flow can stay
    explicit with a saved ‖∇L‖ that rises 9×), after at least `min_explicit_steps`·2^b
    explicit steps, where b counts the implicit stretches in a row that ended without reaching
    h·λ ≥ `to_explicit` (at most 3: a back-off against flip-flopping in fast drops).
- implicit → explicit when h·λ < `to_explicit` and the step is steady (it neither grew by 20 %
    nor fell by half over the last step: a step that just collapsed on a kink says nothing of
    the stiffness after it), after at least `min_implicit_steps`·2^b implicit steps (the
    same b): an implicit try shorter than that often gave up just before its step took off,
    and whether it did hung on rounding. With a fixed 6, each try on a long stiff plateau
    stopped at h·λ ≈ 7–8 and was followed by a 128-step explicit wait, and the solve took
    1,977 or ≈ 7,000 steps depending on the deflation basis (DLN (4, 6, 6, 6, 4), α = 0.03);
    lengthened, 889–893 for every draw.
- a stability cap on explicit steps (`_stability_floor`) keeps h·λ ≈ 0.9·`stability_cap`
    inside the explicit method's real stability interval instead of oscillating about its edge.

The measured effect of each default is in benchmarks/README.md.
"""

import functools
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from optax.tree_utils import tree_size, tree_vdot

from ._base import AbstractMatrixFreeSolver, evals_per_step, set_missing
from ._krylov import power_iteration_step, power_start
from ._rosenbrock import RODAS4, RosenbrockKrylov


class _SwitchedInterpolation(diffrax.AbstractLocalInterpolation):
    """The dense output of whichever solver made the step."""

    t0: jax.Array
    t1: jax.Array
    explicit: diffrax.AbstractLocalInterpolation
    implicit: diffrax.AbstractLocalInterpolation
    use_implicit: jax.Array

    def evaluate(self, t0, t1=None, left=True):
        a = self.explicit.evaluate(t0, t1, left)
        b = self.implicit.evaluate(t0, t1, left)
        return jax.tree_util.tree_map(lambda x, y: jnp.where(self.use_implicit, y, x), a, b)


def _switched_interpolation(
    explicit_cls, implicit_cls, *, t0, t1, explicit, implicit, use_implicit
):
    return _SwitchedInterpolation(
        t0=t0,
        t1=t1,
        explicit=explicit_cls(t0=t0, t1=t1, **explicit),
        implicit=implicit_cls(t0=t0, t1=t1, **implicit),
        use_implicit=use_implicit,
    )


def _stage_weights(solver):
    """Weights w with Σⱼ wⱼkⱼ = y₁ − Y_{s−1}, for an explicit FSAL Runge–Kutta solver whose last
    two stages both sit at the step's end (c = 1: Tsit5, Dopri5, Dopri8); else None.

    Then h·λ ≈ ‖k_s − k_{s−1}‖ / ‖Σⱼ wⱼkⱼ‖ (diffrax's kⱼ are increments h·f), the stiffness
    estimate of Hairer & Wanner II §IV.2 (DOPRI5's): the difference of two approximations of
    y(t₁) is dominated, at the stability limit, by the stiff component the step excites.
    """
    if not (isinstance(solver, diffrax.AbstractERK) and solver.tableau.fsal):
        return None
    tableau = solver.tableau
    if len(tableau.c) < 2 or tableau.c[-1] != 1 or tableau.c[-2] != 1:
        return None
    b = np.asarray(tableau.b_sol, dtype=np.float64)
    a = np.zeros_like(b)
    a[: len(tableau.a_lower[-2])] = tableau.a_lower[-2]
    return b - a


def _stage_stiffness(weights, ks):
    """h·λ from an explicit step's stages (`_stage_weights`); 0 where the difference vanishes."""
    dy = jax.tree_util.tree_map(lambda k: jnp.tensordot(weights.astype(k.dtype), k, 1), ks)
    dk = jax.tree_util.tree_map(lambda k: k[-1] - k[-2], ks)
    num, den = tree_vdot(dk, dk), tree_vdot(dy, dy)
    return jnp.sqrt(jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0))


def _reuses_last_stage(solver) -> bool:
    """First-same-as-last: the solver's next step reuses f(θₙ₊₁) unless its state is fresh."""
    return isinstance(solver, diffrax.AbstractRungeKutta) and bool(solver.tableau.fsal)


class AutoStiff(AbstractMatrixFreeSolver):
    """`explicit` where the flow is not stiff, `implicit` where it is (module docstring).

    **Arguments:**

    - `explicit`: an explicit adaptive diffrax solver (default `diffrax.Tsit5()`).
    - `implicit`: a matrix-free implicit solver (default `RosenbrockKrylov(tableau=RODAS4)`;
        its Krylov options — deflation, recycling, CG tolerance — are set there).
    - `rtol`, `atol`: default `None`, the step-size controller's; passed on to `implicit`
        unless it sets its own, and used by the stability cap.
    - `to_implicit`, `to_explicit`, `min_gain`, `stability_cap`, `min_implicit_steps`,
        `min_explicit_steps`, `power_every`: the switch (module docstring).
    - `verbose`: print one line per attempted step (debugging).

    The step-size controller uses `implicit`'s error order for both kinds of steps (4 for
    RODAS4; Tsit5's embedded estimate is also of order 4). `work` reports gradients and
    Hessian-vector products (power iteration and the implicit solver's) and the accepted
    explicit and implicit steps. Under `jax.vmap` both branches run for every trajectory (a
    batched `lax.cond`).

    **Example:** where implicit steps are dear (wide two-layer nets) stay explicit longer:
    `gradient_flow(..., solver=AutoStiff(to_explicit=40.0))`.
    """

    term_structure: ClassVar = diffrax.AbstractTerm

    explicit: diffrax.AbstractAdaptiveSolver = diffrax.Tsit5()
    implicit: AbstractMatrixFreeSolver = RosenbrockKrylov(tableau=RODAS4)
    rtol: jax.Array | float | None = None
    atol: jax.Array | float | None = None
    to_implicit: float = 2.5
    to_explicit: float = 15.0
    min_gain: float = 0.0
    stability_cap: float = 3.7
    min_implicit_steps: int = eqx.field(static=True, default=6)
    min_explicit_steps: int = eqx.field(static=True, default=16)
    power_every: int = eqx.field(static=True, default=8)
    verbose: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if isinstance(self.explicit, diffrax.AbstractImplicitSolver):
            raise ValueError(
                f"`explicit` must be an explicit solver, got {type(self.explicit).__name__}."
            )
        if not isinstance(self.implicit, AbstractMatrixFreeSolver):
            raise ValueError(
                "`implicit` must be a saddlejax matrix-free solver such as "
                f"`RosenbrockKrylov(...)`, got {type(self.implicit).__name__}."
            )

    @property
    def interpolation_cls(self):  # pyright: ignore
        return functools.partial(
            _switched_interpolation,
            self.explicit.interpolation_cls,
            self.implicit.interpolation_cls,
        )

    def order(self, terms):
        return self.implicit.order(terms)

    def error_order(self, terms):
        return self.implicit.error_order(terms)

    def with_tolerances(self, rtol, atol) -> "AutoStiff":
        auto = set_missing(self, rtol, atol)
        return eqx.tree_at(
            lambda s: s.implicit, auto, auto.implicit.with_tolerances(auto.rtol, auto.atol)
        )

    def work(self, solver_state) -> dict:
        inner = self.implicit.work(solver_state["implicit"])
        return dict(
            inner,
            grad_evals=solver_state["grads"] + inner["grad_evals"],
            hvp_evals=solver_state["hvp"] + inner["hvp_evals"],
            explicit_steps_accepted=solver_state["n_explicit"],
            implicit_steps_accepted=solver_state["n_implicit"],
        )

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        dtype = jax.tree_util.tree_leaves(y0)[0].dtype
        zero = jnp.zeros((), jnp.int32)
        return dict(
            explicit=self.explicit.init(terms, t0, t1, y0, args),
            implicit=self.implicit.init(terms, t0, t1, y0, args),
            fresh=jnp.asarray(True),  # the explicit state was (re)initialised
            implicit_mode=jnp.asarray(False),
            dwell=zero,
            v=power_start(y0),
            lam=jnp.zeros((), dtype),
            grads=zero,
            hvp=zero,
            n_implicit=zero,
            n_explicit=zero,
            backoff=zero,
            h=jnp.zeros((), dtype),
        )

    def _stability_floor(self, terms, hl, y0, y1, err):
        """Raise an explicit step's error estimate to at least (h·λ/`stability_cap`)^q in the
        step-size controller's weighted RMS norm (q = `error_order`), so that the controller
        proposes h ≤ safety·cap/λ next and rejects steps with h·λ > cap.

        Without it a stability-limited explicit step oscillates about the stability boundary
        (h·λ ≈ 3.4 for Tsit5): the unstable component grows until the error test fails, the
        step shrinks and grows back, and 25–50 % of the steps are rejected. λ is the
        power-iteration estimate, a lower bound of λ_max. Default cap 3.7: the controller
        settles at h·λ ≈ 3.33, inside Tsit5's real stability interval (h·λ < 3.51).
        """
        scale = jax.tree_util.tree_map(
            lambda a, b: self.atol + self.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)), y0, y1
        )
        q = jax.tree_util.tree_map(lambda e, s: e / s, err, scale)
        norm = jnp.sqrt(tree_vdot(q, q) / tree_size(q))
        floor = (hl / self.stability_cap) ** self.error_order(terms)
        err = jax.tree_util.tree_map(lambda e, s: jnp.where(norm < floor, floor * s, e), err, scale)
        return err, norm

    def _branches(self, terms, t0, t1, y0, args, st, made_jump):
        """The explicit and the implicit step as `lax.cond` branches with equal outputs: each
        fills the other solver's dense output with zeros of its shape."""
        h = t1 - t0

        def power(v):
            hvp = lambda u: jax.jvp(lambda y: terms.vf(t0, y, args), (y0,), (u,))[1]  # noqa: E731
            # An estimate for the switch and the stability cap: it carries no derivative.
            lam, v = jax.lax.stop_gradient(power_iteration_step(hvp, v))
            return v, lam.astype(st["lam"].dtype), jnp.ones((), jnp.int32)

        def explicit_step():
            y1, err, dense, state, result = self.explicit.step(
                terms, t0, t1, y0, args, st["explicit"], made_jump
            )
            v, lam, n = jax.lax.cond(
                st["n_explicit"] % self.power_every == 0,
                lambda: power(st["v"]),
                lambda: (st["v"], st["lam"], jnp.zeros((), jnp.int32)),
            )
            weights = _stage_weights(self.explicit)
            if weights is not None:
                stage_hl = jax.lax.stop_gradient(_stage_stiffness(weights, dense["k"]))
                safe_h = jnp.where(h != 0, jnp.abs(h), 1.0)  # a zero step says nothing of λ
                lam = jnp.maximum(lam, jnp.where(h != 0, stage_hl / safe_h, 0.0).astype(lam.dtype))
            err = jax.tree_util.tree_map(
                lambda e: jnp.where(result == diffrax.RESULTS.successful, e, jnp.inf), err
            )
            err, norm = self._stability_floor(
                terms, h * jnp.maximum(lam, st["lam"]), y0, y1, err
            )
            # The gain an accuracy-limited step would have over this one: the controller's
            # proposal from the error before the stability cap, (1/‖err‖)^{1/q}.
            q = self.error_order(terms)
            gain = jax.lax.stop_gradient(jnp.maximum(norm, 1e-30) ** (-1.0 / q)).astype(h.dtype)
            grads = jnp.asarray(evals_per_step(self.explicit), jnp.int32)
            if _reuses_last_stage(self.explicit):
                grads = grads + st["fresh"].astype(jnp.int32)
            return y1, err, dense, state, st["implicit"], v, lam, n, grads, gain

        def implicit_step():
            y1, err, dense, state = self.implicit.solve_step(
                terms, t0, t1, y0, args, st["implicit"], made_jump
            )
            v, lam, n = power(st["v"])
            # The explicit solver starts afresh after an implicit step (its FSAL value is stale).
            fresh = self.explicit.init(terms, t1, t1, y1, args)
            gain = jnp.zeros((), jnp.result_type(h))
            return y1, err, dense, fresh, state, v, lam, n, jnp.zeros((), jnp.int32), gain

        # Each step is traced once, to a jaxpr: the branches replay it, and its output shapes
        # give the other branch's zeros (tracing is most of a cold start's time).
        explicit_step = eqx.filter_closure_convert(explicit_step)
        implicit_step = eqx.filter_closure_convert(implicit_step)
        zeros = lambda tree: jax.tree_util.tree_map(  # noqa: E731
            lambda s: jnp.zeros(s.shape, s.dtype), tree
        )

        def explicit_branch():
            y1, err, dense, *rest = explicit_step()
            return (y1, err, dense, zeros(implicit_step.out_struct[2]), *rest)

        def implicit_branch():
            y1, err, dense, *rest = implicit_step()
            return (y1, err, zeros(explicit_step.out_struct[2]), dense, *rest)

        return explicit_branch, implicit_branch

    def solve_step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        h = t1 - t0
        st = solver_state
        explicit_branch, implicit_branch = self._branches(terms, t0, t1, y0, args, st, made_jump)
        was_implicit = st["implicit_mode"]
        y1, err, dense_e, dense_i, state_e, state_i, v, lam, n_hvp, grads, gain = jax.lax.cond(
            was_implicit, implicit_branch, explicit_branch
        )
        hl = jnp.abs(h) * lam
        dwell = st["dwell"] + 1
        backoff = st["backoff"]
        backed_off = 2 ** jnp.minimum(backoff, 3)
        explicit_wait = self.min_explicit_steps * backed_off
        go_implicit = (
            (~was_implicit)
            & (hl >= self.to_implicit)
            & (dwell >= explicit_wait)
            & (gain >= self.min_gain)
        )
        growing = jnp.abs(h) > 1.2 * st["h"]
        steady = ~growing & (jnp.abs(h) >= 0.5 * st["h"])
        implicit_wait = self.min_implicit_steps * backed_off
        go_explicit = (
            was_implicit & (dwell >= implicit_wait) & (hl < self.to_explicit) & steady
        )
        implicit_next = jnp.where(was_implicit, ~go_explicit, go_implicit)
        skipped = was_implicit & (hl >= self.to_explicit)
        backoff = jnp.where(skipped, 0, jnp.where(go_explicit, backoff + 1, backoff))
        if self.verbose:
            msg = "t={:.12g} h={:.6g} implicit={} hλ={:.3g} hvp={} next={}"
            jax.debug.print(msg, t0, h, was_implicit, hl, n_hvp, implicit_next)
        state = dict(
            explicit=state_e,
            implicit=state_i,
            fresh=was_implicit,
            implicit_mode=implicit_next,
            dwell=jnp.where(implicit_next == was_implicit, dwell, 0),
            v=v,
            lam=lam,
            grads=st["grads"] + grads,
            hvp=st["hvp"] + n_hvp,
            n_implicit=st["n_implicit"] + was_implicit.astype(jnp.int32),
            n_explicit=st["n_explicit"] + (~was_implicit).astype(jnp.int32),
            backoff=backoff,
            h=jnp.abs(h).astype(st["h"].dtype),
        )
        dense = dict(explicit=dense_e, implicit=dense_i, use_implicit=was_implicit)
        return y1, err, dense, state
