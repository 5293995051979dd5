"""Two-layer networks f(x) = Σ_k a_k σ(w_kᵀx) for any activation (SPEC §2, §10)."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._validate import check_real
from ._kinks import relu
from ._layers import check_std, check_widths, gaussian_matrices, smoothed_leaky_relu

_ACTIVATIONS: dict[str, Callable] = {
    "tanh": jnp.tanh,
    "relu": relu,
    "identity": lambda x: x,
    "squared_relu": lambda x: relu(x) ** 2,
}


def resolve_activation(activation: str | Callable) -> Callable:
    if callable(activation):
        return activation
    try:
        return _ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(
            f"unknown `activation` {activation!r}; use one of {sorted(_ACTIVATIONS)} or pass a "
            "callable such as `jnp.tanh`."
        ) from None


class TwoLayer(eqx.Module):
    """f(x) = a σ(w x) = Σ_k a_k σ(w_kᵀx), bias-free, for any activation σ.

    With ReLU it is 2-homogeneous; with a tanh-like σ (σ(0) = 0, σ'(0) = 1) it is the model of
    Chen, Luo & Wang (SPEC §10), whose initialisation a_k, w_k ~ N(0, m^{-2α}) is `std=m**-alpha`
    (see `saddlejax.init.clw_std`).

    **Arguments:**

    - `in_size`, `width`, `out_size`: d, m and the output size.
    - `activation`: a name ("tanh", "relu", "identity", "squared_relu") or a callable.
    - `std`: entry scale of both layers (a float, or a pair (std_w, std_a)); default m^{-1/2}.
    - `key`: a JAX PRNG key (keyword only).
    - `smoothing`: with `activation="relu"`, the kink smoothing ε of `DeepReLU` (default 0:
        exact), for flows that slide along a kink.
    """

    w: Float[Array, "width in_size"]
    a: Float[Array, "out_size width"]
    activation: Callable = eqx.field(static=True)
    smoothing: float = eqx.field(static=True, default=0.0)

    def __init__(
        self,
        in_size: int,
        width: int,
        out_size: int,
        activation: str | Callable = "tanh",
        *,
        key: PRNGKeyArray,
        std: float | tuple[float, float] | None = None,
        dtype=None,
        smoothing: float = 0.0,
    ):
        in_size, width, out_size = check_widths((in_size, width, out_size), name="sizes")
        self.smoothing = check_real("smoothing", smoothing, low=0.0, high=1.0)
        std = check_std(width**-0.5 if std is None else std, 2)
        self.w, self.a = gaussian_matrices(key, [(width, in_size), (out_size, width)], std, dtype)
        self.activation = resolve_activation(activation)
        if self.smoothing > 0 and self.activation is not relu:
            raise ValueError(
                f"`smoothing` smooths the ReLU's kink, but `activation` is {activation!r}: use "
                "`activation=\"relu\"` or `smoothing=0`."
            )

    @property
    def width(self) -> int:
        return self.w.shape[0]

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        if self.smoothing > 0:
            return self.a @ smoothed_leaky_relu(self.w, x, 0.0, self.smoothing)[0]
        return self.a @ self.activation(self.w @ x)
