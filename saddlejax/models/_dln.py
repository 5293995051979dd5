"""Closed forms for deep linear networks at the origin (Jacot et al. §4–5; SPEC §4, §5).

With G = ∇C(0) and singular triplets (σ_i, u_i, v_i) of G, the leading Taylor term at the origin is
H(θ) = Tr[Gᵀ A_θ] (order k = L, next order m = 2L), and the escape directions are

    ρ = (1/√L)(± u_i w_{L−1}ᵀ, w_{L−1} w_{L−2}ᵀ, …, w_1 v_iᵀ)      (listed from W_L down to W_1)

for unit vectors w_ℓ, with speeds s = ∓σ_i L^{−(L−2)/2}. The optimal one takes the minus sign
and i = 1: s* = L^{−(L−2)/2} σ_1 and A_{ρ*} = −L^{−L/2} u_1 v_1ᵀ, so H(ρ*) = −s*/L < 0.
"""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from ..nn import DeepLinear
from ..nn._layers import check_widths, matrix_chain


class DLNEscapeDirection(eqx.Module):
    """One closed-form escape direction of a DLN (SPEC §5).

    **Fields:** `weights` (W_1, ..., W_L) on the unit sphere; `speed` s (negative when H(ρ) > 0:
    the flow does not escape along it); `index`, the singular triplet; `sign`, the sign of the
    u-factor.
    """

    weights: tuple[Array, ...]
    speed: Scalar
    index: int = eqx.field(static=True)
    sign: int = eqx.field(static=True)


class _DLNTaylorTerm(eqx.Module):
    g: Float[Array, "n_out n_in"]

    def __call__(self, weights) -> Scalar:
        return jnp.sum(self.g * matrix_chain(weights))


def dln_taylor_term(g: Float[Array, "n_out n_in"]):
    """H(θ) = Tr[Gᵀ A_θ] as a function of the weights (W_1, ..., W_L) (SPEC §4).

    H is a pytree (its leaf is G): solvers compiled for one G are reused for another of the same
    shape.
    """
    return _DLNTaylorTerm(g)


def dln_optimal_speed(g: Float[Array, "n_out n_in"], depth: int) -> Array:
    """s* = L^{−(L−2)/2} σ_1(G) (SPEC §5)."""
    return depth ** (-(depth - 2) / 2) * jnp.linalg.svd(g, compute_uv=False)[0]


def dln_speeds(g: Float[Array, "n_out n_in"], depth: int) -> Array:
    """All escape speeds ±σ_i L^{−(L−2)/2}, sorted decreasing (escaping ones first)."""
    s = depth ** (-(depth - 2) / 2) * jnp.linalg.svd(g, compute_uv=False)
    return jnp.concatenate([s, -s[::-1]])


def dln_escape_direction(
    g: Float[Array, "n_out n_in"],
    widths: Sequence[int],
    index: int = 0,
    sign: int = -1,
    hidden_unit: int = 0,
) -> DLNEscapeDirection:
    """The closed-form escape direction for singular triplet `index` and sign of u (SPEC §5).

    The hidden vectors w_ℓ are the basis vector e_{hidden_unit}: the width-1 direction
    R I^{(1→w)}(…) of Jacot et al. with R = identity. `sign=-1, index=0` gives ρ*.

    **Arguments:**

    - `g`: G = ∇C(0), shape (n_L, n_0) (see `matrix_cost_gradient_at_zero`).
    - `widths`: (n_0, ..., n_L) of the network.
    - `index`, `sign`: which singular triplet, and ±.
    - `hidden_unit`: the hidden neuron that carries the direction.
    """
    widths = check_widths(widths, min_len=3)  # L ≥ 2: for L = 1 the origin is not critical
    depth = len(widths) - 1
    if g.shape != (widths[-1], widths[0]):
        raise ValueError(
            f"`g` must have shape (n_L, n_0) = {(widths[-1], widths[0])}, got {g.shape}."
        )
    if sign not in (-1, 1):
        raise ValueError(f"`sign` must be -1 or +1, got {sign}.")
    u, s, vt = jnp.linalg.svd(g)
    if not 0 <= index < s.size:
        raise ValueError(f"`index` must lie in [0, {s.size}), got {index}.")
    if any(not 0 <= hidden_unit < w for w in widths[1:-1]):
        raise ValueError(f"`hidden_unit` must be below every hidden width {widths[1:-1]}.")
    c = depth**-0.5
    weights = []
    for ell in range(depth):
        n_in, n_out = widths[ell], widths[ell + 1]
        left = u[:, index] * sign if ell == depth - 1 else jnp.zeros(n_out).at[hidden_unit].set(1)
        right = vt[index] if ell == 0 else jnp.zeros(n_in).at[hidden_unit].set(1)
        weights.append(c * jnp.outer(left, right))
    speed = -sign * depth ** (-(depth - 2) / 2) * s[index]
    return DLNEscapeDirection(tuple(weights), speed, index, sign)


def dln_image_init(
    widths: Sequence[int], *, key: PRNGKeyArray, std: float | None = None
) -> tuple[Array, ...]:
    """θ̃, the `base` of `simulation_distances`: the weights of
    `DeepLinear(widths, key=key, std=std)`."""
    return tuple(DeepLinear(widths, key=key, std=std).weights)
