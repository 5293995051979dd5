"""Alignment of deep linear networks modulo their symmetries: per-hidden-layer rotations by
orthogonal Procrustes (SPEC §2). The rotation itself, `rotate_hidden`, lives with the other
symmetries in `saddlejax.models` and is re-exported here."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..models._symmetries import rotate_hidden as rotate_hidden


def _as_list(weights):
    return [jnp.asarray(w) for w in weights]


def procrustes_rotations(source: Sequence[Array], target: Sequence[Array], *, sweeps: int = 20):
    """Orthogonal O_1, …, O_{L−1} (one per hidden layer) minimising
    Σ_t Σ_ℓ ‖O_ℓ W_ℓ(t) O_{ℓ−1}ᵀ − V_ℓ(t)‖² (O_0 = O_L = I) — the DLN symmetry of SPEC §2.

    Block-coordinate descent: each O_ℓ, the others fixed, is an orthogonal Procrustes problem
    max tr(O_ℓ M_ℓ), solved by the SVD of M_ℓ; every update decreases the objective. It starts
    from a pass from the input side that uses only the layer into ℓ (exact for exactly rotated
    data when Σ_t W_ℓW_ℓᵀ has full rank), so that it does not start from a poor local optimum.

    **Arguments:** `source`, `target`: tuples (W_1, …, W_L) of stacked weights with a leading time
    axis (or without one), e.g. `FlowSolution.params` and `Path.xs`.

    **Returns:** the list of rotations [O_1, …, O_{L−1}].
    """
    source, target = _as_list(source), _as_list(target)
    if len(source) != len(target):
        raise ValueError(f"`source` and `target` have {len(source)} and {len(target)} layers.")
    if source[0].ndim == 2:
        source = [w[None] for w in source]
        target = [w[None] for w in target]
    return list(_procrustes(tuple(source), tuple(target), sweeps))


@eqx.filter_jit
def _procrustes(source, target, sweeps):
    depth = len(source)
    eye_in = jnp.eye(source[0].shape[-1], dtype=source[0].dtype)
    eye_out = jnp.eye(source[-1].shape[-2], dtype=source[-1].dtype)

    def sweep(rot, use_out=True):
        rot = list(rot)
        for ell in range(1, depth):
            o_prev = eye_in if ell == 1 else rot[ell - 2]
            m = jnp.einsum("tij,kj,tlk->il", source[ell - 1], o_prev, target[ell - 1])
            if use_out:
                o_next = eye_out if ell == depth - 1 else rot[ell]
                m = m + jnp.einsum("tji,kj,tkl->il", source[ell], o_next, target[ell])
            u, _, vt = jnp.linalg.svd(m)
            rot[ell - 1] = vt.T @ u.T
        return tuple(rot)

    init = sweep(tuple(jnp.eye(w.shape[-2], dtype=w.dtype) for w in source[:-1]), False)
    return jax.lax.fori_loop(0, sweeps, lambda _, r: sweep(r), init)
