"""Single-layer squared-ReLU networks f(x) = Σ_j max(0, w_jᵀx)² (SPEC §2, §6; Kumar & Haupt)."""

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from ._kinks import relu
from ._layers import check_std, check_widths, gaussian_matrices


class SquaredReLU(eqx.Module):
    """f(x) = Σ_j max(0, w_jᵀx)², 2-homogeneous and separable in its neurons w_j.

    The output has shape (1,), so that data and losses treat it like any other network.

    **Arguments:**

    - `in_size`, `width`: input dimension and number of neurons.
    - `std`: entry scale of the draw (default 1e-4, the Kumar–Haupt toy's initialisation).
    - `key`: a JAX PRNG key (keyword only).
    """

    w: Float[Array, "width in_size"]

    def __init__(
        self, in_size: int, width: int, *, key: PRNGKeyArray, std: float = 1e-4, dtype=None
    ):
        in_size, width = check_widths((in_size, width), name="sizes")
        (std,) = check_std(std, 1)
        (self.w,) = gaussian_matrices(key, [(width, in_size)], (std,), dtype)

    @property
    def width(self) -> int:
        return self.w.shape[0]

    def neurons(self, x: Float[Array, " in_size"]) -> Float[Array, " width"]:
        """The per-neuron outputs max(0, w_jᵀx)² (their sum is f(x))."""
        return relu(self.w @ x) ** 2

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, "1"]:
        return self.neurons(x).sum(keepdims=True)
