"""Numerical ranks of end-to-end matrices (SPEC §8, Conjecture 3: the rank grows by one at each
saddle a DLN visits)."""

import jax.numpy as jnp
from jaxtyping import Array, Float


def numerical_rank(a: Float[Array, "... m n"], tol: float = 0.1) -> Array:
    """Number of singular values above `tol` (Jacot et al. App. A use tol = 0.1; Fig. 6 1e−4).

    Batched over leading axes.
    """
    if not tol > 0:
        raise ValueError(f"`tol` must be positive, got {tol}.")
    return jnp.sum(jnp.linalg.svd(a, compute_uv=False) > tol, axis=-1)
