"""Objectives: maps from a model (or its parameters) to a scalar loss (SPEC §3).

Any callable `params -> scalar` is an objective for `gradient_flow`; the classes here are the
papers' costs, written once. Each is an `eqx.Module`, so data live in the pytree and a change of
data does not retrace.
"""

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar

from ..nn import end_to_end_matrix

_NORMALIZATIONS = ("mean", "half_sum", "half_mean", "sum")


class AbstractObjective(eqx.Module):
    """A loss L(θ): call it on a model (the pytree the flow moves)."""

    @abc.abstractmethod
    def __call__(self, model) -> Scalar:
        raise NotImplementedError


def _check_data(x, y, y_name="y"):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"`x` must have shape (n_samples, n_in), got {x.shape}.")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"`{y_name}` must have shape (n_samples, n_out) with n_samples = {x.shape[0]} "
            f"(the rows of `x`), got {y.shape}."
        )
    return x, y


def _check_outputs(outputs, y, what="the model maps `x` to"):
    # Trace-time check: (n, 1) outputs against (n, k) targets would otherwise broadcast silently.
    if outputs.shape != y.shape:
        raise ValueError(
            f"{what} shape {outputs.shape}, but `y` has shape {y.shape}; the model's output "
            "size must match the columns of `y`."
        )


def _reduce(total: Scalar, n: int, normalization: str) -> Scalar:
    return {
        "mean": total / n,
        "half_sum": total / 2,
        "half_mean": total / (2 * n),
        "sum": total,
    }[normalization]


class SquareLoss(AbstractObjective):
    """Square loss of a network on data: L(θ) = c · Σ_i ‖f_θ(x_i) − y_i‖².

    `normalization` picks c: "mean" (1/N, Jacot's MSE C(A) = (1/N)‖AX − Y‖_F², the default),
    "half_sum" (½, Kumar & Haupt), "half_mean" (1/(2N), Chen–Luo–Wang's ½∫(f_θ − f)²ρ by
    sampling) or "sum" (1). SPEC §3.

    **Arguments:**

    - `x`: inputs, shape (n_samples, n_in).
    - `y`: targets, shape (n_samples, n_out) (or (n_samples,) for scalar outputs).
    - `normalization`: see above.
    """

    x: Float[Array, "n n_in"]
    y: Float[Array, "n n_out"]
    normalization: str = eqx.field(static=True)

    def __init__(
        self,
        x,
        y,
        normalization: Literal["mean", "half_sum", "half_mean", "sum"] = "mean",
    ):
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"unknown `normalization` {normalization!r}; use one of {_NORMALIZATIONS}."
            )
        self.x, self.y = _check_data(x, y)
        self.normalization = normalization

    def residual(self, model) -> Float[Array, "n n_out"]:
        """f_θ(x_i) − y_i for every sample."""
        out = jax.vmap(model)(self.x)
        _check_outputs(out, self.y)
        return out - self.y

    def outputs(self, model) -> Float[Array, "n n_out"]:
        """The network's outputs on `x`: L(θ) = `from_outputs`(`outputs`(θ))."""
        return jax.vmap(model)(self.x)

    def output_gradient_at_zero(self) -> Float[Array, "n n_out"]:
        """∂L/∂f at f = 0, per sample: the data of the leading Taylor term H (SPEC §4)."""
        return jax.grad(lambda f: self.from_outputs(f))(jnp.zeros_like(self.y))

    def from_outputs(self, outputs: Float[Array, "n n_out"]) -> Scalar:
        """The loss as a function of the network's outputs on `x`."""
        _check_outputs(outputs, self.y, "the outputs (model applied to `x`) have")
        return _reduce(jnp.sum((outputs - self.y) ** 2), self.y.shape[0], self.normalization)

    def matrix_cost(self, a: Float[Array, "n_out n_in"]) -> Scalar:
        """C(A) for the linear model f(x) = A x, e.g. a deep linear network's A_θ (SPEC §3)."""
        expected = (self.y.shape[1], self.x.shape[1])
        if a.shape != expected:
            raise ValueError(f"the end-to-end matrix must have shape {expected}, got {a.shape}.")
        return self.from_outputs(self.x @ a.T)

    def __call__(self, model) -> Scalar:
        if isinstance(model, list | tuple):
            return self.matrix_cost(end_to_end_matrix(model))
        return self.from_outputs(self.outputs(model))


class LogisticLoss(AbstractObjective):
    """Mean logistic loss (1/N) Σ_i log(1 + exp(−y_i f_θ(x_i))), labels y_i ∈ {−1, +1} (SPEC §3)."""

    x: Float[Array, "n n_in"]
    y: Float[Array, "n 1"]

    def __init__(self, x, y):
        self.x, self.y = _check_data(x, y)
        if self.y.shape[1] != 1:
            raise ValueError(f"`y` must hold one ±1 label per sample, got shape {self.y.shape}.")

    def outputs(self, model) -> Float[Array, "n 1"]:
        """The network's outputs on `x`: L(θ) = `from_outputs`(`outputs`(θ))."""
        return jax.vmap(model)(self.x)

    def from_outputs(self, outputs: Float[Array, "n 1"]) -> Scalar:
        _check_outputs(outputs, self.y, "the outputs (model applied to `x`) have")
        return jnp.mean(jax.nn.softplus(-self.y * outputs))

    def output_gradient_at_zero(self) -> Float[Array, "n 1"]:
        """∂L/∂f at f = 0: −y/(2N) (SPEC §5: the NCF of the logistic loss uses y/2)."""
        return jax.grad(self.from_outputs)(jnp.zeros_like(self.y))

    def __call__(self, model) -> Scalar:
        return self.from_outputs(self.outputs(model))


class MatrixCompletion(AbstractObjective):
    """C(A) = (1/N) Σ_{(k,m) observed} (A_km − A*_km)² with N observed entries (SPEC §3).

    Call it on a `DeepLinear` or on a list of matrices (W_1, ..., W_L).

    **Arguments:**

    - `target`: the matrix A*.
    - `mask`: a 0/1 (or bool) array of the same shape; 1 marks an observed entry.
    """

    target: Float[Array, "n_out n_in"]
    mask: Float[Array, "n_out n_in"]

    def __init__(self, target, mask):
        target = jnp.asarray(target)
        mask = jnp.asarray(mask)
        if target.ndim != 2 or mask.shape != target.shape:
            raise ValueError(
                f"`target` must be 2-D and `mask` of the same shape; got {target.shape} and "
                f"{mask.shape}."
            )
        self.target = target
        self.mask = mask.astype(target.dtype)

    @property
    def n_observed(self) -> Array:
        return jnp.sum(self.mask)

    def matrix_cost(self, a: Float[Array, "n_out n_in"]) -> Scalar:
        if a.shape != self.target.shape:
            raise ValueError(
                f"the end-to-end matrix must have the shape of `target` {self.target.shape}, "
                f"got {a.shape}."
            )
        return jnp.sum(self.mask * (a - self.target) ** 2) / self.n_observed

    def outputs(self, model) -> Float[Array, "n_out n_in"]:
        """The end-to-end matrix A_θ: L(θ) = `from_outputs`(`outputs`(θ))."""
        return end_to_end_matrix(model)

    def from_outputs(self, a: Float[Array, "n_out n_in"]) -> Scalar:
        """The loss as a function of the outputs, here C(A) (`matrix_cost`)."""
        return self.matrix_cost(a)

    def __call__(self, model) -> Scalar:
        return self.matrix_cost(end_to_end_matrix(model))


def matrix_cost_gradient_at_zero(objective) -> Array:
    """G = ∇C(0) for an objective with a `matrix_cost` (SPEC §4: H(θ) = Tr[Gᵀ A_θ] for a DLN)."""
    cost = getattr(objective, "matrix_cost", None)
    if cost is None:
        raise ValueError(
            f"{type(objective).__name__} has no `matrix_cost`: G = ∇C(0) is defined for costs of "
            "the end-to-end matrix (MatrixCompletion, SquareLoss of a linear model)."
        )
    if isinstance(objective, MatrixCompletion):
        shape = objective.target.shape
    else:
        shape = (objective.y.shape[1], objective.x.shape[1])
    return jax.grad(cost)(jnp.zeros(shape, objective_dtype(objective)))


def objective_dtype(objective):
    leaves = [x for x in jax.tree_util.tree_leaves(objective) if eqx.is_inexact_array(x)]
    return leaves[0].dtype if leaves else jnp.result_type(float)
