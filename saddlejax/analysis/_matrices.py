"""Matrix diagnostics of layered networks: singular values, effective rank, nuclear norm,
per-layer norms and the balancedness of a DLN (SPEC §2, §8).

All functions are pure and batched over leading axes, so they apply to one model inside
`gradient_flow(..., observe=...)` and to a saved trajectory (`sol.params.weights`, leading time
axis) alike.
"""

from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._tree import safe_sqrt


def _frobenius(a: Float[Array, "... m n"]) -> Float[Array, "..."]:
    return safe_sqrt(jnp.sum(a**2, axis=(-2, -1)))


def _check_matrix(a, name: str = "a") -> Array:
    a = jnp.asarray(a)
    if a.ndim < 2:
        raise ValueError(
            f"`{name}` must be a matrix (or a batch of matrices, leading axes batched); got "
            f"shape {a.shape}. Pass e.g. `net.matrix()` or one layer `net.weights[l]`."
        )
    return a


def _check_layers(weights, minimum: int = 1) -> tuple[Array, ...]:
    weights = tuple(getattr(weights, "weights", weights))
    if len(weights) < minimum or any(jnp.ndim(w) < 2 for w in weights):
        raise ValueError(
            f"`weights` must be a sequence of at least {minimum} matrices (W_1, ..., W_L), each "
            "with the same leading batch axes (e.g. `net.weights` or `sol.params.weights`); got "
            f"shapes {[jnp.shape(w) for w in weights]}."
        )
    return weights


def singular_values(a: Float[Array, "... m n"]) -> Float[Array, "... k"]:
    """Singular values σ_1 ≥ … ≥ σ_k, k = min(m, n), of a matrix or a batch of matrices.

    **Example:** `singular_values(sol.params.weights[0])` gives σ(W_1(t)) at every save time.
    """
    return jnp.linalg.svd(_check_matrix(a), compute_uv=False)


def nuclear_norm(a: Float[Array, "... m n"]) -> Float[Array, "..."]:
    """‖A‖_* = Σ_i σ_i(A), batched over leading axes (the implicit bias of deep matrix
    factorisation towards low nuclear norm; Jacot et al. §1)."""
    return jnp.sum(singular_values(a), axis=-1)


def effective_rank(a: Float[Array, "... m n"]) -> Float[Array, "..."]:
    """Entropy-based effective rank exp(H(p)), p_i = σ_i/Σ_j σ_j, H(p) = −Σ_i p_i log p_i
    (Roy & Vetterli 2007, Def. 1), batched over leading axes.

    A continuous proxy for the rank that the saddle-to-saddle staircase increments by about one
    at each saddle visited (SPEC §8, Conjecture 3): k equal non-zero singular values give k,
    a rank-1 matrix gives 1. Safe at zero: the zero matrix has effective rank 0 (by convention;
    the entropy is undefined there) with a zero, not NaN, derivative, and 0·log 0 = 0.

    **Example:** `gradient_flow(loss, net, t1, observe=lambda m: effective_rank(m.matrix()))`.
    """
    s = singular_values(a)
    total = jnp.sum(s, axis=-1, keepdims=True)
    nonzero = total > 0
    p = s / jnp.where(nonzero, total, 1.0)
    positive = p > 0
    plogp = jnp.where(positive, p * jnp.log(jnp.where(positive, p, 1.0)), 0.0)
    entropy = -jnp.sum(plogp, axis=-1)
    return jnp.where(nonzero[..., 0], jnp.exp(entropy), 0.0)


def layer_ranks(
    weights: Sequence[Float[Array, "... n_out n_in"]], tol: float = 0.1, *, relative: bool = False
) -> Array:
    """The numerical rank of each layer, rank(W_ℓ) = #{σ_i(W_ℓ) > tol} (or > tol·σ_1(W_ℓ) with
    `relative=True`), stacked on a last axis of size L; leading batch axes are kept."""
    if not tol > 0:
        raise ValueError(f"`tol` must be positive, got {tol}.")
    ranks = []
    for w in _check_layers(weights):
        s = singular_values(w)
        cut = tol * s[..., :1] if relative else tol
        ranks.append(jnp.sum(s > cut, axis=-1))
    return jnp.stack(ranks, axis=-1)


def bottleneck_rank(
    weights: Sequence[Float[Array, "... n_out n_in"]], tol: float = 0.1, *, relative: bool = False
) -> Array:
    """min_ℓ rank(W_ℓ): the narrowest layer, in numerical rank, that every input passes through
    (SPEC §9; Jacot 2023's bottleneck rank of a deep ReLU net is at most this, since
    f = g(W_ℓ h) factors through the rank(W_ℓ)-dimensional image of W_ℓ). For a DLN it bounds
    rank(A_θ). Later saddles of deep ReLU nets have growing bottleneck rank (Bantzis, Simon &
    Jacot), as DLN saddles have growing rank (Jacot et al. Conjecture 3).

    **Arguments:** `weights` (W_1, ..., W_L) or a model with a `weights` field, leading batch
    axes allowed (e.g. `sol.params.weights`); `tol`, `relative`: as for `layer_ranks`.
    """
    return jnp.min(layer_ranks(weights, tol, relative=relative), axis=-1)


def layer_norms(weights: Sequence[Float[Array, "... n_out n_in"]]) -> Float[Array, "... L"]:
    """Frobenius norms ‖W_ℓ‖_F of each layer, stacked on a last axis of size L; leading batch
    axes (e.g. time in `sol.params.weights`) are kept. Safe at zero.

    `weights` is a sequence (W_1, ..., W_L) or any model with a `weights` field (`DeepLinear`,
    `DeepReLU`). With small initialisation the norms grow in the order the layers escape;
    balanced nets (SPEC §2) keep ‖W_ℓ‖_F² − ‖W_{ℓ+1}‖_F² constant.
    """
    return jnp.stack([_frobenius(w) for w in _check_layers(weights)], axis=-1)


def balancedness(
    weights: Sequence[Float[Array, "... n_out n_in"]],
) -> tuple[Float[Array, "... n n"], ...]:
    """The balancedness matrices D_ℓ = W_{ℓ+1}ᵀW_{ℓ+1} − W_ℓW_ℓᵀ, ℓ = 1, …, L−1 (SPEC §2).

    Each D_ℓ is n_ℓ × n_ℓ (n_ℓ the width between W_ℓ and W_{ℓ+1}), so the result is a tuple of
    L−1 matrices; leading batch axes are kept. Gradient flow on any loss of A_θ = W_L ⋯ W_1
    conserves every D_ℓ (Arora et al. 2018, Thm 1; Jacot et al. §2): dW_ℓ/dt = −W_{ℓ+1}ᵀ⋯∇C ⋯
    W_{ℓ−1}ᵀ makes d(W_ℓW_ℓᵀ)/dt = d(W_{ℓ+1}ᵀW_{ℓ+1})/dt. A balanced net has D_ℓ = 0.

    **Arguments:** `weights`: (W_1, ..., W_L), L ≥ 2, or a model with a `weights` field.
    """
    ws = _check_layers(weights, minimum=2)
    for w, w_next in zip(ws[:-1], ws[1:]):
        if w.shape[-2] != w_next.shape[-1]:
            raise ValueError(
                f"consecutive layers do not chain: W_ℓ has shape {w.shape}, W_ℓ₊₁ {w_next.shape}; "
                "expected W_ℓ₊₁.shape[-1] == W_ℓ.shape[-2]."
            )
    return tuple(
        jnp.swapaxes(w_next, -1, -2) @ w_next - w @ jnp.swapaxes(w, -1, -2)
        for w, w_next in zip(ws[:-1], ws[1:])
    )


def balancedness_drift(
    weights_t: Sequence[Float[Array, "time n_out n_in"]],
) -> Float[Array, " L-1"]:
    """max_t ‖D_ℓ(t) − D_ℓ(0)‖_F / ‖D_ℓ(0)‖_F for each ℓ = 1, …, L−1 along a saved trajectory.

    D_ℓ is conserved by the gradient flow of a DLN (SPEC §2; see `balancedness`), so the drift
    measures the integration error — or a flow that is not the full gradient flow (gradient
    descent, frozen layers, weight decay). Where D_ℓ(0) = 0 (a balanced start) the absolute
    drift max_t ‖D_ℓ(t)‖_F is returned. Save points with non-finite weights (diffrax fills save
    times after a terminating event with inf) are skipped.

    **Arguments:** `weights_t`: (W_1(t), ..., W_L(t)) with a leading time axis, e.g.
    `sol.params.weights`; the first save point is the reference.

    **Returns:** an array of L−1 drifts.
    """
    ws = _check_layers(weights_t, minimum=2)
    if any(w.ndim != 3 for w in ws):
        raise ValueError(
            "`weights_t` must have one leading time axis on every layer (shape (time, n_out, "
            f"n_in)), got shapes {[w.shape for w in ws]}; for one model use `balancedness`."
        )
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(w), axis=(-2, -1)) for w in ws]), axis=0)
    drifts = []
    for d in balancedness(ws):
        ref = _frobenius(d[0])
        change = _frobenius(d - d[:1])
        change = jnp.where(finite, change, 0.0)
        drifts.append(jnp.max(change) / jnp.where(ref > 0, ref, 1.0))
    return jnp.stack(drifts)
