"""Deep linear networks A_θ = W_L ⋯ W_1 (SPEC §2; Jacot et al. §2)."""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._layers import check_std, check_widths, default_std, gaussian_matrices, matrix_chain


class DeepLinear(eqx.Module):
    """A bias-free deep linear network f_θ(x) = W_L ⋯ W_1 x, L-homogeneous in θ.

    **Arguments:**

    - `widths`: the layer sizes (n_0, n_1, ..., n_L): input size, hidden widths, output size.
    - `std`: the entry scale of the Gaussian draw, one float or one per layer. Defaults to
        w^{-1/2} with w the largest hidden width. Use `saddlejax.init` to convert from the
        papers' conventions (α·θ̃, σ² = w^{-γ}, σ = m^{-α}).
    - `key`: a JAX PRNG key (keyword only).

    **Example:**

    ```python
    net = DeepLinear((10, 100, 100, 100, 10), key=jr.key(0))
    A = net.matrix()  # (10, 10)
    ```
    """

    weights: tuple[Float[Array, "n_out n_in"], ...]

    def __init__(
        self,
        widths: Sequence[int],
        *,
        key: PRNGKeyArray,
        std: float | Sequence[float] | None = None,
        dtype=None,
    ):
        widths = check_widths(widths)
        std = check_std(default_std(widths) if std is None else std, len(widths) - 1)
        shapes = [(n_out, n_in) for n_in, n_out in zip(widths[:-1], widths[1:])]
        self.weights = gaussian_matrices(key, shapes, std, dtype)

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    def matrix(self) -> Float[Array, "n_out n_in"]:
        """The end-to-end matrix A_θ = W_L ⋯ W_1."""
        return matrix_chain(self.weights)

    def __call__(self, x: Float[Array, " n_in"]) -> Float[Array, " n_out"]:
        for w in self.weights:
            x = w @ x
        return x


def end_to_end_matrix(params) -> Array:
    """A_θ for a `DeepLinear` or for a plain sequence of matrices (W_1, ..., W_L)."""
    if isinstance(params, DeepLinear):
        return params.matrix()
    if isinstance(params, list | tuple) and all(jnp.ndim(w) == 2 for w in params):
        return matrix_chain(params)
    raise ValueError(
        "expected a `DeepLinear` or a list/tuple of 2-D weight matrices (W_1, ..., W_L), "
        f"got {type(params).__name__}."
    )
