"""Symmetries of layered networks and balanced initialisations (SPEC §2; Jacot et al. §2.2).

Each map g below acts linearly on the parameters and leaves the network function unchanged,
f_{gθ} = f_θ (for a DLN, A_{gθ} = A_θ), so any loss satisfies L(gθ) = L(θ):

- rotations R = (O_1, …, O_{L−1}) of the hidden layers of a DLN: W_ℓ ↦ O_ℓ W_ℓ O_{ℓ−1}ᵀ
  (O_0 = O_L = I);
- inclusions I^{(w→w')} into a wider network, padding with zero weights;
- permutations of the neurons of one hidden layer of any layered network (a permutation is a
  rotation of a DLN, and commutes with every elementwise activation).

Rotations and permutations are orthogonal maps of parameter space and the inclusion is an
isometric embedding whose image is invariant, so ∇L(gθ) = g∇L(θ) and the gradient flow commutes
with them: Γ(t, gθ₀) = gΓ(t, θ₀) (Jacot et al. §2.2).

A DLN is balanced when W_ℓW_ℓᵀ = W_{ℓ+1}ᵀW_{ℓ+1} for ℓ = 1, …, L−1. The differences are
conserved by the flow (Arora et al. 2018, Thm 1), so a balanced start stays balanced; the
limiting paths and saddles of the saddle-to-saddle regime are balanced (Jacot et al. Remark 4;
SPEC §8). `balanced_dln` and `random_balanced_dln` build such starts.

The maps take the weights (W_1, …, W_L) as a tuple or list of arrays — with optional leading
batch axes, e.g. a saved trajectory `sol.params` with a leading time axis — or a network module,
and return the same kind (a tuple for a sequence).
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..nn import DeepLinear, DeepReLU, SquaredReLU, TwoLayer
from ..nn._layers import check_widths


def _layers(params, what: str, modules: tuple[type, ...], arg: str = "weights"):
    """(W_1, …, W_L) and a function that puts new layers back into the same kind of object."""
    if isinstance(params, modules):
        layers = tuple(params.weights)

        def rebuild(new):
            return eqx.tree_at(lambda m: m.weights, params, tuple(new))

    elif isinstance(params, list | tuple):
        layers = tuple(jnp.asarray(w) for w in params)

        def rebuild(new):
            return tuple(new)

    else:
        names = ", ".join(m.__name__ for m in modules)
        raise ValueError(
            f"`{arg}` of `{what}` must be the weights (W_1, ..., W_L) as a tuple or list of "
            f"arrays, or a network of type {names}; got {type(params).__name__}."
        )
    if not layers or any(w.ndim < 2 for w in layers):
        raise ValueError(
            f"every layer of `{arg}` (`{what}`) must be a matrix (leading batch axes allowed); "
            f"got shapes {[w.shape for w in layers]}."
        )
    for ell, (w, w_next) in enumerate(zip(layers[:-1], layers[1:]), start=1):
        if w.shape[-2] != w_next.shape[-1]:
            raise ValueError(
                f"the layers of `{arg}` (`{what}`) do not chain: W_{ell} has shape {w.shape} and "
                f"W_{ell + 1} {w_next.shape}; expected W_{ell + 1}.shape[-1] == W_{ell}.shape[-2]."
            )
    return layers, rebuild


def _network_widths(layers) -> tuple[int, ...]:
    return (layers[0].shape[-1],) + tuple(w.shape[-2] for w in layers)


def rotate_hidden(weights, rotations: Sequence[Float[Array, "n n"]]):
    """Rotate the hidden layers of a DLN: (W_ℓ) ↦ (O_ℓ W_ℓ O_{ℓ−1}ᵀ) with O_0 = O_L = I.

    The rotation R = (O_1, …, O_{L−1}) of Jacot et al. §2.2 (SPEC §2): A_{Rθ} = A_θ,
    ∇L(Rθ) = R∇L(θ), hence Γ(t, Rθ₀) = RΓ(t, θ₀); the balancedness matrices transform as
    D_ℓ ↦ O_ℓ D_ℓ O_ℓᵀ. The matrices are applied as given, transposes on the right, so A_θ is
    kept only when they are orthogonal.

    **Arguments:**

    - `weights`: (W_1, …, W_L) (leading batch axes allowed, e.g. `sol.params` with a time
        axis) or a `DeepLinear`.
    - `rotations`: [O_1, …, O_{L−1}], O_ℓ of shape (n_ℓ, n_ℓ), e.g. from `random_rotations`
        or `saddlejax.analysis.procrustes_rotations`.

    **Returns:** the rotated weights, of the kind of `weights` (a tuple for a sequence).

    **Example:** `rotate_hidden(net, random_rotations(key, net.widths)).matrix()` equals
    `net.matrix()`.
    """
    layers, rebuild = _layers(weights, "rotate_hidden", (DeepLinear,))
    rotations = [jnp.asarray(o) for o in rotations]
    hidden = _network_widths(layers)[1:-1]
    if len(rotations) != len(hidden) or any(o.shape != (n, n) for o, n in zip(rotations, hidden)):
        raise ValueError(
            f"`rotations` must be L − 1 = {len(hidden)} square matrices of shapes "
            f"{[(n, n) for n in hidden]} (one per hidden layer), got shapes "
            f"{[o.shape for o in rotations]}; use `random_rotations(key, widths)`."
        )
    out = []
    for ell, w in enumerate(layers):
        if ell < len(layers) - 1:
            w = jnp.einsum("ij,...jk->...ik", rotations[ell], w)
        if ell > 0:
            w = jnp.einsum("...ij,kj->...ik", w, rotations[ell - 1])
        out.append(w)
    return rebuild(out)


def random_rotations(
    key: PRNGKeyArray, widths: Sequence[int], dtype=None
) -> tuple[Float[Array, "n n"], ...]:
    """Independent Haar-distributed orthogonal matrices O_ℓ ∈ O(n_ℓ), one per hidden layer.

    A uniformly random DLN rotation R = (O_1, …, O_{L−1}) (Jacot et al. §2.2; SPEC §2), to pass
    to `rotate_hidden`.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `widths`: the layer sizes (n_0, n_1, …, n_L) of the network (`net.widths`).
    - `dtype`: floating dtype (default: JAX's default float).

    **Returns:** a tuple of L − 1 orthogonal matrices, O_ℓ of shape (n_ℓ, n_ℓ).
    """
    widths = check_widths(widths)
    dtype = jnp.result_type(float) if dtype is None else dtype
    hidden = widths[1:-1]
    keys = jr.split(key, max(len(hidden), 1))
    return tuple(jr.orthogonal(k, n, dtype=dtype) for k, n in zip(keys, hidden))


def include_dln(weights, widths: Sequence[int]):
    """The inclusion I^{(w→w')} into a wider network: pad every hidden layer with zero neurons.

    Jacot et al. §2.2 (SPEC §2): V_1 = [W_1; 0], V_ℓ = [[W_ℓ, 0], [0, 0]], V_L = [W_L, 0]. Then
    A_{Iθ} = A_θ and ∇L(Iθ) = I∇L(θ): the image of I is invariant and Γ(t, Iθ₀) = IΓ(t, θ₀).
    The same holds for a (leaky-)ReLU network, whose activation vanishes at 0, so a `DeepReLU`
    is accepted too.

    **Arguments:**

    - `weights`: (W_1, …, W_L) (leading batch axes allowed), a `DeepLinear` or a `DeepReLU`.
    - `widths`: the new layer sizes (n_0, n'_1, …, n'_{L−1}, n_L): same input and output sizes,
        every hidden width at least the old one.

    **Returns:** the padded weights, of the kind of `weights`.
    """
    layers, rebuild = _layers(weights, "include_dln", (DeepLinear, DeepReLU))
    old = _network_widths(layers)
    new = check_widths(widths)
    if (
        len(new) != len(old)
        or new[0] != old[0]
        or new[-1] != old[-1]
        or any(n < o for n, o in zip(new[1:-1], old[1:-1]))
    ):
        raise ValueError(
            f"`widths` must keep the input and output sizes and widen (or keep) each hidden "
            f"layer of the network of widths {old}: expected {len(old)} sizes "
            f"({old[0]}, n'_1 ≥ {old[1]}, ..., {old[-1]}), got {new}."
        )
    out = []
    for ell, w in enumerate(layers):
        pad = [(0, 0)] * (w.ndim - 2) + [
            (0, new[ell + 1] - w.shape[-2]),
            (0, new[ell] - w.shape[-1]),
        ]
        out.append(jnp.pad(w, pad))
    return rebuild(out)


def _check_perm(perm, size: int) -> Array:
    perm = jnp.asarray(perm)
    if perm.shape != (size,) or not jnp.issubdtype(perm.dtype, jnp.integer):
        raise ValueError(
            f"`perm` must be an integer array of shape ({size},) (a permutation of the {size} "
            f"neurons of the layer), got {perm.dtype} of shape {perm.shape}."
        )
    try:
        values = np.asarray(perm)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return perm  # traced (e.g. under vmap over permutations): the caller vouches for it
    if not np.array_equal(np.sort(values), np.arange(size)):
        raise ValueError(f"`perm` must be a permutation of 0, ..., {size - 1}, got {values}.")
    return perm


def permute_neurons(params, layer: int, perm: Int[Array, " n"]):
    """Permute the neurons of hidden layer ℓ: the outputs of W_ℓ and the inputs of W_{ℓ+1}.

    For any layered network with an elementwise activation, W_ℓ ↦ P W_ℓ, W_{ℓ+1} ↦ W_{ℓ+1} Pᵀ
    (P the permutation matrix) leaves f_θ unchanged, and, being orthogonal on parameter space,
    commutes with the gradient flow (SPEC §2). For a DLN it is the rotation with O_ℓ = P.

    **Arguments:**

    - `params`: (W_1, …, W_L) (leading batch axes allowed), a `DeepLinear` or `DeepReLU`
        (layers ℓ = 1, …, L−1), a `TwoLayer` (ℓ = 1: rows of `w`, columns of `a`) or a
        `SquaredReLU` (ℓ = 1: rows of `w`; the output sums the neurons).
    - `layer`: ℓ, the hidden layer between W_ℓ and W_{ℓ+1}, counted from 1 as in the papers.
    - `perm`: an integer array with `perm[i]` the old index of the new neuron i
        (new W_ℓ = W_ℓ[perm], as `jnp.take(..., perm)`), e.g. `jr.permutation(key, n_ℓ)`.

    **Returns:** the permuted parameters, of the kind of `params`.
    """
    if isinstance(params, TwoLayer | SquaredReLU):
        if layer != 1:
            raise ValueError(
                f"`layer` must be 1 for a {type(params).__name__} (its one hidden layer), got "
                f"{layer}."
            )
        perm = _check_perm(perm, params.w.shape[-2])
        if isinstance(params, SquaredReLU):
            return eqx.tree_at(lambda m: m.w, params, jnp.take(params.w, perm, axis=-2))
        return eqx.tree_at(
            lambda m: (m.w, m.a),
            params,
            (jnp.take(params.w, perm, axis=-2), jnp.take(params.a, perm, axis=-1)),
        )
    layers, rebuild = _layers(params, "permute_neurons", (DeepLinear, DeepReLU), "params")
    depth = len(layers)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= depth - 1:
        raise ValueError(
            f"`layer` must be an int in [1, {depth - 1}] (the hidden layer between W_ℓ and "
            f"W_ℓ₊₁ of a depth-{depth} network), got {layer!r}."
        )
    perm = _check_perm(perm, layers[layer - 1].shape[-2])
    out = list(layers)
    out[layer - 1] = jnp.take(out[layer - 1], perm, axis=-2)
    out[layer] = jnp.take(out[layer], perm, axis=-1)
    return rebuild(out)


def balanced_dln(
    a: Float[Array, "n_out n_in"],
    widths: Sequence[int],
    *,
    key: PRNGKeyArray | None = None,
    rank: int | None = None,
) -> tuple[Float[Array, "n_out n_in"], ...]:
    """A balanced factorisation W_L ⋯ W_1 of a matrix A.

    With the SVD A = U Σ Vᵀ and k = min(n_0, …, n_L) (the narrowest layer; at most `rank`),
    W_1 = O_1 I(Σ_k^{1/L} V_kᵀ), W_ℓ = O_ℓ I(Σ_k^{1/L}) O_{ℓ−1}ᵀ, W_L = I(U_k Σ_k^{1/L}) O_{L−1}ᵀ,
    where I pads with zeros to the layer's shape (the inclusion of the width-k factorisation,
    Jacot et al. §2.2 and App. B.2) and O_ℓ is a rotation. Then
    W_ℓW_ℓᵀ = W_{ℓ+1}ᵀW_{ℓ+1} = O_ℓ I(Σ_k^{2/L}) O_ℓᵀ: balanced (SPEC §2, §8; Arora et al. 2018).

    The product is U_k Σ_k V_kᵀ: A itself when rank A ≤ k, else its best rank-k approximation
    (Eckart–Young) — the closest matrix a network this narrow can represent.

    **Arguments:**

    - `a`: A, shape (n_L, n_0).
    - `widths`: the layer sizes (n_0, n_1, …, n_L).
    - `key`: if given, the O_ℓ are Haar-random (`random_rotations`); otherwise O_ℓ = I and the
        factors are the zero-padded diagonal ones.
    - `rank`: keep at most this many singular values (A's numerical rank: a singular value at
        rounding, 1e−16·σ₁, would enter the factors as its L-th root, 1e−4·σ₁^{1/L} at L = 4).

    **Returns:** the weights (W_1, …, W_L) as a tuple.

    **Example:** `balanced_dln(problem.target, (10, 20, 20, 10), key=key)` is a global minimum
    of a matrix-completion problem that the flow does not leave.
    """
    widths = check_widths(widths)
    a = jnp.asarray(a)
    if a.shape != (widths[-1], widths[0]):
        raise ValueError(
            f"`a` must have shape (n_L, n_0) = {(widths[-1], widths[0])} to match `widths` "
            f"{widths}, got {a.shape}."
        )
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"`rank` must be a positive int, got {rank!r}.")
    return _balanced(a, widths, key, min(widths) if rank is None else min(min(widths), rank))


@eqx.filter_jit
def _balanced(a, widths, key, k):
    depth = len(widths) - 1
    u, s, vt = jnp.linalg.svd(a, full_matrices=False)
    c = s[:k] ** (1.0 / depth)
    weights = []
    for ell in range(depth):
        n_in, n_out = widths[ell], widths[ell + 1]
        w = jnp.zeros((n_out, n_in), a.dtype)
        if ell == 0 and ell == depth - 1:
            block = a
        elif ell == 0:
            block = c[:, None] * vt[:k]
        elif ell == depth - 1:
            block = u[:, :k] * c[None, :]
        else:
            block = jnp.diag(c)
        weights.append(w.at[: block.shape[0], : block.shape[1]].set(block))
    if key is not None and depth > 1:
        weights = rotate_hidden(weights, random_rotations(key, widths, a.dtype))
    return tuple(weights)


def random_balanced_dln(
    widths: Sequence[int], *, key: PRNGKeyArray, std: float, dtype=None
) -> tuple[Float[Array, "n_out n_in"], ...]:
    """A random balanced DLN whose entries have root-mean-square `std`.

    The balanced factorisation (`balanced_dln`, Haar-random rotations) of a matrix with i.i.d.
    N(0, 1) entries, multiplied by the one factor that makes the RMS of all entries equal to
    `std`. Balancedness is 2-homogeneous, so the rescaled net stays balanced. It is the balanced
    counterpart of the Gaussian draw σ = `std` (e.g. `saddlejax.init.gamma_std(w, γ)` for
    Jacot's σ² = w^{−γ}, SPEC §1): not i.i.d., but of the same parameter norm, and started on the
    balanced set that the limiting saddle-to-saddle paths live on (Jacot et al. Remark 4).

    **Arguments:**

    - `widths`: the layer sizes (n_0, …, n_L).
    - `key`: a JAX PRNG key (keyword only).
    - `std`: the RMS of the entries of θ₀.
    - `dtype`: floating dtype (default: JAX's default float).

    **Returns:** the weights (W_1, …, W_L) as a tuple.
    """
    widths = check_widths(widths)
    if isinstance(std, int | float) and not std > 0:
        raise ValueError(f"`std` must be positive, got {std}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    return _random_balanced(widths, key, jnp.asarray(std, dtype), dtype)


@eqx.filter_jit
def _random_balanced(widths, key, std, dtype):
    k_matrix, k_rot = jr.split(key)
    a = jr.normal(k_matrix, (widths[-1], widths[0]), dtype)
    weights = _balanced(a, widths, k_rot, min(widths))
    total = sum(jnp.sum(w**2) for w in weights)
    count = sum(w.size for w in weights)
    factor = std / jnp.sqrt(total / count)
    return tuple(factor * w for w in weights)
