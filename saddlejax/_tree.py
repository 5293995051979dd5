"""Pytree arithmetic used throughout: inner products and norms that are safe at zero."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Scalar


def tree_dot(a, b) -> Scalar:
    """⟨a, b⟩ = Σ over leaves of Σ a·b (the Euclidean inner product of the flattened pytrees)."""
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(leaves, start=jnp.zeros(()))


def safe_sqrt(sq: Array) -> Array:
    """√sq with a zero (not NaN) derivative at sq = 0, by the double `where` of lineax's
    `two_norm`: norms are taken at the origin, the point we study most."""
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def tree_norm(a) -> Scalar:
    """‖a‖, with a zero (not NaN) derivative at a = 0."""
    return safe_sqrt(tree_dot(a, a))


def tree_size(a) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(a))


def tree_rms(a) -> Scalar:
    return tree_norm(a) / jnp.sqrt(tree_size(a))


def tree_axpy(alpha, x, y):
    """α·x + y on pytrees."""
    return jax.tree_util.tree_map(lambda u, v: alpha * u + v, x, y)


def tree_scale(alpha, x):
    return jax.tree_util.tree_map(lambda u: alpha * u, x)


def tree_sub(x, y):
    return jax.tree_util.tree_map(lambda u, v: u - v, x, y)


def tree_index(tree, i):
    """The i-th entry along the leading axis of every array leaf."""
    return jax.tree_util.tree_map(lambda x: x[i] if eqx.is_array(x) else x, tree)


def tree_all_finite(tree) -> Array:
    arrays = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(x)]
    leaves = [jnp.all(jnp.isfinite(x)) for x in arrays]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
