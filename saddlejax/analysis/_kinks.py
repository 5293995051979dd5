"""First-order descent across a kink near a critical point of a piecewise-smooth loss (ReLU
nets): the point is a critical point of its own smooth piece, but a neighbouring piece, a
short distance away, falls at a rate that does not vanish with that distance. A flow that
arrives farther off the point than that distance passes it in O(1) time instead of resting on
a plateau; the α → 0 limit, whose arrival is exact, rests there.

The probe is gradient sampling (Burke, Lewis & Overton, SIAM J. Optim. 15, 2005): ∇L at
points ϑ + rξ, ξ random on the unit sphere, for radii r from `r_min` to `r_max` (relative to
‖ϑ‖). Where ϑ + rξ lies across a kink, ∇L there is the other piece's gradient g, of a size that
does not shrink with r, and −g points into that piece if the flow goes on into it. So each
sampled g with a remainder ‖g − ∇L(ϑ) − r∇²L(ϑ)ξ‖ above half its size (not the Taylor
expansion of the smooth piece) gives a candidate direction v = −g/‖g‖, which is kept where
L(ϑ + sv) − L(ϑ) ≤ −‖g‖s/4 at distances s ≤ ‖g‖/(4 max|λ(∇²L)|), where no quadratic model at
ϑ can fall that far, and falls linearly there (Δ(2s)/Δ(s) in [1.5, 3]: a cubic term would
give 8).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._validate import check_int, check_key, check_real


class KinkDescent(eqx.Module):
    """A first-order descent across a kink near ϑ (`kink_descent`).

    **Fields:**

    - `distance`: the shortest distance s₀ from ϑ, over the directions found, at which
        L(ϑ + s₀v) = L(ϑ) again (past the kink, L falls): an upper bound on how close to ϑ the
        descending kink lies.
    - `direction`: that v (unit, flat over the parameters).
    - `slope`: −dL/ds along v past the kink, measured (‖g‖ of the piece entered, about).
    - `n_found`: how many of the sampled gradients gave such a direction.
    """

    distance: float
    direction: Array
    slope: float
    n_found: int


@eqx.filter_jit
def _loss(f, y):
    return f(y)


@eqx.filter_jit
def _grad(f, y):
    return jax.grad(f)(y)


@eqx.filter_jit
def _hvp(f, x, v):
    return jax.jvp(jax.grad(f), (x,), (v,))[1]


def _bisect_zero(delta, lo: float, hi: float, iters: int = 40) -> float:
    """s in [lo, hi] with Δ(s) = 0, Δ(lo) ≥ 0 > Δ(hi), by bisection in log s."""
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if delta(mid) < 0:
            hi = mid
        else:
            lo = mid
    return hi


def kink_descent(
    f,
    x: Array,
    *,
    key: PRNGKeyArray,
    scale: float | None = None,
    r_min: float = 1e-9,
    r_max: float = 1e-2,
    n_radii: int = 8,
    n_dirs: int = 8,
) -> KinkDescent | None:
    """A kink near the critical point `x` of `f` across which f falls at first order, or None
    (module docstring).

    **Arguments:**

    - `f`: L as a function of a flat parameter vector; `x`: ϑ (‖∇L(ϑ)‖ ≈ 0, ϑ ≠ 0).
    - `key`: PRNG key of the probe directions.
    - `scale`: max|λ(∇²L(ϑ))| if known (else estimated from the probes' HVPs).
    - `r_min`, `r_max`, `n_radii`: the probe radii, geometric, relative to ‖ϑ‖.
    - `n_dirs`: random directions per radius.

    **Returns:** a `KinkDescent`, or None where no sampled gradient gives a first-order
    descent (a smooth loss near ϑ, to the probes' resolution).
    """
    r_min = check_real("r_min", r_min, low=0.0, high=1.0, low_open=True, high_open=True)
    r_max = check_real("r_max", r_max, low=r_min, high=1.0, low_open=True, high_open=True)
    n_radii, n_dirs = check_int("n_radii", n_radii), check_int("n_dirs", n_dirs)
    key = check_key("key", key)
    x = jnp.asarray(x)
    norm = float(jnp.linalg.norm(x))
    if not norm > 0:
        raise ValueError("`x` is 0: the probe radii are relative to ‖x‖; pass a point ≠ 0.")
    grad = lambda y: _grad(f, y)  # noqa: E731
    hvp = lambda v: _hvp(f, x, v)  # noqa: E731
    loss = lambda y: _loss(f, y)  # noqa: E731
    g0 = grad(x)
    l0 = float(loss(x))
    radii = norm * np.geomspace(r_min, r_max, n_radii)
    xis = jr.normal(key, (n_radii, n_dirs, x.size), x.dtype)
    xis = xis / jnp.linalg.norm(xis, axis=-1, keepdims=True)
    hx = [[hvp(xi) for xi in row] for row in xis]
    lam = scale if scale is not None else max(float(jnp.linalg.norm(h)) for row in hx for h in row)
    best, n_found = None, 0
    for r, row, hrow in zip(radii, xis, hx):
        for xi, h in zip(row, hrow):
            g = grad(x + r * xi)
            size = float(jnp.linalg.norm(g))
            if not size > 0 or float(jnp.linalg.norm(g - g0 - r * h)) <= 0.5 * size:
                continue  # the smooth piece's own expansion: no kink crossed
            v = -g / size
            delta = lambda s, v=v: float(loss(x + s * v)) - l0  # noqa: E731
            s_max = min(0.25 * size / lam if lam > 0 else math.inf, r_max * norm)
            found = None
            for s in np.geomspace(r, 100 * r, 5):
                if s > s_max:
                    break
                d1, d2 = delta(s), delta(2 * s)
                if d1 <= -0.25 * size * s and 1.5 <= d2 / d1 <= 3.0:
                    found = s
                    break
            if found is None:
                continue
            n_found += 1
            lo, d_lo = found, d1  # back off from `found` until L is not below L(ϑ)
            while lo > 1e-3 * r and d_lo < 0:
                lo *= 0.1
                d_lo = delta(lo)
            s0 = found if d_lo < 0 else _bisect_zero(delta, lo, found)
            slope = (d1 - d2) / found
            if best is None or s0 < best[0]:
                best = (s0, v, slope)
    if best is None:
        return None
    return KinkDescent(float(best[0]), best[1], float(best[2]), n_found)
