"""Skip the neighbourhood of the origin by the exact time rescaling of homogeneous flows.

Near the origin of a deep net, L(θ) = L(0) + H(θ) + O(‖θ‖^m) with H k-homogeneous (SPEC §4;
for a DLN k = L and m = 2L). The gradient flow of H obeys Lemma 13 of Jacot et al.,

    Γ_H(t, λu₀) = λ Γ_H(λ^{k−2} t, u₀),

so the flow of H from θ₀ = λu₀ (λ = ‖θ₀‖, ‖u₀‖ = 1) is the flow from the unit vector u₀ in
the rescaled time τ = λ^{k−2} t, magnified by λ. `origin_handoff` integrates that unit-scale
flow (whose cost does not depend on λ, i.e. on the initialisation scale α) and hands over to
the flow of L at the first point where H stops describing L well: where the relative defect

    ε(θ) = ‖∇L(θ) − ∇H(θ)‖ / ‖∇H(θ)‖        (= O(‖θ‖^{m−k}) by Taylor's theorem)

reaches `defect_tol`. ε grows monotonically with ‖θ‖ along an escaping path, so every earlier
point of the skipped stretch has a smaller defect: the vector field used there is within a
relative ε_s of the true one throughout, and the handoff state is reported with ε_s. The
resulting state error is checked in the tests against integrating L from θ₀ directly
(relative error ≈ 0.3·ε_s for the default problem).

For k > 2 the unit-scale flow blows up at a finite τ = T, and the handoff radius R_s lies at
r = R_s/λ, i.e. at T − τ ∝ λ^{k−2}: below λ ≈ 1e−5 (depth 4) no float resolves that. So the
flow is integrated in polar form (ŵ = θ/‖θ‖, log r and τ as functions of the clock σ with
dσ = r^{k−2}dτ, `sphere_field`, as `blowup_time` does): every variable is smooth up to the
blow-up, the cost grows only like log(1/λ), and t_s = τ_s·λ^{−(k−2)} is representable down to
λ^{k−2} ≈ 1e−300 (α = 1e−60 at depth 4 gives t_s ≈ 10¹²⁰). `gradient_flow` continues the
flow of L on a clock started at t_s, which resolves the drop after it.

The flow of H escapes only if u₀ is not in the stable set of the origin; if the defect never
reaches `defect_tol` before `max_time` the handoff reports a failure, not a success.
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree, Scalar
from optax.tree_utils import tree_add_scale, tree_scale
from optimistix import two_norm

from .._results import RESULTS
from .._trainable import split_trainable
from .._vector_field import GradientField
from ..theory._h_flow import polar_h_flow
from ..theory._taylor import TaylorTerm, taylor_term


class OriginHandoff(eqx.Module):
    """Where the flow of L takes over from the rescaled flow of H (see the module docstring).

    **Fields:**

    - `params`: θ(t_s), the model with its trainable part replaced (same structure as θ₀).
    - `time`: t_s = τ_s / λ^{k−2}, the flow time of the handoff.
    - `defect`: ε at θ(t_s) (≤ `defect_tol` up to the root-finding tolerance; larger only if
        θ₀ itself was already past it, in which case nothing was skipped: `time` = 0).
    - `scale`: λ = ‖θ₀‖ (trainable part); `rescaled_time`: τ_s on the unit-scale H-flow.
    - `order`: k, the degree of H.
    - `term`: the `TaylorTerm` of L at the origin (on the trainable part); `term.H` is H.
    - `result`: `RESULTS.successful`, or why the handoff failed.
    - `stats`: `h_steps`, the steps of the unit-scale H-flow solve.
    """

    params: PyTree
    time: Scalar
    defect: Scalar
    scale: Scalar
    rescaled_time: Scalar
    order: int = eqx.field(static=True)
    term: TaylorTerm
    result: RESULTS
    stats: dict[str, Array]


def _relative_defect(loss, H, theta):
    g_l = jax.grad(loss)(theta)
    g_h = jax.grad(H)(theta)
    # Both norms of the gradients scaled by max|∇H|: at θ ≈ 1e−60 their squares underflow.
    m = jnp.max(jnp.asarray([jnp.max(jnp.abs(x)) for x in jax.tree_util.tree_leaves(g_h)]))
    m = jnp.where(m > 0, m, 1.0)
    return two_norm(tree_scale(1.0 / m, tree_add_scale(g_l, -1.0, g_h))) / two_norm(
        tree_scale(1.0 / m, g_h)
    )


def origin_term(objective: Callable, static, state0) -> TaylorTerm:
    """The leading Taylor term of L at the origin of the trainable state θ₀, a function of that
    state (not jittable: it reads the order from concrete derivatives); a ValueError unless the
    origin is critical.

    Where every parameter is trainable the term is read from `objective` itself, so an
    objective of the network's outputs gets the "outputs" route (one pass through the network
    per ∇H, against 2^k for the "ray" route: the H-flow of the handoff runs on it)."""
    zeros = jax.tree_util.tree_map(jnp.zeros_like, state0)
    if not jax.tree_util.tree_leaves(eqx.filter(static, eqx.is_inexact_array)):
        term = taylor_term(objective, eqx.combine(zeros, static))
    else:
        term = taylor_term(GradientField(objective, static).loss, zeros)
    if term.order < 2:
        raise ValueError(
            "`origin_defect` / `origin_handoff` need the origin to be a critical point of the "
            f"objective (leading Taylor order k ≥ 2), found k = {term.order}: there is nothing "
            "to skip."
        )
    return term


def h_flow_tolerances(defect_tol) -> tuple[Array, Array]:
    """(rtol, atol) of the handoff's unit-scale H-flow: rtol = min(1e−4·`defect_tol`, 1e−8),
    atol = 1e−2·rtol. The skipped stretch is off by ≈ 0.5·`defect_tol` anyway (the vector
    field it uses), so a tighter solve buys nothing (default problem, `origin_defect`
    1e−4: rtol 1e−10 took 30–40 % more steps than 1e−8, and α²·t_s differed by 3.3e−9)."""
    rtol = jnp.minimum(1e-4 * defect_tol, 1e-8)
    return rtol, 1e-2 * rtol


@eqx.filter_jit
def handoff(
    loss: Callable,
    term: TaylorTerm,
    state0,
    defect_tol,
    *,
    max_time,
    rtol,
    atol,
    max_steps: int,
):
    """The handoff from the trainable state θ₀ (jittable; see `origin_handoff`).

    **Returns:** (θ(t_s) as a trainable state, t_s, ε there, λ, τ_s, H-flow steps, result,
    the solve's steps as (σ̂, log r, t̂) for `rescaled_h_path`)."""
    k = term.order
    polar, w0, lam, unravel = polar_h_flow(term.H, k, state0)
    H = polar.H

    def loss_flat(x):
        return loss(unravel(x))

    def cond_fn(t, y, args, **kwargs):  # t is σ̂ (diffrax passes it by name)
        return _relative_defect(loss_flat, H, lam * polar.unit_state(y)) / defect_tol - 1.0

    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(t1=True),
            diffrax.SubSaveAt(steps=True, fn=lambda sigma, y, args: (sigma, y[1], y[2])),
        ]
    )
    event = diffrax.Event(cond_fn, root_finder=optx.Newton(rtol=1e-12, atol=1e-10))
    sol = polar.solve(w0, max_time, saveat, event, rtol, atol, max_steps)
    fired = sol.result == diffrax.RESULTS.event_occurred
    x0 = ravel_pytree(state0)[0]
    already = _relative_defect(loss_flat, H, x0) >= defect_tol  # θ₀ is past it: skip nothing
    y_s = jax.tree_util.tree_map(lambda x: x[-1], sol.ys[0])
    x_s = jnp.where(already, x0, lam * polar.unit_state(y_s))
    tau_s = jnp.where(already, 0.0, y_s[2] / polar.scale)
    result = RESULTS.where(
        already | fired,
        RESULTS.successful,
        RESULTS.where(
            sol.result == diffrax.RESULTS.max_steps_reached,
            RESULTS.max_steps_reached,
            RESULTS.origin_not_left,
        ),
    )
    defect = _relative_defect(loss_flat, H, x_s)
    # λ^{k−2} through logarithms: t_s is representable down to λ^{k−2} ≈ 1e−308·τ_s.
    time = tau_s * jnp.exp(-(k - 2) * jnp.log(lam))
    # The steps' ends, with the start in front and the handoff (a truncated last step that
    # diffrax may not list) after them, sorted (+inf pads the unused slots).
    n = jnp.sum(jnp.isfinite(sol.ys[1][0]))
    records = tuple(
        jnp.concatenate([jnp.zeros(1, x.dtype), x, jnp.full(1, jnp.inf, x.dtype)]).at[n + 1].set(
            jnp.where(already, 0.0, last)
        )
        for x, last in zip(sol.ys[1], (sol.ts[0][-1], y_s[1], y_s[2]))
    )
    return unravel(x_s), time, defect, lam, tau_s, sol.stats["num_steps"], result, records


def origin_handoff(
    objective: Callable,
    params0: PyTree,
    *,
    defect_tol: float = 1e-4,
    trainable=eqx.is_inexact_array,
    rtol: float | None = None,
    atol: float | None = None,
    max_time: float = 1e4,
    max_steps: int = 100_000,
) -> OriginHandoff:
    """Follow the flow of L from a small θ₀ through the flow of its leading Taylor term H at
    the origin, by Lemma 13's rescaling, up to the point where H's relative gradient defect
    reaches `defect_tol` (module docstring; Jacot et al. Lemma 13, SPEC §4).

    **Arguments:**

    - `objective`, `params0`, `trainable`: as for `gradient_flow`; the origin must be a
        critical point of L (k ≥ 2), else a ValueError.
    - `defect_tol`: the largest relative defect ‖∇L − ∇H‖/‖∇H‖ accepted on the skipped stretch
        (the error bound that is reported); smaller values hand over earlier.
    - `rtol`, `atol`: tolerances of the unit-scale H-flow (Dopri8); default
        `h_flow_tolerances(defect_tol)`, as `gradient_flow(origin_defect=)` uses.
    - `max_time`: horizon of the unit-scale flow in its dimensionless polar clock σ̂ = ‖∇H(u₀)‖σ,
        dσ = r^{k−2}dτ (see `blowup_time`; escaping flows need O(1)–O(100) plus ≈ log(1/λ)/ŝ):
        failure if the defect is never reached.

    **Returns:** an `OriginHandoff` (its `result` says whether it succeeded); continue with
    `gradient_flow(objective, ho.params, t1)` on a clock started at the handoff (t = 0 there;
    `t0=ho.time` only while t_s is small enough for float time to resolve the drop), or use
    `gradient_flow(..., origin_defect=...)`, which does both, restarts its clock where needed
    and fills the save times before t_s from the H-flow.
    """
    if not defect_tol > 0:
        raise ValueError(f"`defect_tol` must be positive, got {defect_tol}.")
    state0, static = split_trainable(params0, trainable)
    loss = GradientField(objective, static).loss
    term = origin_term(objective, static, state0)
    dtype = two_norm(state0).dtype
    defect_tol = jnp.asarray(defect_tol, dtype)
    default_rtol, default_atol = h_flow_tolerances(defect_tol)
    state_s, time, defect, lam, tau_s, steps, result, _ = handoff(
        loss,
        term,
        state0,
        defect_tol,
        max_time=jnp.asarray(max_time, dtype),
        rtol=default_rtol if rtol is None else rtol,
        atol=default_atol if atol is None else atol,
        max_steps=max_steps,
    )
    return OriginHandoff(
        params=eqx.combine(state_s, static),
        time=time,
        defect=defect,
        scale=lam,
        rescaled_time=tau_s,
        order=term.order,
        term=term,
        result=result,
        stats=dict(h_steps=steps),
    )


def _sigma_at(records, order, target):
    """σ̂ at which the polar solve's clock t̂ reaches `target`, from its steps (σ̂, log r, t̂):
    inside the step that brackets it, log u = −(k−2) log r is taken linear in σ̂, so that
    t̂(σ̂) = t̂_a + (u_a/b)(e^{b(σ̂−σ̂_a)} − 1) inverts in closed form (exact for k = 2 and
    along an aligned tail, where log u is linear)."""
    sig, log_r, t_hat = records
    n = jnp.sum(jnp.isfinite(sig))
    j = jnp.clip(jnp.searchsorted(t_hat, target), 1, jnp.maximum(n - 1, 1))
    sa, sb = sig[j - 1], sig[j]
    la, lb = -(order - 2) * log_r[j - 1], -(order - 2) * log_r[j]
    b = (lb - la) / jnp.where(sb > sa, sb - sa, 1.0)
    x = (target - t_hat[j - 1]) * jnp.exp(-la)
    small = jnp.abs(b * x) < 1e-8
    # b·x ≤ −1: the step's linear law never reaches the target (clipped to its end below).
    bx = jnp.maximum(jnp.where(small, 0.0, b * x), -1.0 + 1e-15)
    ds = jnp.where(small, x, jnp.log1p(bx) / jnp.where(small, 1.0, b))
    return jnp.clip(sa + ds, sa, sb)


@eqx.filter_jit
def rescaled_h_path(
    term: TaylorTerm, lam, tau_s, state0, dt, used, records, rtol, atol
):
    """θ(t₀ + dt) for elapsed times dt ≤ t_s by Lemma 13: λ·Γ_H(λ^{k−2}·dt, u₀), states stacked
    along a leading axis, and the solve's result; only the rows where `used` holds are computed
    (the others are placeholders).

    Near a k > 2 blow-up τ cannot be resolved in float (τ_s = T − O(λ^{k−2})), so the states
    come from the polar solve at the σ̂ where its clock reaches each τ (`_sigma_at`), moved by
    the residual time along −∇H (first order: the residual is that of the within-step
    inversion)."""
    k = term.order
    polar, w0, _, unravel = polar_h_flow(term.H, k, state0)
    tau = jnp.clip(dt * jnp.exp((k - 2) * jnp.log(lam)), 0.0, tau_s)
    target = tau * polar.scale
    sigma = jax.vmap(lambda t: _sigma_at(records, k, t))(target)
    sigma_s = jnp.max(jnp.where(jnp.isfinite(records[0]), records[0], -jnp.inf))
    # The solve stops at the last used save. When those are the saves before t_s, at tiny λ
    # that skips most of the clock, which the log(1/λ) growth of r from 1 to R_s/λ fills while
    # τ stays within λ^{k−2} of τ_s.
    horizon = jnp.maximum(jnp.max(jnp.where(used, sigma, 0.0)), 1e-9 * sigma_s)
    sigma = jnp.minimum(sigma, horizon)
    saveat = diffrax.SaveAt(ts=sigma, fn=lambda s, y, args: (polar.unit_state(y), y[2]))
    sol = polar.solve(w0, horizon, saveat, None, rtol, atol, 100_000)
    v, t_hat = sol.ys
    residual = (target - t_hat) / polar.scale  # τ still to go from each saved state
    v = v - residual[:, None] * jax.vmap(jax.grad(polar.H))(v)
    return jax.vmap(unravel)(lam * v), RESULTS.promote(sol.result)
