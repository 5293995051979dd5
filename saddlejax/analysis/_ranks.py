"""Trajectory diagnostics: numerical ranks and plateaus of the loss (SPEC §8, Conjecture 3)."""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def numerical_rank(a: Float[Array, "... m n"], tol: float = 0.1) -> Array:
    """Number of singular values above `tol` (Jacot et al. App. A use tol = 0.1; Fig. 6 1e−4).

    Batched over leading axes.
    """
    if not tol > 0:
        raise ValueError(f"`tol` must be positive, got {tol}.")
    return jnp.sum(jnp.linalg.svd(a, compute_uv=False) > tol, axis=-1)


class Plateau(NamedTuple):
    """A stretch [start, end] of save times where the loss stays near `level`."""

    start: float
    end: float
    level: float


def find_plateaus(
    ts: Float[Array, " n"],
    loss: Float[Array, " n"],
    *,
    rel_band: float = 0.05,
    min_fraction: float = 0.03,
    floor: float = 1e-3,
) -> list[Plateau]:
    """Plateaus of a loss curve: maximal runs of save times whose loss stays within a relative
    band `rel_band` of the run's first value, lasting at least `min_fraction` of the time span.
    Runs below `floor` × the initial loss are the approach to a minimum, not saddles, and are
    left out.

    Saddle-to-saddle dynamics (Conjecture 3) show as a staircase: a plateau at each saddle
    visited (the first at the origin), separated by fast drops. Inputs are one trajectory's
    `sol.ts` and `sol.loss` (numpy or JAX arrays); non-finite entries (after an event) are
    ignored. The result is a list, so this runs outside `jit`.
    """
    ts = np.asarray(ts, dtype=float)
    loss = np.asarray(loss, dtype=float)
    keep = np.isfinite(ts) & np.isfinite(loss)
    ts, loss = ts[keep], loss[keep]
    if ts.size < 2:
        return []
    span = ts[-1] - ts[0]
    out, i = [], 0
    while i < ts.size:
        level = loss[i]
        j = i
        while j + 1 < ts.size and abs(loss[j + 1] - level) <= rel_band * abs(level):
            j += 1
        if ts[j] - ts[i] >= min_fraction * span and level >= floor * loss[0]:
            out.append(Plateau(float(ts[i]), float(ts[j]), float(np.mean(loss[i : j + 1]))))
        i = j + 1
    return out
