"""The gradient flow of a Taylor term H, dθ/dt = −∇H(θ), and its exact rescaling
Γ_H(t, λθ₀) = λΓ_H(λ^{k−2}t, θ₀) (Jacot et al. Lemma 13; SPEC §4).

One integrator for every H-flow in saddlejax (the origin handoff, the Lemma 13 check): Dopri8
under PID control at tight tolerances, since these flows are references for the flow of L.
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
from jaxtyping import Array, PyTree
from optax.tree_utils import tree_add_scale, tree_scale
from optimistix import two_norm

from .._vector_field import GradientField
from ._taylor import _params


@eqx.filter_jit
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
    """The diffrax solve of the H-flow from θ₀ on [0, t1] (`throw=False`: read `result`)."""
    return diffrax.diffeqsolve(
        diffrax.ODETerm(GradientField(H)),
        diffrax.Dopri8(),
        0.0,
        t1,
        None,
        theta0,
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=event,
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
