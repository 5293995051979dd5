"""Invariants of network symmetries, to tell escape directions apart modulo those symmetries
(SPEC §2, §5): the end-to-end matrix of a DLN (invariant under rotations of the hidden layers,
Jacot et al. §2) and the sorted neurons of a separable network (invariant under permutations).
Pass them as `invariant=` to `optimal_escape`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..nn import end_to_end_matrix


def dln_invariant(weights) -> Float[Array, "n_out n_in"]:
    """A_ρ = W_L ⋯ W_1: invariant under the DLN rotations (SPEC §2)."""
    return end_to_end_matrix(weights)


def neuron_invariant(neurons) -> Array:
    """Rows sorted lexicographically: invariant under hidden-unit permutations of a separable
    network whose parameters are one row per neuron (e.g. `SquaredReLU.w`)."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(neurons, eqx.is_inexact_array))
    mat = jnp.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)
    return mat[jnp.lexsort(mat.T[::-1])]
