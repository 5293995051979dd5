"""Diagnostics of the training regimes of wide networks: the neural tangent kernel, its change
along training, and the distances of Theorem 1 (Jacot et al. §3–4, App. B.2; SPEC §8).

With σ² = w^{−γ} for every entry of a DLN of hidden width w (SPEC §1), Jacot et al. Thm 1 gives
the distances from θ₀ to the nearest global minimum (d_m) and saddle (d_s):

- 1 − 1/L ≤ γ < 1 (NTK / lazy): d_m ≍ w^{−(1−γ)(L−1)/2} → 0, d_s ≍ w^{(1−γ)/2} → ∞;
- γ = 1 (mean-field / μP): d_m, d_s ≍ 1;
- γ > 1 (saddle-to-saddle): d_m ≍ 1, d_s ≍ w^{−(γ−1)/2} → 0.

In the lazy regime the NTK Θ is of order L·w^{(1−γ)(L−1)} and asymptotically fixed during
training; for γ > 1 it starts near 0 and changes by much more than its initial size (Jacot
et al. §4 and the list of regime properties at the end of §5).
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._trainable import split_trainable
from .._tree import safe_sqrt
from ..nn._layers import check_std, check_widths
from ._matrices import _check_layers


def ntk(
    model,
    x: Float[Array, "n n_in"],
    x2: Float[Array, "m n_in"] | None = None,
    *,
    trainable: PyTree = eqx.is_inexact_array,
) -> Float[Array, "n n_out m n_out"]:
    """The empirical neural tangent kernel Θ(x_i, x'_j)_{ab} = Σ_p ∂_p f_a(x_i) ∂_p f_b(x'_j).

    The kernel of the linearised dynamics: under the gradient flow on Σ_i ℓ(f_θ(x_i), y_i),
    d f_θ(x)/dt = −Σ_j Θ(x, x_j) ∂_f ℓ(f_θ(x_j), y_j) (Jacot, Gabriel & Hongler 2018; Jacot et
    al. §4 for the DLN form, SPEC §8). Computed from the Jacobian of the outputs with respect to
    the trainable parameters (reverse mode: one pass per output entry), contracted over every
    parameter leaf; no flat parameter vector is formed.

    **Arguments:**

    - `model`: an equinox network written for a single example, `model(x_i)` of shape (n_out,)
        (a scalar output counts as n_out = 1).
    - `x`: inputs, shape (n, n_in).
    - `x2`: second inputs, shape (m, n_in), for the cross-kernel Θ(x, x2); default `x`.
    - `trainable`: a filter selecting the parameters θ_p that train (a callable on leaves or a
        pytree of bools from `saddlejax.freeze`); default every floating-point array.

    **Returns:** an array of shape (n, n_out, m, n_out); `k.reshape(n * n_out, m * n_out)` is
    the Gram matrix of the Jacobian rows (example-major).

    **Example:** for a `DeepLinear` net, `ntk(net, jnp.eye(n_0))[j, i, l, k]` is the matrix
    kernel `matrix_ntk(net)[i, j, k, l]`.
    """
    if not callable(model):
        raise ValueError(
            f"`model` must be a callable network (an equinox module), got "
            f"{type(model).__name__}; for the weights (W_1, ..., W_L) of a DLN use `matrix_ntk`."
        )
    x = _check_inputs(x, "x")
    if x2 is not None:
        x2 = _check_inputs(x2, "x2")
    if x2 is not None and x2.shape[1] != x.shape[1]:
        raise ValueError(
            f"`x` and `x2` must have the same input size, got shapes {x.shape} and {x2.shape}."
        )
    state, static = split_trainable(model, trainable)
    return _ntk(state, static, x, x2)


def _check_inputs(x, name: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must have shape (n_samples, n_in), got {x.shape}; for one input pass "
            f"`{name}[None]`."
        )
    return x


@eqx.filter_jit
def _ntk(state, static, x, x2):
    def outputs(s, xs):
        net = eqx.combine(s, static)
        return jax.vmap(lambda xi: jnp.reshape(net(xi), (-1,)))(xs)

    def jacobian(xs):
        # One (n, n_out, size) block per parameter leaf.
        jac = jax.tree_util.tree_leaves(jax.jacrev(outputs)(state, xs))
        return [leaf.reshape(leaf.shape[:2] + (-1,)) for leaf in jac]

    j1 = jacobian(x)
    j2 = j1 if x2 is None else jacobian(x2)
    return sum(jnp.einsum("iap,jbp->iajb", a, b) for a, b in zip(j1, j2))


def matrix_ntk(weights) -> Float[Array, "... n_out n_in n_out n_in"]:
    """The NTK of a deep linear network in matrix form, Θ_{ij,kl} = ⟨∇_θ(A_θ)_ij, ∇_θ(A_θ)_kl⟩.

    Jacot et al. §4: [Θ^{(L)}]_{i,k}^{j,l} = ∇_θ(A_θ)_{ij}ᵀ ∇_θ(A_θ)_{kl}, and the flow on
    L(θ) = C(A_θ) moves A by ∂_t A_{ij} = −Σ_{kl} Θ_{ij,kl} ∂C/∂A_{kl}. It is also the NTK of the
    entries of A that a matrix-completion cost observes (SPEC §3). Computed in closed form:
    with B_ℓ = W_L ⋯ W_{ℓ+1} and C_ℓ = W_{ℓ−1} ⋯ W_1 (empty products = I),
    ∂A_{ij}/∂(W_ℓ)_{ab} = (B_ℓ)_{ia}(C_ℓ)_{bj}, so Θ_{ij,kl} = Σ_ℓ (B_ℓB_ℓᵀ)_{ik}(C_ℓᵀC_ℓ)_{jl}
    (O(L) matrix products instead of a Jacobian with P columns). The NTK at inputs x, x' is
    Σ_{jl} Θ_{ij,kl} x_j x'_l (`ntk` on a `DeepLinear`).

    **Arguments:** `weights`: (W_1, …, W_L) or a `DeepLinear`; leading batch axes are kept (e.g.
    `sol.params` with a time axis).

    **Returns:** an array of shape (..., n_L, n_0, n_L, n_0). `g = k.reshape(n_L * n_0, -1)` is
    the Gram matrix over the entries of A in row-major order; with `m = mask.ravel() > 0` for a
    `MatrixCompletion` mask, `g[m][:, m]` is the kernel of the observed entries.
    """
    ws = _check_layers(weights)
    for w, w_next in zip(ws[:-1], ws[1:]):
        if w.shape[-2] != w_next.shape[-1]:
            raise ValueError(
                f"consecutive layers do not chain: W_ℓ has shape {w.shape}, W_ℓ₊₁ {w_next.shape}; "
                "expected W_ℓ₊₁.shape[-1] == W_ℓ.shape[-2]."
            )
    batch = jnp.broadcast_shapes(*(w.shape[:-2] for w in ws))
    ws = tuple(jnp.broadcast_to(w, batch + w.shape[-2:]) for w in ws)
    n_in, n_out = ws[0].shape[-1], ws[-1].shape[-2]
    dtype = jnp.result_type(*ws)

    def eye(n):
        return jnp.broadcast_to(jnp.eye(n, dtype=dtype), batch + (n, n))

    depth = len(ws)
    prefixes = [eye(n_in)]  # C_ℓ = W_{ℓ−1} ⋯ W_1
    for w in ws[:-1]:
        prefixes.append(w @ prefixes[-1])
    suffixes = [eye(n_out)]  # B_ℓ = W_L ⋯ W_{ℓ+1}, built from ℓ = L down
    for w in ws[:0:-1]:
        suffixes.append(suffixes[-1] @ w)
    suffixes = suffixes[::-1]
    total = jnp.zeros(batch + (n_out, n_in, n_out, n_in), dtype)
    for ell in range(depth):
        b, c = suffixes[ell], prefixes[ell]
        left = b @ jnp.swapaxes(b, -1, -2)
        right = jnp.swapaxes(c, -1, -2) @ c
        total = total + jnp.einsum("...ik,...jl->...ijkl", left, right)
    return total


def ntk_change(k0: Float[Array, "..."], k1: Float[Array, "..."]) -> Float[Array, ""]:
    """The relative change ‖Θ₁ − Θ₀‖_F / ‖Θ₀‖_F of a kernel between two times.

    Small (→ 0 with width) in the lazy regime γ < 1, where the NTK is asymptotically fixed; in
    the saddle-to-saddle regime γ > 1 it is ≫ 1, as Θ₀ → 0 while the trained kernel is of order
    1 (Jacot et al. §4–5; SPEC §8). The norm is over all axes. Safe at zero: 0 when both kernels
    vanish, +inf when only Θ₀ does, with zero (not NaN) derivatives there.

    **Arguments:** `k0`, `k1`: kernels of the same shape, e.g. `matrix_ntk` or `ntk` at θ(0)
    and θ(t).
    """
    k0, k1 = jnp.asarray(k0), jnp.asarray(k1)
    if k0.shape != k1.shape:
        raise ValueError(
            f"`k0` and `k1` must have the same shape, got {k0.shape} and {k1.shape}; compute "
            "both with the same inputs."
        )
    ref = safe_sqrt(jnp.sum(k0**2))
    change = safe_sqrt(jnp.sum((k1 - k0) ** 2))
    positive = ref > 0
    ratio = change / jnp.where(positive, ref, 1.0)
    return jnp.where(positive, ratio, jnp.where(change > 0, jnp.inf, 0.0))


def saddle_distance_bound(weights) -> Float[Array, "..."]:
    """√(‖W_1‖_F² + ‖W_L‖_F²): the distance from θ to the saddle obtained by zeroing W_1 and W_L.

    With W_1 = W_L = 0 every layer's gradient contains a factor W_1 or W_L (for L ≥ 3; for
    L = 2 the point is the origin), so the point is critical with A = 0, a saddle when 0 does not
    minimise C. Hence d_s ≤ this bound (Jacot et al. App. B.2, proof of Thm 1 (2); SPEC §8),
    and E[bound²] = σ²(n_0 + n_L)w for i.i.d. N(0, σ²) entries: d_s ≲ w^{(1−γ)/2} for
    σ² = w^{−γ}, small for γ > 1. Safe at zero; leading batch axes are kept.

    **Arguments:** `weights`: (W_1, …, W_L), L ≥ 2, or a `DeepLinear` / `DeepReLU`.
    """
    ws = _check_layers(weights, minimum=2)
    return safe_sqrt(jnp.sum(ws[0] ** 2, axis=(-2, -1)) + jnp.sum(ws[-1] ** 2, axis=(-2, -1)))


def minimum_distance_bound(weights, target: Float[Array, "n_out n_in"]) -> Float[Array, "..."]:
    """The norm of the smallest change of W_L alone that makes A_θ = A*:
    √tr((A* − A_θ)(CᵀC)⁻¹(A* − A_θ)ᵀ) with C = W_{L−1} ⋯ W_1.

    If C has full column rank (n_0 ≤ n_{L−1} and C generic), ΔW_L = (A* − A_θ)C⁺ gives
    (W_L + ΔW_L)C = A*, and this is its Frobenius norm. When A* minimises the cost, it bounds the
    distance d_m to the global minima (Jacot et al. App. B.2, proof of Thm 1 (1), the case
    γ < 1, where it is ≍ w^{−(1−γ)(L−1)/2}; SPEC §8). For a matrix-completion cost any
    completion works, e.g. `MatrixCompletion.target`. Returns +inf when C cannot have full
    column rank (n_0 exceeds a hidden width) and where the Cholesky factorisation of CᵀC fails
    (C exactly rank deficient); a nearly rank-deficient C gives a large finite value, as it
    should. Leading batch axes are kept.

    **Arguments:**

    - `weights`: (W_1, …, W_L), L ≥ 2, or a `DeepLinear`.
    - `target`: A*, shape (n_L, n_0).
    """
    ws = _check_layers(weights, minimum=2)
    target = jnp.asarray(target)
    shape = (ws[-1].shape[-2], ws[0].shape[-1])
    if target.shape != shape:
        raise ValueError(
            f"`target` must have the shape (n_L, n_0) = {shape} of the end-to-end matrix, got "
            f"{target.shape}."
        )
    c = ws[0]
    for w in ws[1:-1]:
        c = w @ c
    a = ws[-1] @ c
    if shape[1] > min(w.shape[-2] for w in ws[:-1]):
        # rank C ≤ min hidden width < n_0: no change of W_L alone reaches a generic A*.
        return jnp.full(a.shape[:-2], jnp.inf, a.dtype)
    gram = jnp.swapaxes(c, -1, -2) @ c
    chol = jnp.linalg.cholesky(gram)
    # tr(D G⁻¹ Dᵀ) = ‖L⁻¹ Dᵀ‖_F² with G = L Lᵀ.
    residual = jnp.broadcast_to(target, a.shape) - a
    z = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(residual, -1, -2), lower=True)
    sq = jnp.sum(z**2, axis=(-2, -1))
    return jnp.where(jnp.isfinite(sq), safe_sqrt(jnp.where(jnp.isfinite(sq), sq, 0.0)), jnp.inf)


def expected_dln_ntk(widths: Sequence[int], std: float | Sequence[float]) -> float:
    """The constant c in E[Θ_{ij,kl}] = c δ_ik δ_jl for a DLN with i.i.d. N(0, σ_ℓ²) entries.

    From `matrix_ntk`'s formula Θ = Σ_ℓ (B_ℓB_ℓᵀ) ⊗ (C_ℓᵀC_ℓ) with independent layers:
    E[W X Wᵀ] = σ² tr(X) I and E[Wᵀ X W] = σ² tr(X) I give E[B_ℓB_ℓᵀ] = Π_{m>ℓ} σ_m² n_{m−1} · I
    and E[C_ℓᵀC_ℓ] = Π_{m<ℓ} σ_m² n_m · I, so
    c = (n_1 ⋯ n_{L−1}) Σ_ℓ Π_{m≠ℓ} σ_m². For a rectangular net (hidden width w) with
    σ² = w^{−γ} this is L·w^{(1−γ)(L−1)} (Jacot et al. §4; SPEC §8) — exactly, at every width,
    in the standard parametrisation A_θ = W_L ⋯ W_1 with no width factors, whatever n_0 and
    n_L. At inputs x, x' the NTK of `ntk` has mean c·xᵀx'·I.

    **Arguments:**

    - `widths`: the layer sizes (n_0, …, n_L).
    - `std`: σ, one float or one per layer (e.g. `saddlejax.init.gamma_std(w, γ)`).
    """
    widths = check_widths(widths)
    depth = len(widths) - 1
    var = [s**2 for s in check_std(std, depth)]
    hidden = 1.0
    for n in widths[1:-1]:
        hidden *= n
    total = 0.0
    for ell in range(depth):
        term = 1.0
        for m, v in enumerate(var):
            if m != ell:
                term *= v
        total += term
    return hidden * total


def distance_exponents(gamma: float, depth: int) -> tuple[float, float]:
    """The exponents (e_m, e_s) of Thm 1 of Jacot et al.: d_m ≍ w^{e_m} and d_s ≍ w^{e_s}.

    For σ² = w^{−γ}, 1 − 1/L ≤ γ (SPEC §8): e_s = (1 − γ)/2 in every regime, and
    e_m = −(1 − γ)(L − 1)/2 for γ < 1, e_m = 0 for γ ≥ 1. So γ < 1 starts near a minimum and far
    from saddles (NTK), γ > 1 near a saddle (saddle-to-saddle), γ = 1 at the same distance of
    both (mean-field).

    **Arguments:** `gamma`: γ; `depth`: L ≥ 2.

    **Returns:** the pair (e_m, e_s).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise ValueError(f"`depth` must be an int ≥ 2 (the number of layers L), got {depth!r}.")
    if not gamma >= 1 - 1 / depth:
        raise ValueError(
            f"`gamma` must be at least 1 − 1/L = {1 - 1 / depth} (smaller γ makes A_θ explode "
            f"with the width; Jacot et al. §3), got {gamma}."
        )
    e_m = -(1 - gamma) * (depth - 1) / 2 if gamma < 1 else 0.0
    return e_m, (1 - gamma) / 2
