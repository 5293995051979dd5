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

The flow of H escapes only if u₀ is not in the stable set of the origin; if the defect never
reaches `defect_tol` before `max_time` the handoff reports a failure, not a success.
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, PyTree, Scalar

from ._solution import RESULTS
from ._taylor import taylor_term
from ._trainable import split_trainable
from ._tree import tree_axpy, tree_norm, tree_scale


class OriginHandoff(eqx.Module):
    """Where the flow of L takes over from the rescaled flow of H (see the module docstring).

    **Fields:**

    - `params`: θ(t_s), the model with its trainable part replaced (same structure as θ₀).
    - `time`: t_s = τ_s / λ^{k−2}, the flow time of the handoff.
    - `defect`: ε at θ(t_s) (≤ `defect_tol` up to the root-finding tolerance; larger only if
        θ₀ itself was already past it, in which case nothing was skipped: `time` = 0).
    - `scale`: λ = ‖θ₀‖ (trainable part); `rescaled_time`: τ_s on the unit-scale H-flow.
    - `order`: k, the degree of H.
    - `h_steps`: steps of the unit-scale H-flow solve.
    - `term`: the `TaylorTerm` of L at the origin (on the trainable part); `term.H` is H.
    - `result`: `RESULTS.successful`, or the failure of the H-flow solve.
    """

    params: PyTree
    time: Scalar
    defect: Scalar
    scale: Scalar
    rescaled_time: Scalar
    order: int = eqx.field(static=True)
    h_steps: Array
    result: RESULTS
    term: object


def _relative_defect(loss, H, theta):
    g_l = jax.grad(loss)(theta)
    g_h = jax.grad(H)(theta)
    return tree_norm(tree_axpy(-1.0, g_h, g_l)) / tree_norm(g_h)


@eqx.filter_jit
def _unit_flow(loss, H, order, u0, lam, defect_tol, max_time, rtol, atol, max_steps):
    """The H-flow from the unit vector u0 until ε(λ·u·…) reaches defect_tol (root-found)."""

    def vf(tau, u, args):
        return jax.tree_util.tree_map(jnp.negative, jax.grad(H)(u))

    def cond_fn(t, y, args, **kwargs):
        return _relative_defect(loss, H, tree_scale(lam, y)) / defect_tol - 1.0

    event = diffrax.Event(cond_fn, root_finder=optx.Newton(rtol=1e-12, atol=1e-10))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Dopri8(),
        0.0,
        max_time,
        None,
        u0,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=event,
        max_steps=max_steps,
        throw=False,
    )
    fired = sol.result == diffrax.RESULTS.event_occurred
    u_s = jax.tree_util.tree_map(lambda x: x[-1], sol.ys)
    return u_s, sol.ts[-1], fired, sol.result, sol.stats["num_steps"]


def origin_handoff(
    objective: Callable,
    params0: PyTree,
    *,
    defect_tol: float = 1e-4,
    trainable=eqx.is_inexact_array,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_time: float = 1e8,
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
    - `rtol`, `atol`: tolerances of the unit-scale H-flow (Dopri8).
    - `max_time`: horizon of the unit-scale flow in τ (failure if the defect is never reached).

    **Returns:** an `OriginHandoff`; continue with
    `gradient_flow(objective, ho.params, t1, t0=ho.time)` (or `gradient_flow(...,
    origin_defect=...)`, which does both and fills the save times before t_s from the H-flow).
    """
    if not defect_tol > 0:
        raise ValueError(f"`defect_tol` must be positive, got {defect_tol}.")
    state0, static = split_trainable(params0, trainable)

    def loss(state):
        return objective(eqx.combine(state, static))

    zero = jax.tree_util.tree_map(jnp.zeros_like, state0)
    term = taylor_term(loss, zero)
    if term.order < 2:
        raise ValueError(
            "`origin_handoff` needs the origin to be a critical point of the objective "
            f"(leading Taylor order k ≥ 2), found k = {term.order}: there is nothing to skip."
        )
    H = term.H
    k = term.order
    lam = tree_norm(state0)
    u0 = tree_scale(1.0 / lam, state0)
    dtype = lam.dtype
    eps0 = _relative_defect(loss, H, state0)
    u_s, tau_s, fired, diffrax_result, steps = _unit_flow(
        loss,
        H,
        k,
        u0,
        lam,
        jnp.asarray(defect_tol, dtype),
        jnp.asarray(max_time, dtype),
        rtol,
        atol,
        max_steps,
    )
    already = eps0 >= defect_tol  # θ₀ itself is past the tolerance: skip nothing
    state_s = jax.tree_util.tree_map(
        lambda a, b: jnp.where(already, a, b), state0, tree_scale(lam, u_s)
    )
    tau_s = jnp.where(already, 0.0, tau_s)
    result = RESULTS.where(
        already | fired,
        RESULTS.successful,
        RESULTS.where(
            diffrax_result == diffrax.RESULTS.max_steps_reached,
            RESULTS.max_steps_reached,
            RESULTS.origin_not_left,
        ),
    )
    return OriginHandoff(
        params=eqx.combine(state_s, static),
        time=tau_s / lam ** (k - 2),
        defect=_relative_defect(loss, H, state_s),
        scale=lam,
        rescaled_time=tau_s,
        order=k,
        h_steps=steps,
        result=result,
        term=term,
    )


@eqx.filter_jit
def rescaled_h_path(term, handoff: OriginHandoff, state0, dt, rtol=1e-10, atol=1e-12):
    """θ(t₀ + dt) for elapsed times dt ≤ t_s by Lemma 13: λ·Γ_H(λ^{k−2}·dt, u₀) (an array of
    states stacked along a leading axis; dt clipped to [0, t_s − t₀])."""
    k, lam = handoff.order, handoff.scale
    tau = jnp.clip(dt * lam ** (k - 2), 0.0, handoff.rescaled_time)
    u0 = tree_scale(1.0 / lam, state0)

    def vf(t, u, args):
        return jax.tree_util.tree_map(jnp.negative, jax.grad(term.H)(u))

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Dopri8(),
        0.0,
        jnp.maximum(handoff.rescaled_time, jnp.max(tau)),
        None,
        u0,
        saveat=diffrax.SaveAt(ts=tau),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=100_000,
        throw=False,
    )
    return tree_scale(lam, sol.ys)
