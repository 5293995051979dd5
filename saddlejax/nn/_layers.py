"""Shared Gaussian initialisation of bias-free weight matrices."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._validate import check_key, check_real, describe
from ._kinks import leaky_relu

# The largest layer size accepted. Larger sizes fail inside JAX (beyond int64) or exhaust
# memory long before; a width of 2³¹ neurons is never meant.
MAX_WIDTH = 2**31 - 1


def default_std(widths: Sequence[int]) -> float:
    """The default entry scale w^{-1/2}, with w the largest hidden width (SPEC §1, γ = 1).

    For a network without hidden layers, w is the largest of the given sizes.
    """
    hidden = widths[1:-1] if len(widths) > 2 else widths
    return float(max(hidden)) ** -0.5


def check_widths(widths: Sequence[int], *, name: str = "widths", min_len: int = 2) -> tuple:
    """Validate a tuple of layer sizes (n_0, n_1, ..., n_L)."""
    try:
        widths = tuple(widths)
        ints = tuple(int(w) for w in widths)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"`{name}` must be a sequence of positive ints, got {widths!r}.") from e
    if any(w != i for w, i in zip(widths, ints)):
        # int(2.5) == 2 would silently build a different network.
        raise ValueError(f"every entry of `{name}` must be an integer, got {tuple(widths)}.")
    widths = ints
    if len(widths) < min_len:
        raise ValueError(
            f"`{name}` must list at least {min_len} sizes (input, ..., output), got {widths}."
        )
    if any(w <= 0 for w in widths):
        raise ValueError(f"every entry of `{name}` must be a positive int, got {widths}.")
    if any(w > MAX_WIDTH for w in widths):
        raise ValueError(
            f"every entry of `{name}` must be at most 2³¹ − 1 = {MAX_WIDTH}, got {widths}."
        )
    return widths


def check_std(std, n: int) -> tuple[float, ...]:
    """Broadcast `std` (a float or one float per layer) to n positive finite floats."""
    if isinstance(std, list | tuple) or (isinstance(std, np.ndarray | jax.Array) and std.ndim == 1):
        if len(std) != n:
            raise ValueError(
                f"`std` must be a float or a sequence of {n} floats, got {describe(std)}."
            )
        return tuple(check_real("std", s, low=0.0, low_open=True) for s in std)
    return (check_real("std", std, low=0.0, low_open=True),) * n


def gaussian_matrices(
    key: PRNGKeyArray, shapes: Sequence[tuple[int, int]], std: Sequence[float], dtype=None
) -> tuple[Array, ...]:
    """One N(0, std_ℓ²) matrix per shape, each from its own split of `key`."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    # A normal draw of the dtype stays within 10 standard deviations (inverse-CDF sampling of a
    # uniform bounded away from 0 and 1), so std·10 must be finite.
    largest = float(jnp.finfo(dtype).max) / 10
    if any(s > largest for s in std):
        raise ValueError(
            f"`std` = {max(std):g} overflows {jnp.dtype(dtype).name}: entries of the draw would "
            f"be infinite; use a `std` below {largest:.3g}."
        )
    keys = jr.split(check_key("key", key), len(shapes))
    return tuple(
        s * jr.normal(k, shape, dtype=dtype) for k, shape, s in zip(keys, shapes, std, strict=True)
    )


def matrix_chain(weights: Sequence[Array]) -> Array:
    """W_L ⋯ W_1 for weights given in the order (W_1, ..., W_L)."""
    out = weights[0]
    for w in weights[1:]:
        out = w @ out
    return out


# Beyond |u| = 40 the softplus equals max(u, 0) to rounding (e^{−40} ≈ 4e−18).
_SOFTPLUS_CUTOFF = 40.0


def _softplus(u: Array) -> Array:
    """log(1 + eᵘ) for |u| ≤ 40, without `jax.nn.softplus`'s custom jvp, through which Taylor
    mode (`jax.experimental.jet`) leaks tracers."""
    return jnp.where(u > 0, u + jnp.log1p(jnp.exp(-u)), jnp.log1p(jnp.exp(u)))


def smoothed_leaky_relu(
    w: Array, h: Array, negative_slope: float, smoothing: float, z_in: Array | None = None
) -> tuple[Array, Array]:
    """σ(w h) for a (leaky) ReLU σ whose kink is smoothed: max(zⱼ, 0) becomes
    bⱼ·softplus(zⱼ/bⱼ) with the width bⱼ = ε·sⱼ (ε = `smoothing`), z = w h, which exceeds it by
    at most log 2·bⱼ (at zⱼ = 0) and equals it to rounding where |zⱼ| ≥ 40·bⱼ (computed exactly
    there). **Returns:** (σ(z), z).

    sⱼ² = ‖wⱼ ⊙ h‖² + ε·ρ̄·‖wⱼ ⊙ z_in‖², where `z_in` are the pre-activations that produced h
    (None for the net's input: then sⱼ = ‖wⱼ ⊙ h‖) and ρ̄ = meanₖ hₖ²/(hₖ² + z_in,ₖ²) (½ for a
    live input, 0 for a dead one). Every term, wⱼₖhₖ, wⱼₖz_in,ₖ and hₖ/z_in,ₖ, is unchanged or
    scales as zⱼ under the rescalings of layers and of single neurons, so the net keeps its
    homogeneity and rescaling symmetries (and their conserved balancedness), and its gradient
    flow is smooth: where the exact flow slides along a kink (zⱼ held at 0 from both sides, a
    Filippov sliding mode with no classical solution, on which adaptive steps collapse), the
    smoothed flow follows a stiff slow manifold, and it converges to the sliding (Filippov)
    flow, the η → 0 limit of gradient descent, as ε → 0 (Filippov, *Differential equations
    with discontinuous righthand sides*, 1988, §2.4; Sotomayor & Teixeira's regularisation,
    1996). Why the second term: a sample that reaches unit j through one live input k has
    ‖wⱼ ⊙ h‖ = |wⱼₖhₖ| = |zⱼ|, so with the first term alone |zⱼ|/bⱼ = 1/ε and the kink crossed
    when wⱼₖ changes sign stays exact (it stalled flows); the dead inputs' pre-activations keep
    bⱼ > 0 there, and their weight ε leaves the band of an ordinary unit nearly as it was
    (with weight 1 the optimal escape directions' KKT residuals stalled at 1.5e−4 … 1e−1 on 4
    of 10 random nets, benchmarks/README.md). ρ̄ = 0 where every input is dead: zⱼ ≡ 0 has no
    kink to cross, and σ stays exactly 0, with no ε-sized force on wⱼ. A C^∞ softplus rather
    than a polynomial ramp that is exact outside a band: a flow that grazes such a band's edge,
    where the ramp's higher derivatives jump, stalled the solvers. Where s²ⱼ underflows (every
    term below ≈ 1e−154) σ is exact.
    """
    z = w @ h
    ww, hh = w * w, h * h
    sq = ww @ hh
    if z_in is not None:
        zz = z_in * z_in
        hz = hh + zz
        live = jnp.where(hz > 0, hh / jnp.where(hz > 0, hz, 1.0), 0.0)
        sq = sq + smoothing * jnp.mean(live) * (ww @ zz)
    pos = sq > 0
    width = jnp.where(pos, smoothing * jnp.sqrt(jnp.where(pos, sq, 1.0)), 1.0)
    inside = pos & (jnp.abs(z) < _SOFTPLUS_CUTOFF * width)
    u = jnp.where(inside, z / width, 0.0)  # no overflow, in the value or its derivative
    smooth = negative_slope * z + (1.0 - negative_slope) * width * _softplus(u)
    return jnp.where(inside, smooth, leaky_relu(z, negative_slope)), z
