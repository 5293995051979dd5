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
from optax.tree_utils import tree_add_scale, tree_scale
from optimistix import two_norm

from .._results import RESULTS
from .._trainable import split_trainable
from .._vector_field import GradientField
from ..theory._h_flow import solve_h_flow
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
    return two_norm(tree_add_scale(g_l, -1.0, g_h)) / two_norm(g_h)


def origin_term(loss: Callable, state0) -> TaylorTerm:
    """The leading Taylor term of `loss` at the origin of the trainable state (not jittable:
    it reads the order from concrete derivatives); a ValueError unless the origin is critical."""
    term = taylor_term(loss, jax.tree_util.tree_map(jnp.zeros_like, state0))
    if term.order < 2:
        raise ValueError(
            "`origin_defect` / `origin_handoff` need the origin to be a critical point of the "
            f"objective (leading Taylor order k ≥ 2), found k = {term.order}: there is nothing "
            "to skip."
        )
    return term


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

    **Returns:** (θ(t_s) as a trainable state, t_s, ε there, λ, τ_s, H-flow steps, result).
    """
    H, k = term.H, term.order
    lam = two_norm(state0)
    u0 = tree_scale(1.0 / lam, state0)

    def cond_fn(t, y, args, **kwargs):
        return _relative_defect(loss, H, tree_scale(lam, y)) / defect_tol - 1.0

    event = diffrax.Event(cond_fn, root_finder=optx.Newton(rtol=1e-12, atol=1e-10))
    sol = solve_h_flow(
        H,
        u0,
        max_time,
        saveat=diffrax.SaveAt(t1=True),
        event=event,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
    )
    fired = sol.result == diffrax.RESULTS.event_occurred
    already = _relative_defect(loss, H, state0) >= defect_tol  # θ₀ is past it: skip nothing
    u_s = jax.tree_util.tree_map(lambda x: x[-1], sol.ys)
    state_s = jax.tree_util.tree_map(
        lambda a, b: jnp.where(already, a, b), state0, tree_scale(lam, u_s)
    )
    tau_s = jnp.where(already, 0.0, sol.ts[-1])
    result = RESULTS.where(
        already | fired,
        RESULTS.successful,
        RESULTS.where(
            sol.result == diffrax.RESULTS.max_steps_reached,
            RESULTS.max_steps_reached,
            RESULTS.origin_not_left,
        ),
    )
    defect = _relative_defect(loss, H, state_s)
    return state_s, tau_s / lam ** (k - 2), defect, lam, tau_s, sol.stats["num_steps"], result


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

    **Returns:** an `OriginHandoff` (its `result` says whether it succeeded); continue with
    `gradient_flow(objective, ho.params, t1, t0=ho.time)`, or use `gradient_flow(...,
    origin_defect=...)`, which does both and fills the save times before t_s from the H-flow.
    """
    if not defect_tol > 0:
        raise ValueError(f"`defect_tol` must be positive, got {defect_tol}.")
    state0, static = split_trainable(params0, trainable)
    loss = GradientField(objective, static).loss
    term = origin_term(loss, state0)
    dtype = two_norm(state0).dtype
    state_s, time, defect, lam, tau_s, steps, result = handoff(
        loss,
        term,
        state0,
        jnp.asarray(defect_tol, dtype),
        max_time=jnp.asarray(max_time, dtype),
        rtol=rtol,
        atol=atol,
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


@eqx.filter_jit
def rescaled_h_path(term: TaylorTerm, lam, tau_s, state0, dt, rtol=1e-10, atol=1e-12):
    """θ(t₀ + dt) for elapsed times dt ≤ t_s by Lemma 13: λ·Γ_H(λ^{k−2}·dt, u₀), states stacked
    along a leading axis (dt clipped to [0, t_s − t₀]), and the solve's result."""
    tau = jnp.clip(dt * lam ** (term.order - 2), 0.0, tau_s)
    u0 = tree_scale(1.0 / lam, state0)
    sol = solve_h_flow(
        term.H,
        u0,
        jnp.maximum(tau_s, jnp.max(tau)),
        saveat=diffrax.SaveAt(ts=tau),
        rtol=rtol,
        atol=atol,
    )
    return tree_scale(lam, sol.ys), RESULTS.promote(sol.result)
