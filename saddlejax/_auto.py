"""Automatic explicit/implicit switching for the gradient flow (`solver="auto"`).

Near the origin of a deep net the Hessian vanishes and the flow is not stiff: an explicit
Runge–Kutta step (Tsit5, 6 gradients) is far cheaper than a Rosenbrock–Krylov step (`_stiff.py`:
7 gradients plus tens of Hessian-vector products). After an escape, ∇²L has a few large
eigenvalues (≈ 10³ on the default problem) while the dynamics is slow: the explicit step is
capped at its stability limit h·λ_max ≈ 3.4 and only an implicit step can follow the
accuracy-limited step size (stiffness detection, Hairer & Wanner II, §IV.2). The switch:

- λ_max(∇²L) is tracked by power iteration, one Hessian-vector product every `power_every`-th
    explicit step and every implicit step, the vector kept across steps. (A free secant
    estimate ‖Δf‖/‖Δθ‖ does not work: it sees the soft curvature along the motion.)
- explicit mode: switch to implicit when h·λ ≥ `to_implicit` (default 2.5: the step is near
    Tsit5's stability boundary ≈ 3.4 on the negative real axis, so it is stability-limited),
    after at least `min_explicit_steps`·2^k explicit steps (see the back-off below).
- implicit mode: switch back to explicit when h·λ < `to_explicit` and the step stopped
    growing (by 20 % a step: after a drop the implicit step grows for a while before it
    reaches the plateau's scale), after at least `min_implicit_steps` implicit steps (default
    6: with 3, a try at the end of a drop often gave up just before the implicit step took off,
    and whether it did hung on rounding — seed 2, α = 1e−3 took 833 or 1,874 steps for atol
    changed by 1e−9 relative, 9 failed tries × 128 explicit steps; with 6: 836–847, and fewer
    steps at every α (14-run grid 10,471 → 9,599 steps, wall 42.1 → 41.6 s; session 4). Default
    15, i.e. an implicit step must be ≳ 4.5× the explicit one (h·λ ≈ 3.33, see the cap
    below): an implicit step on the default problem costs 5–15 explicit ones, but staying
    implicit lets h keep growing at the slow end of an escape, where explicit stretches at
    the stability limit and 4–5-step implicit tries otherwise alternate for thousands of steps.
    Over 14 default-problem runs (benchmarks/README.md, session 3) the totals were 48.6 s /
    46.7 / 39.4 / 42.7 s for `to_explicit` = 40 / 25 / 15 / 10 (depth 5: 4.5 → 2.7 s, depth 6:
    13.7 → 11.6 s; Chen–Luo–Wang m = 5,000, where an implicit step is dearer: 14.5 → 17.5 s).
- back-off against flip-flopping in fast drops: k counts the implicit stretches in a row that
    ended without ever reaching h·λ ≥ `to_explicit` (at most 3); a stretch that did resets it.
- stability cap on explicit steps: an explicit step's error estimate is raised to at least
    (h·λ/`stability_cap`)^q in the controller's norm (`_stability_floor`), so the controller
    keeps h·λ near 0.9·`stability_cap` = 3.33, inside Tsit5's real stability interval
    (h·λ < 3.51), instead of oscillating about its edge. Over 14 runs of the default problem
    (seeds 2–4 at α = 1e−1 … 1e−4, seed 1 at 1e−1 and 1e−4) it cut rejected steps from 6,815
    to 2,025 (wall 58.9 → 55.6 s); total step counts also depend on where the switches fall
    (15.7k–26.8k for caps 3.5–4.0, against 25.4k without).

Explicit steps produce cubic-Hermite dense output, implicit steps the straight line between
their endpoints (a Hermite with stiff slopes overshoots, see `_stiff.py`); each step's error
estimate is that of the method which made it.
"""

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._stiff import RODAS4, RosenbrockKrylov, RosenbrockTableau
from ._tree import tree_dot, tree_norm, tree_scale, tree_size

_DEFLATION_KEYS = ("basis", "ritz", "age", "last_cg")


class AutoStiff(diffrax.AbstractAdaptiveSolver):
    """Tsit5 where the flow is not stiff, Rosenbrock–Krylov (RODAS4 + CG) where it is.

    **Arguments:** `rtol`, `atol` (default `None`: `gradient_flow` fills in its own), `tableau`,
    `linear_factor`, `max_cg_steps`, `deflate`, `recycle`, `refresh_every`, `refresh_cg` as for
    `RosenbrockKrylov`; `to_implicit`, `to_explicit`, `stability_cap`, `min_implicit_steps`,
    `min_explicit_steps`, `power_every` as in the module docstring; `verbose` prints one line
    per attempted step (debugging).

    The solver state counts Hessian-vector products, explicit and implicit accepted steps.
    Under `jax.vmap` both branches run for every trajectory (a batched `lax.cond`).

    `solver="auto"` uses the defaults; to tune the switch pass an instance, e.g.
    `gradient_flow(..., solver=saddlejax.AutoStiff(to_explicit=25.0))` where implicit steps are
    dear (Chen–Luo–Wang: 17.5 s at the default 15, 14.5 s at 40; benchmarks/README.md).
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation

    rtol: jax.Array | None = None
    atol: jax.Array | None = None
    tableau: RosenbrockTableau = RODAS4
    linear_factor: float | jax.Array = 0.1
    max_cg_steps: int = eqx.field(static=True, default=200)
    deflate: int = eqx.field(static=True, default=16)
    recycle: int = eqx.field(static=True, default=16)
    refresh_every: int = eqx.field(static=True, default=4)
    refresh_cg: int = eqx.field(static=True, default=6)
    to_implicit: float = 2.5
    to_explicit: float = 15.0
    stability_cap: float = 3.7
    min_implicit_steps: int = eqx.field(static=True, default=6)
    min_explicit_steps: int = eqx.field(static=True, default=16)
    power_every: int = eqx.field(static=True, default=8)
    verbose: bool = eqx.field(static=True, default=False)

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
            deflate=self.deflate,
            recycle=self.recycle,
            refresh_every=self.refresh_every,
            refresh_cg=self.refresh_cg,
        )

    def init(self, terms, t0, t1, y0, args):
        f0 = terms.vf(t0, y0, args)
        dtype = jax.tree_util.tree_leaves(y0)[0].dtype
        zero = jnp.zeros((), jnp.int32)
        # Power-iteration start: a fixed pseudo-random unit vector (cos of a golden-ratio ramp),
        # a pytree like θ (flat vectors in the loop carry are slow on XLA:CPU, see _stiff.py).
        v = jax.tree_util.tree_map(
            lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype) * 2.399963229728653).reshape(
                x.shape
            ),
            y0,
        )
        return dict(
            f=f0,
            implicit=jnp.asarray(False),
            dwell=zero,
            v=tree_scale(1.0 / tree_norm(v), v),
            lam=jnp.zeros((), dtype),
            hvp=zero,
            max_cg=zero,
            n_implicit=zero,
            n_explicit=zero,
            backoff=zero,
            h=jnp.zeros((), dtype),
            stiff={
                k: v
                for k, v in self._stiff().init(terms, t0, t1, y0, args).items()
                if k in _DEFLATION_KEYS
            },
        )

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def _stability_floor(self, terms, hl, y0, y1, err):
        """Raise an explicit step's error estimate to at least (h·λ/`stability_cap`)^q in the
        step-size controller's weighted RMS norm (q = `error_order`), so that the controller
        proposes h ≤ safety·cap/λ next and rejects steps with h·λ > cap.

        Without it an explicit step limited by stability, not accuracy, oscillates about the
        stability boundary (h·λ ≈ 3.4 for Tsit5): the unstable component grows until the error
        test fails, then the step shrinks and grows back, and 25–50 % of the steps are rejected
        (Hairer & Wanner II, §IV.2, "stiffness detection"; measured on the default problem).
        λ is the power-iteration estimate, a lower bound of λ_max: the floor never asks for a
        step shorter than 0.9·cap/λ_max. Default cap 3.7: the controller then settles at
        h·λ ≈ 3.33, inside Tsit5's real stability interval (h·λ < 3.51).
        """
        scale = jax.tree_util.tree_map(
            lambda a, b: self.atol + self.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)), y0, y1
        )
        q = jax.tree_util.tree_map(lambda e, s: e / s, err, scale)
        norm = jnp.sqrt(tree_dot(q, q) / tree_size(q))
        floor = (hl / self.stability_cap) ** self.error_order(terms)
        return jax.tree_util.tree_map(
            lambda e, s: jnp.where(norm < floor, floor * s, e), err, scale
        )

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        h = t1 - t0
        st = solver_state

        def power_step(v):
            """One power-iteration step for λ_max(∇²L) at θₙ (the vector persists)."""
            _, hv = jax.jvp(lambda y: terms.vf(t0, y, args), (y0,), (v,))  # −∇²L v
            lam = jnp.abs(tree_dot(v, hv)).astype(st["lam"].dtype)
            nrm = tree_norm(hv)
            inv = jnp.where(nrm > 0, 1.0 / jnp.where(nrm > 0, nrm, 1.0), 0.0)
            v = jax.tree_util.tree_map(lambda a, b: jnp.where(nrm > 0, inv * a, b), hv, v)
            return v, lam, jnp.ones((), jnp.int32)

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
            # Every `power_every`-th explicit step: one power-iteration step for λ_max(∇²L).
            v, lam, n = jax.lax.cond(
                st["n_explicit"] % self.power_every == 0,
                lambda: power_step(st["v"]),
                lambda: (st["v"], st["lam"], jnp.zeros((), jnp.int32)),
            )
            err = jax.tree_util.tree_map(
                lambda e: jnp.where(result == diffrax.RESULTS.successful, e, jnp.inf), err
            )
            err = self._stability_floor(terms, h * jnp.maximum(lam, st["lam"]), y0, y1, err)
            return y1, err, dense, f1, v, lam, n, jnp.zeros((), jnp.int32), st["stiff"]

        def implicit(_):
            stiff = self._stiff()
            zero = jnp.zeros((), jnp.int32)
            inner0 = dict(st["stiff"], hvp=zero, max_cg=zero)
            y1, err, dense, inner, _ = stiff.step(terms, t0, t1, y0, args, inner0, made_jump)
            f1 = terms.vf(t1, y1, args)  # for the next explicit step (FSAL); one gradient
            v, lam, n = power_step(st["v"])
            n_hvp = inner["hvp"] + n
            max_cg = inner["max_cg"]
            inner = {k: inner[k] for k in _DEFLATION_KEYS}
            return y1, err, dense, f1, v, lam, n_hvp, max_cg, inner

        y1, err, dense, f1, v, lam, n_hvp, max_cg, stiff_state = jax.lax.cond(
            st["implicit"], implicit, explicit, None
        )
        was_implicit = st["implicit"]
        hl = jnp.abs(h) * lam
        dwell = st["dwell"] + 1
        # After an implicit stretch that never grew past `to_explicit` (a fast drop, where the
        # explicit method is cheaper), wait twice as long before trying implicit again.
        backoff = st["backoff"]
        explicit_wait = self.min_explicit_steps * 2 ** jnp.minimum(backoff, 3)
        go_implicit = (~was_implicit) & (hl >= self.to_implicit) & (dwell >= explicit_wait)
        growing = jnp.abs(h) > 1.2 * st["h"]
        go_explicit = (
            was_implicit & (dwell >= self.min_implicit_steps) & (hl < self.to_explicit) & ~growing
        )
        implicit_next = jnp.where(was_implicit, ~go_explicit, go_implicit)
        skipped = was_implicit & (hl >= self.to_explicit)
        backoff = jnp.where(skipped, 0, jnp.where(go_explicit, backoff + 1, backoff))
        if self.verbose:
            jax.debug.print(
                "t={t:.12g} h={h:.6g} implicit={m} hλ={hl:.3g} hvp={n} next={nx}",
                t=t0,
                h=h,
                m=was_implicit,
                hl=hl,
                n=n_hvp,
                nx=implicit_next,
            )
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
            backoff=backoff,
            h=jnp.abs(h).astype(st["h"].dtype),
            stiff=stiff_state,
        )
        return y1, err, dense, state, diffrax.RESULTS.successful
