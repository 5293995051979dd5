"""Alignment of deep linear networks modulo their symmetries: per-hidden-layer rotations by
orthogonal Procrustes (SPEC §2). The rotation itself, `rotate_hidden`, lives with the other
symmetries in `saddlejax.models` and is re-exported here."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..models._symmetries import balanced_dln, rotate_hidden as rotate_hidden
from ..nn import DeepLinear


def _as_list(weights):
    return [jnp.asarray(w) for w in weights]


def procrustes_rotations(source: Sequence[Array], target: Sequence[Array], *, sweeps: int = 20):
    """Orthogonal O_1, …, O_{L−1} (one per hidden layer) minimising
    Σ_t Σ_ℓ ‖O_ℓ W_ℓ(t) O_{ℓ−1}ᵀ − V_ℓ(t)‖² (O_0 = O_L = I) — the DLN symmetry of SPEC §2.

    Block-coordinate descent: each O_ℓ, the others fixed, is an orthogonal Procrustes problem
    max tr(O_ℓ M_ℓ), solved by the SVD of M_ℓ; every update decreases the objective. It runs
    from two starts and keeps the better: a pass from the input side that uses only the layer
    into ℓ (exact for exactly rotated data when Σ_t W_ℓW_ℓᵀ has full rank), and the identity
    (for two points of one orbit that are already close, or rank-deficient layers).

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

    def misfit(rot):
        full = (eye_in, *rot, eye_out)
        return sum(
            jnp.sum((jnp.einsum("ij,tjk,lk->til", full[i + 1], w, full[i]) - v) ** 2)
            for i, (w, v) in enumerate(zip(source, target))
        )

    # Two starts, the better kept: the input-side pass, and no rotation (where a layer has
    # fewer rows than the next layer's units the input-side pass leaves a direction to chance,
    # and descent from it can stall on a reflection; from the identity it reaches the exact
    # inverse of a rotation of a random 4-5-5-4 net that the other start misses by 0.55).
    identity = tuple(jnp.eye(w.shape[-2], dtype=w.dtype) for w in source[:-1])
    found = [jax.lax.fori_loop(0, sweeps, lambda _, r: sweep(r), start)
             for start in (sweep(identity, False), identity)]
    better = misfit(found[1]) < misfit(found[0])
    return tuple(jnp.where(better, b, a) for a, b in zip(*found))


def has_gauge(model) -> bool:
    """Whether `gauge_aligned` knows `model`'s continuous symmetries (`DeepLinear`)."""
    return isinstance(model, DeepLinear)


def gauge_aligned(model, reference, *, sweeps: int = 200):
    """`model` moved along its symmetry orbit to the point nearest `reference`: for a
    `DeepLinear`, rotated by the `procrustes_rotations` between the two.

    The gauge in which two nearby critical points of one continuum compare as vectors: a DLN's
    later saddles lie on orbits of these rotations (Jacot et al. §4), and two flows that reach
    "the same" saddle may reach it rotated by O(1) while they differ by O(α) across the orbit.
    `sweeps`: of block-coordinate descent. At a deep linear net's rank-1 saddles (width 10)
    the squared distance settled to 1e−11 of itself within 100 sweeps from the identity, while
    the rotations that fix `reference` (of hidden units it does not use) kept moving."""
    if not has_gauge(model):
        raise ValueError(
            f"`model` must be a net with known continuous symmetries (`DeepLinear`), got a "
            f"{type(model).__name__}."
        )
    if not isinstance(reference, DeepLinear) or reference.widths != model.widths:
        raise ValueError("`reference` must be a `DeepLinear` of `model`'s widths.")
    return rotate_hidden(model, procrustes_rotations(model.weights, reference.weights,
                                                     sweeps=sweeps))


def balanced_representative(model, *, rtol: float = 1e-9):
    """The balanced `DeepLinear` with `model`'s end-to-end matrix A (at its numerical rank:
    singular values above `rtol`·σ₁), rotated onto `model` (`gauge_aligned`).

    A DLN's loss depends on A alone, so its critical points come in orbits of GL(n_ℓ) acting on
    the hidden layers, and the flow, which conserves the balancedness W_{ℓ+1}ᵀW_{ℓ+1} − W_ℓW_ℓᵀ,
    reaches the balanced point of an orbit as α → 0 (balancedness α²·D(θ̃)). A critical point
    polished elsewhere on its orbit is as critical, but the flows near it are not those near the
    balanced one: 1.6e−6 along the orbit moved a later plateau by 0.6 % at α = 1e−4 (the part
    that sets it is 6e−4)."""
    if not isinstance(model, DeepLinear):
        raise ValueError(f"`model` must be a `DeepLinear`, got a {type(model).__name__}.")
    a = np.asarray(model.matrix())
    sv = np.linalg.svd(a, compute_uv=False)
    rank = max(int(np.sum(sv > rtol * sv[0])), 1)
    weights = balanced_dln(a, model.widths, rank=rank)
    return gauge_aligned(eqx.tree_at(lambda m: m.weights, model, weights), model)
