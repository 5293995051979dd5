"""Second-order information at escape directions and strict saddles (SPEC §5).

- Jacot et al. Prop. 14: if every non-optimal escape direction ρ has some v ⊥ ρ with
  vᵀ∇²H(ρ)v < −s*‖v‖², almost every initialisation escapes along an optimal direction
  (`strictness_test`).
- At a strict saddle (k = 2) the most negative Hessian eigenpairs are the fastest escape
  directions (`hessian_negative_eigenpairs`).

Both probe the (restricted) Hessian matrix-free with LOBPCG on Hessian-vector products
(`jax.experimental.sparse.linalg.lobpcg_standard`).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar

from .._results import RESULTS
from .._trainable import split_trainable
from ..solvers._krylov import lobpcg_extreme, spectral_scale
from ._sphere import flatten, projected_hessian


class StrictnessTest(eqx.Module):
    """Proposition 14 at an escape direction ρ (Jacot et al.; SPEC §5).

    **Fields:**

    - `min_curvature`: λ_min of vᵀ∇²H(ρ)v/‖v‖² over v ⊥ ρ.
    - `threshold`: −s*.
    - `strict`: `min_curvature < threshold` (some v ⊥ ρ has vᵀ∇²H(ρ)v < −s*‖v‖²).
    - `vector`: the minimising v (pytree shaped like ρ).
    - `result`: `RESULTS.successful`, or `max_steps_reached` if LOBPCG did not converge.
    - `stats`: `num_steps`, the LOBPCG iterations.
    """

    min_curvature: Scalar
    threshold: Scalar
    strict: Array
    vector: PyTree
    result: RESULTS
    stats: dict


class HessianEigenpairs(eqx.Module):
    """Most negative Hessian eigenpairs at a strict saddle (k = 2; SPEC §5).

    **Fields:**

    - `eigenvalues`: λ_1 ≤ λ_2 ≤ … (most negative first).
    - `vectors`: unit eigenvectors, a pytree with a leading axis.
    - `speeds`: s_i = −λ_i (H(δ) = ½δᵀ∇²Lδ, so ∇H(ρ) = λρ = −sρ).
    - `residuals`: ‖∇²L v − λv‖ per pair.
    - `result`: `RESULTS.successful`, or `max_steps_reached` if LOBPCG did not converge.
    - `stats`: `num_steps`, the LOBPCG iterations.
    """

    eigenvalues: Array
    vectors: PyTree
    speeds: Array
    residuals: Array
    result: RESULTS
    stats: dict


def _lobpcg_bottom(matvec, n, dtype, key, n_eig, max_steps, tol):
    """The `n_eig` most negative eigenpairs of a symmetric operator, by LOBPCG on −A (shifted
    by its spectral scale, so that eigenvalues at or near 0 converge too: `lobpcg_extreme`).

    **Returns:** (eigenvalues, eigenvectors as columns, iterations, result).
    """
    if not 5 * n_eig < n:
        raise ValueError(
            f"LOBPCG needs 5·n_eig < P: got n_eig = {n_eig} for P = {n}; ask for fewer pairs."
        )
    x0 = jr.normal(key, (n, n_eig), dtype)
    lam, U, _, iters = lobpcg_extreme(
        matvec, x0, -1.0, spectral_scale(matvec, x0), max_steps, tol
    )
    result = RESULTS.where(iters < max_steps, RESULTS.successful, RESULTS.max_steps_reached)
    return lam, U, iters, result


@eqx.filter_jit
def _restricted_bottom(h, rho, key, max_steps, tol):
    return _lobpcg_bottom(projected_hessian(h, rho), rho.size, rho.dtype, key, 1, max_steps, tol)


def strictness_test(
    H: Callable,
    direction: PyTree,
    optimal_speed: Scalar,
    *,
    key: PRNGKeyArray,
    max_steps: int = 200,
    tol: float | None = None,
    margin: float = 1e-8,
) -> StrictnessTest:
    """Does some v ⊥ ρ have vᵀ∇²H(ρ)v < −s*‖v‖²? (Jacot et al. Prop. 14; SPEC §5.)

    The restricted Hessian P∇²H(ρ)P, P = I − ρρᵀ, is probed with LOBPCG; ρ itself is an
    eigenvector of P∇²H(ρ)P with eigenvalue 0, which never passes the (negative) threshold.

    **Arguments:**

    - `H`: the k-homogeneous Taylor term. `direction`: ρ (normalised first).
    - `optimal_speed`: s*.
    - `key`: PRNG key for LOBPCG's starting block.
    - `max_steps`: LOBPCG iterations. `tol`: LOBPCG's tolerance (None: the float epsilon of the
        dtype, LOBPCG's own default).
    - `margin`: `strict` needs λ_min < −s*(1 + margin), so that the optimal direction itself
        (λ_min = −s* exactly) is not reported strict by roundoff.

    **Returns:** a `StrictnessTest`.
    """
    h, flat, unravel = flatten(H, direction)
    if not 5 < flat.size:
        raise ValueError(f"LOBPCG needs more than 5 parameters, `direction` has {flat.size}.")
    lam, U, iters, result = _restricted_bottom(
        h, flat / jnp.linalg.norm(flat), key, max_steps, tol
    )
    threshold = -jnp.asarray(optimal_speed)
    strict = lam[0] < threshold * (1 + margin)
    stats = {"num_steps": iters}
    return StrictnessTest(lam[0], threshold, strict, unravel(U[:, 0]), result, stats)


def flat_hessian_operator(objective: Callable, params: PyTree, trainable=eqx.is_inexact_array):
    """f(x) = L(θ(x)) on the raveled trainable parameters x ∈ R^P — the edge where a flat vector
    is the mathematical object (LOBPCG's operator).

    **Returns:** (x, unravel, hvp_at) with `hvp_at(x)(v)` = ∇²f(x)v, a forward-over-reverse
    Hessian-vector product (no P × P matrix).
    """
    state, static = split_trainable(params, trainable)
    flat, unravel = ravel_pytree(state)

    def hvp_at(x):
        f = lambda y: objective(eqx.combine(unravel(y), static))  # noqa: E731
        return lambda v: jax.jvp(jax.grad(f), (x,), (v,))[1]

    return flat, unravel, hvp_at


def hessian_negative_eigenpairs(
    loss: Callable,
    point: PyTree,
    n_eig: int = 1,
    *,
    key: PRNGKeyArray,
    max_steps: int = 200,
    tol: float | None = None,
) -> HessianEigenpairs:
    """The `n_eig` most negative eigenpairs of ∇²L(θ*), matrix-free (LOBPCG on HVPs; SPEC §5).

    At a strict saddle (k = 2) these are the escape directions with the largest speeds.
    `loss` may be `taylor_term(...).H` with k = 2 (its Hessian is ∇²L(θ*)) or L itself.
    `max_steps`, `tol`: as in `strictness_test`.
    """
    flat, unravel, hvp_at = flat_hessian_operator(loss, point)
    matvec = hvp_at(flat)
    lam, U, iters, result = _lobpcg_bottom(
        matvec, flat.size, flat.dtype, key, n_eig, max_steps, tol
    )
    res = jnp.linalg.norm(jax.vmap(matvec, in_axes=1, out_axes=1)(U) - U * lam[None, :], axis=0)
    vectors = jax.vmap(unravel, in_axes=1)(U)
    return HessianEigenpairs(lam, vectors, -lam, res, result, {"num_steps": iters})
