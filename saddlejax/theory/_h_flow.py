"""The gradient flow of a Taylor term H, dθ/dt = −∇H(θ), and its exact rescaling
Γ_H(t, λθ₀) = λΓ_H(λ^{k−2}t, θ₀) (Jacot et al. Lemma 13; SPEC §4).

One integrator for every H-flow in saddlejax (the origin handoff, the Lemma 13 check, the
blow-up time): Dopri8 under PID control at tight tolerances, since these flows are references
for the flow of L.
"""

import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree, Scalar
from optax.tree_utils import tree_add_scale, tree_scale, tree_vdot
from optimistix import two_norm

from .._flat import event_on_state, saveat_on_state
from .._results import RESULTS, check
from .._vector_field import GradientField
from ._taylor import TaylorTerm, _params


def solve_h_flow(
    H: Callable,
    theta0: PyTree,
    t1,
    *,
    saveat: diffrax.SaveAt,
    event: diffrax.Event | None = None,
    rtol: float = 1e-11,
    atol: float = 1e-13,
    max_steps: int = 100_000,
) -> diffrax.Solution:
    """The diffrax solve of the H-flow from θ₀ on [0, t1] (`throw=False`: read `result`).

    `t1`, `rtol` and `atol` enter as arrays, traced: a new horizon or tolerance (one per saddle
    of a chain, per call of `h_flow`) reuses the compiled solve."""
    return _solve_h_flow(
        H, theta0, jnp.asarray(t1), saveat=saveat, event=event, rtol=jnp.asarray(rtol),
        atol=jnp.asarray(atol), max_steps=max_steps,
    )


@eqx.filter_jit
def _solve_h_flow(H, theta0, t1, *, saveat, event, rtol, atol, max_steps) -> diffrax.Solution:
    field, x0 = GradientField(H).flattened(theta0)
    return diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Dopri8(),
        0.0,
        t1,
        None,
        x0,
        saveat=saveat_on_state(saveat, field.unravel),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=event_on_state(event, field.unravel),
        max_steps=max_steps,
        throw=False,
    )


def h_flow(
    H: Callable,
    theta0: PyTree,
    t1: float,
    *,
    rtol: float = 1e-11,
    atol: float = 1e-13,
    max_steps: int = 100_000,
) -> PyTree:
    """Γ_H(t1, θ₀): the gradient flow of H, dθ/dt = −∇H(θ), at time t1 (Dopri8, PID control).

    Raises if the solve fails (e.g. t1 past the blow-up time of a k > 2 flow)."""
    sol = solve_h_flow(
        H, _params(theta0), t1, saveat=diffrax.SaveAt(t1=True), rtol=rtol, atol=atol,
        max_steps=max_steps,
    )
    sol = sol.result.error_if(sol, ~diffrax.is_okay(sol.result))
    return jax.tree_util.tree_map(lambda x: x[-1], sol.ys)


def lemma13_error(
    H: Callable,
    order: int,
    theta0: PyTree,
    lam: float,
    t: float,
    *,
    rtol: float = 1e-11,
    atol: float = 1e-13,
) -> Array:
    """‖Γ_H(t, λθ₀) − λΓ_H(λ^{k−2}t, θ₀)‖ / ‖λΓ_H(λ^{k−2}t, θ₀)‖ (Jacot et al. Lemma 13; SPEC §4).

    Both flows are integrated with `h_flow`; pick t below the blow-up time of the H-flow from
    λθ₀ (k > 2 flows blow up in finite time).
    """
    lhs = h_flow(H, tree_scale(lam, _params(theta0)), t, rtol=rtol, atol=atol)
    rhs = tree_scale(lam, h_flow(H, theta0, lam ** (order - 2) * t, rtol=rtol, atol=atol))
    return two_norm(tree_add_scale(lhs, -1.0, rhs)) / two_norm(rhs)


# ---------------------------------------------------------------------------------------------
# the blow-up time T_H(θ̃) of a k > 2 flow


class BlowupTime(eqx.Module):
    """T_H(θ̃), the blow-up time of the H-flow from θ̃ (see `blowup_time`).

    **Fields:**

    - `time`: T_H(θ̃) (+inf when the flow does not blow up).
    - `speed`: s = −⟨ŵ, ∇H(ŵ)⟩ at the direction ŵ = θ/‖θ‖ where the integration stopped: the
        escape speed of the escape direction the flow aligned with (s* for almost every θ̃ when
        Prop. 14's strictness holds; SPEC §5).
    - `direction`: that ŵ, a unit pytree shaped like θ̃'s parameters.
    - `tail`: the part of `time` given by the asymptotic law, T − t(σ_stop) (see `blowup_time`).
    - `result`: `RESULTS.successful`, `RESULTS.no_blowup` or a solver failure.
    - `stats`: `num_steps` of the solve and `sigma`, the reparametrised time reached.
    """

    time: Scalar
    speed: Scalar
    direction: PyTree
    tail: Scalar
    result: RESULTS
    stats: dict[str, Array]


def sphere_field(H, order, scale):
    """(ŵ, log r, t̂)' in σ̂ (see `blowup_time`): the projected gradient flow of H on the sphere,
    the log of the radius r = ‖θ‖/‖θ̃‖ and the rescaled flow time, dt̂/dσ̂ = r^{−(k−2)}."""

    def field(sigma, y, args):
        w, log_r, t = y
        w = tree_scale(1.0 / two_norm(w), w)
        g = jax.grad(H)(w)
        q = tree_vdot(w, g)  # ⟨ŵ, ∇H(ŵ)⟩ (= kH(ŵ) by Euler's identity)
        dw = tree_scale(-1.0 / scale, tree_add_scale(g, -q, w))
        return dw, -q / scale, jnp.exp(-(order - 2) * log_r)

    return field


class PolarHFlow(eqx.Module):
    """The unit-scale H-flow from ŵ₀ = θ₀/‖θ₀‖ in polar form (`sphere_field`): ŵ, log r and the
    flow time in the dimensionless clock σ̂, on flat vectors (Dopri8's 13 stages are then single
    arrays, not one per leaf: fewer kernels for XLA to compile). Build it with `polar_h_flow`."""

    H: Callable  # of a flat vector
    order: int = eqx.field(static=True)
    scale: Array  # ‖∇H(ŵ₀)‖ (1 where it vanishes): σ̂ = scale·σ and τ = t̂/scale

    def unit_state(self, y):
        """Γ_H(τ, ŵ₀) = r·ŵ at the polar state y."""
        w, log_r, _ = y
        return (jnp.exp(log_r) / two_norm(w)) * w

    def solve(self, w0, horizon, saveat, event, rtol, atol, max_steps) -> diffrax.Solution:
        """The solve from (ŵ₀, 0, 0) on σ̂ ∈ [0, `horizon`] (`throw=False`: read `result`)."""
        zero = jnp.zeros((), w0.dtype)
        return diffrax.diffeqsolve(
            diffrax.ODETerm(sphere_field(self.H, self.order, self.scale)),
            diffrax.Dopri8(),
            zero,
            horizon,
            None,
            (w0, zero, zero),
            saveat=saveat,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            event=event,
            max_steps=max_steps,
            throw=False,
        )


def polar_h_flow(H: Callable, order: int, theta0: PyTree):
    """(`PolarHFlow` of H, ŵ₀ flat, r₀ = ‖θ₀‖, unravel) for θ₀ (a pytree H takes); jittable."""
    x0, unravel = ravel_pytree(theta0)
    r0 = two_norm(x0)
    w0 = tree_scale(1.0 / jnp.where(r0 > 0, r0, 1.0), x0)
    H_flat = GradientField(H, unravel=unravel).loss
    c = two_norm(jax.grad(H_flat)(w0))
    # c = 0: θ̃ is a critical point, the flow stays there
    return PolarHFlow(H_flat, order, jnp.where(c > 0, c, 1.0)), w0, r0, unravel


@eqx.filter_jit
def _blowup_solve(H, theta0, order, tail_rtol, max_time, rtol, atol, max_steps):
    polar, w0, r0, unravel = polar_h_flow(H, order, theta0)
    H, scale = polar.H, polar.scale

    def speed(w):  # ŝ = s/c at a (not necessarily unit) w
        w = tree_scale(1.0 / two_norm(w), w)
        return -tree_vdot(w, jax.grad(H)(w)) / scale

    def tail(y):  # T̂ − t̂ by the asymptotic law û(σ̂) = û e^{−(k−2)ŝσ̂}, û = r^{−(k−2)}
        s = speed(y[0])
        u = jnp.exp(-(order - 2) * y[1])
        return jnp.where(s > 0, u / ((order - 2) * jnp.where(s > 0, s, 1.0)), jnp.inf)

    def escaped(sigma, y, args, **kwargs):
        return tail(y) <= tail_rtol * y[2]

    def collapsed(sigma, y, args, **kwargs):  # û > 10¹⁰⁰: the flow went to the origin
        return -(order - 2) * y[1] > 100 * math.log(10.0)

    event = diffrax.Event((escaped, collapsed))
    sol = polar.solve(w0, max_time, diffrax.SaveAt(t1=True), event, rtol, atol, max_steps)
    w, log_r, t_hat = jax.tree_util.tree_map(lambda x: x[-1], sol.ys)
    fired = (sol.result == diffrax.RESULTS.event_occurred) & sol.event_mask[0]
    # Reaching `max_time`, or the collapse event, is a flow that did not blow up; a solver
    # failure (max_steps, step-size collapse) keeps its own code.
    failed = RESULTS.where(
        diffrax.is_okay(sol.result), RESULTS.no_blowup, RESULTS.promote(sol.result)
    )
    result = RESULTS.where(fired, RESULTS.successful, failed)
    ok = result == RESULTS.successful
    units = r0 ** (-(order - 2)) / scale  # T = units · T̂
    tail_hat = tail((w, log_r, t_hat))
    w = tree_scale(1.0 / two_norm(w), w)
    return BlowupTime(
        time=jnp.where(ok, units * (t_hat + tail_hat), jnp.inf),
        speed=speed(w) * scale,
        direction=unravel(w),
        tail=jnp.where(ok, units * tail_hat, jnp.inf),
        result=result,
        stats=dict(num_steps=sol.stats["num_steps"], sigma=sol.ts[-1]),
    )


def _infer_order(H, theta0) -> int:
    """k from Euler's identity ⟨θ, ∇H(θ)⟩ = kH(θ) at θ̃ (concrete values)."""
    h, g = jax.value_and_grad(H)(theta0)
    if not float(h) != 0:
        raise ValueError(
            "cannot read the order k of H from Euler's identity at `theta0`, where H = 0: pass "
            "`order=` (k = L for a depth-L network at its origin)."
        )
    k = float(tree_vdot(theta0, g) / h)
    if abs(k - round(k)) > 1e-6 * max(1.0, abs(k)):
        raise ValueError(
            f"⟨θ̃, ∇H(θ̃)⟩/H(θ̃) = {k:.8g} is not an integer: H is not homogeneous, or not "
            "evaluated exactly. Pass the Taylor term of `taylor_term` or `order=`."
        )
    return round(k)


def blowup_time(
    H: Callable | TaylorTerm,
    theta0: PyTree,
    *,
    order: int | None = None,
    tail_rtol: float = 1e-8,
    max_time: float = 1e4,
    rtol: float = 1e-11,
    atol: float = 1e-13,
    max_steps: int = 100_000,
    throw: bool = True,
) -> BlowupTime:
    """T_H(θ̃): the finite time at which the flow dθ/dt = −∇H(θ), θ(0) = θ̃, of a k-homogeneous
    H with k > 2 blows up (SPEC §8; Jacot et al. Lemma 13 and App. C.5).

    By Lemma 13 the flow from αθ̃ is αΓ_H(α^{k−2}t, θ̃), so it reaches any fixed radius r at
    a time α^{−(k−2)}(T_H(θ̃) − O(α^{k−2})): α^{k−2}·t_α → T_H(θ̃) for the flow of L from αθ̃
    (see `escape_time_scaling`). Along an escape direction ρ of speed s (SPEC §5),
    ‖θ(t)‖ = ((k−2) s (T − t))^{−1/(k−2)}: for θ̃ = rρ, T = r^{−(k−2)}/((k−2)s).

    **Method.** Write θ = r·ŵ (r = ‖θ‖, ‖ŵ‖ = 1) and u = r^{−(k−2)}, which goes to 0 linearly
    at T. In the time σ with dσ = r^{k−2} dt the flow splits into

        dŵ/dσ = −(∇H(ŵ) − ⟨ŵ, ∇H(ŵ)⟩ŵ),    d log r/dσ = −⟨ŵ, ∇H(ŵ)⟩,    dt/dσ = u,

    the projected gradient flow of H on the sphere (autonomous, bounded: it never blows up), the
    log of r (a quadrature along it; log u = −(k−2) log r) and t (another). As σ → ∞, ŵ
    converges to an escape direction ρ of speed s = −⟨ρ, ∇H(ρ)⟩ > 0, log u decreases like
    −(k−2)sσ, and T = ∫_0^∞ u dσ converges exponentially: the blow-up is at σ = ∞, where every
    variable is smooth. All three are integrated with Dopri8 (in the dimensionless time σ̂ =
    ‖∇H(θ̃/‖θ̃‖)‖σ, with r and t scaled to 1 at the start) until the remaining time, estimated
    by the asymptotic law u/((k−2)s) with s at the current ŵ, is below `tail_rtol` times the
    elapsed time; that estimate is added. H decreases along the flow on the sphere, so s only
    grows towards its limit s_∞ and the estimate exceeds the true remainder by at most a
    fraction 1 − s/s_∞ of itself (O(‖ŵ − ρ‖²) once ŵ is near ρ, where H is stationary): the
    extrapolation's error is below `tail_rtol`·T, and T is exact to the solver's tolerance (≈
    1e−10 relative at the defaults), also when ‖θ‖ blows up before ŵ has aligned (wide
    networks). Started exactly on a slower escape direction — an unstable critical point of the
    flow on the sphere — rounding errors grow and carry ŵ to a faster one once u has decayed
    ~10⁷-fold: T is then exact to ~1e−7 only. Integrating θ in t instead would need steps
    shrinking like T − t, and an extrapolation from a finite radius whose error is the part of ŵ
    not yet aligned there.

    The flow does not blow up when ŵ settles where H ≥ 0 (θ̃ in the stable set of the origin,
    or H ≥ 0 everywhere): ‖θ‖ then stays bounded or shrinks, and the result is
    `RESULTS.no_blowup` (after `max_time` in σ̂, or once ‖θ‖ < 10^{−100/(k−2)}‖θ̃‖).

    **Arguments:**

    - `H`: the Taylor term, a function of a pytree shaped like `theta0` (e.g. `dln_taylor_term(G)`
        on weight tuples), or a `TaylorTerm` (its `H` and `order` are used).
    - `theta0`: θ̃, e.g. the unit-scale draw of a sweep's seed (its inexact arrays).
    - `order`: k > 2. Default: `H.order` for a `TaylorTerm`, else read from Euler's identity
        ⟨θ̃, ∇H(θ̃)⟩ = kH(θ̃) (pass it under `jit`/`vmap`).
    - `tail_rtol`: stop once the extrapolated remainder is below this fraction of the elapsed
        time.
    - `max_time`: the horizon in σ̂ (escaping flows need O(1)–O(100)).
    - `rtol`, `atol`, `max_steps`: of the Dopri8 solve.
    - `throw`: raise if the flow does not blow up (default); with False read `result`.

    **Returns:** a `BlowupTime` with `.time` = T_H(θ̃), `.speed`, `.direction`, `.result`.

    **Example:**

    ```python
    G = saddlejax.problems.matrix_cost_gradient_at_zero(problem)
    theta = saddlejax.nn.DeepLinear((4, 8, 8, 4), key=jr.key(0)).weights
    blowup_time(saddlejax.models.dln_taylor_term(G), theta).time  # ≈ lim α·t_α for L = 3
    ```
    """
    if isinstance(H, TaylorTerm):
        order = H.order if order is None else order
        H = H.H
    theta0 = _params(theta0)
    if order is None:
        order = _infer_order(H, theta0)
    if isinstance(order, bool) or not isinstance(order, int) or order < 3:
        raise ValueError(
            f"`order` must be an int k > 2, got {order!r}: for k = 2 the flow of H grows like "
            "e^{st} and never blows up (the escape time scales like log(1/α)/s*)."
        )
    if not (tail_rtol > 0 and max_time > 0 and rtol > 0 and atol > 0):
        raise ValueError(
            "`tail_rtol`, `max_time`, `rtol` and `atol` must be positive, got "
            f"{tail_rtol}, {max_time}, {rtol}, {atol}."
        )
    norm = two_norm(theta0)
    if not isinstance(norm, jax.core.Tracer) and not float(norm) > 0:
        raise ValueError("`theta0` is 0, a critical point of H: the flow stays there.")
    # Arrays, not Python floats: a new tolerance or horizon does not recompile the solve.
    dtype = jnp.result_type(norm)
    numbers = (jnp.asarray(x, dtype) for x in (tail_rtol, max_time, rtol, atol))
    sol = _blowup_solve(H, theta0, order, *numbers, max_steps)
    return check(sol, throw=throw, what="blowup_time")
