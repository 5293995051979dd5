"""Initialisation scales: the three conventions of the papers and conversions between them.

SPEC §1. All three describe a Gaussian draw whose entries have standard deviation σ:

- Jacot §5: θ₀ = α·θ̃, with θ̃ a fixed unit-scale draw of entry scale σ̃ (so σ = α·σ̃);
- Jacot §3: σ² = w^{−γ} for every entry (γ < 1 lazy/NTK, γ = 1 mean-field, γ > 1 saddle-to-saddle);
- Chen, Luo & Wang: σ = m^{−α_CL} for a two-layer net of width m (α_CL > 1/2 is "small").

Hence α = w^{−γ/2}/σ̃ = m^{−α_CL}/σ̃, and γ = −2 log(α σ̃)/log w. Sweeps are written in α; the
functions below turn the other two conventions into α for a given base draw.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._validate import check_real


def scale(params, alpha):
    """θ₀ = α·θ̃: multiply every inexact array of `params` by `alpha` (Jacot §5; SPEC §1).

    `alpha` may be a traced scalar, so that sweeps over α do not retrace; a concrete one must be
    a positive finite real number, small enough that α·θ̃ is finite (ValueError otherwise: θ₀
    with ∞ or NaN entries has no flow).
    """
    if isinstance(alpha, jax.core.Tracer):
        return _scaled(params, alpha)
    alpha = check_real("alpha", alpha, low=0.0, low_open=True)
    scaled = _scaled(params, alpha)
    for before, after in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(scaled)):
        if eqx.is_inexact_array(after) and not isinstance(after, jax.core.Tracer):
            if not np.all(np.isfinite(after)) and np.all(np.isfinite(before)):
                raise ValueError(
                    f"`alpha` = {alpha:g} overflows {after.dtype} (the largest entry of θ̃ is "
                    f"{float(np.max(np.abs(before))):.3g}): θ₀ = α·θ̃ would be infinite."
                )
    return scaled


def _scaled(params, alpha):
    return jax.tree_util.tree_map(lambda x: alpha * x if eqx.is_inexact_array(x) else x, params)


def _positive(name, value):
    if not value > 0:
        raise ValueError(f"`{name}` must be positive, got {value}.")


def gamma_std(width: int, gamma: float) -> float:
    """σ = w^{−γ/2}, the entry scale of Jacot's regime parameter γ (SPEC §1, §8)."""
    _positive("width", width)
    return float(width) ** (-gamma / 2)


def clw_std(width: int, alpha_cl: float) -> float:
    """σ = m^{−α_CL}, Chen–Luo–Wang's two-layer initialisation (SPEC §10)."""
    _positive("width", width)
    return float(width) ** (-alpha_cl)


def alpha_from_std(std: float, base_std: float) -> float:
    """The multiplier α with α·σ̃ = σ, for a base draw of entry scale σ̃ = `base_std`."""
    _positive("std", std)
    _positive("base_std", base_std)
    return std / base_std


def alpha_from_gamma(width: int, gamma: float, base_std: float) -> float:
    """α = w^{−γ/2}/σ̃: Jacot's γ as a multiplier of a base draw of scale σ̃."""
    return alpha_from_std(gamma_std(width, gamma), base_std)


def gamma_from_alpha(width: int, alpha: float, base_std: float) -> float:
    """γ = −2 log(α σ̃)/log w, the inverse of `alpha_from_gamma`."""
    _positive("alpha", alpha)
    _positive("base_std", base_std)
    if width <= 1:
        raise ValueError(f"`width` must exceed 1 for γ to be defined, got {width}.")
    return -2.0 * math.log(alpha * base_std) / math.log(width)


def alpha_from_clw(width: int, alpha_cl: float, base_std: float) -> float:
    """α = m^{−α_CL}/σ̃: Chen–Luo–Wang's exponent as a multiplier of a base draw of scale σ̃."""
    return alpha_from_std(clw_std(width, alpha_cl), base_std)


def entry_std(params) -> jax.Array:
    """Root-mean-square of all inexact entries of `params` (the empirical σ of a draw)."""
    leaves = [x for x in jax.tree_util.tree_leaves(params) if eqx.is_inexact_array(x)]
    total = sum(jnp.sum(x**2) for x in leaves)
    count = sum(x.size for x in leaves)
    return jnp.sqrt(total / count)
