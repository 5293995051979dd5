"""Neural correlation functions and their KKT points (Kumar & Haupt; SPEC §5, §6).

N_y(w) = yᵀf(X; w) = Σ_i ⟨y_i, f(x_i; w)⟩. For a per-sample loss near f = 0, −∇L ≈ ∇N_ỹ with
ỹ = −∂L/∂f(0), so N_ỹ = −H exactly (square loss "mean": ỹ = (2/N)y; "half_sum": ỹ = y; logistic:
ỹ = y/(2N)). Non-negative KKT points of max N(w) s.t. ‖w‖ = 1, i.e. ∇N(w) = λw with
λ = k·N(w) ≥ 0, are exactly the escape directions of H = −N with H(ρ) ≤ 0, and λ is their speed.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Scalar

from .._results import RESULTS
from ._escape import EscapeDirections, kkt_residual, optimal_escape
from ._taylor import _params


class NCF(eqx.Module):
    """N_y(δ) = Σ_i ⟨y_i, f(x_i; θ_s + δ) − f(x_i; θ_s)⟩ (SPEC §5, §6).

    With θ_s = 0 (`base=None`) this is Kumar & Haupt's N_y(w) = yᵀf(X; w) for a network with
    f(X; 0) = 0. At a saddle θ_s = (w_big, 0) of a separable network with y the residual
    r = y − f(X; θ_s) and δ on the small weights, it is their residual NCF N_r(w_small).
    Call it on a pytree shaped like the model (or its array part).
    """

    model: PyTree
    x: Float[Array, "n n_in"]
    y: Float[Array, "n n_out"]
    base_outputs: Float[Array, "n n_out"]
    moving: PyTree | Callable = eqx.is_inexact_array

    def __call__(self, delta) -> Scalar:
        params, static = eqx.partition(self.model, self.moving)
        moved = eqx.combine(jax.tree_util.tree_map(jnp.add, params, _params(delta)), static)
        return jnp.sum(self.y * (jax.vmap(moved)(self.x) - self.base_outputs))


def _as_2d(y, n):
    y = jnp.asarray(y)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(
            f"`y` must have shape (n_samples, n_out) with n_samples = {n}, got {y.shape}."
        )
    return y


def ncf(model: PyTree, x: Array, y: Array) -> NCF:
    """N_y(w) = yᵀf(X; w) for the network `model` (its parameter values are ignored: the NCF is
    a function of w, evaluated at `model`'s structure with f(X; 0) = 0 assumed)."""
    x = jnp.asarray(x)
    zero = jax.tree_util.tree_map(
        lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, model
    )
    y = _as_2d(y, x.shape[0])
    return NCF(zero, x, y, jnp.zeros_like(y))


def ncf_from_objective(objective, model: PyTree) -> NCF:
    """The NCF with ỹ = −∂L/∂f(0), so that N_ỹ = −H exactly at the origin (SPEC §5: "up to the
    loss's normalization"). `objective` must have `x` and `output_gradient_at_zero()`."""
    if not hasattr(objective, "output_gradient_at_zero"):
        raise ValueError(
            f"{type(objective).__name__} has no `output_gradient_at_zero`; use `ncf(model, x, y)`."
        )
    return ncf(model, objective.x, -objective.output_gradient_at_zero())


def residual_ncf(objective, saddle: PyTree, small: PyTree | Callable) -> NCF:
    """The NCF at a saddle θ_s with the residual r = y − f(X; θ_s) in place of y (SPEC §6).

    `small` selects the small weights that move (a filter: callable on leaves or a pytree of
    bools, e.g. from `saddlejax.freeze`); the NCF is a function of δ on those weights, the other
    weights staying at θ_s. `objective` must have `x` and `y` (e.g. a `SquareLoss`). Pass
    `eqx.filter(saddle, small)` as `like` to `ncf_kkt_points`.
    """
    x, y = objective.x, objective.y
    base = jax.vmap(saddle)(x)
    if base.shape != y.shape:
        raise ValueError(f"`saddle` maps `x` to shape {base.shape}, but `y` has shape {y.shape}.")
    return NCF(saddle, x, y - base, base, small)


class NCFKKTPoints(eqx.Module):
    """Non-negative KKT points of max N(w) s.t. ‖w‖ = 1 (Kumar & Haupt; SPEC §5).

    **Fields:**

    - `points`: unit w with ∇N(w) = λw (leading axis), sorted by decreasing N.
    - `values`: N(w) ≥ 0.
    - `multipliers`: λ = k·N(w).
    - `kkt_residuals`: ‖∇N(w) − (wᵀ∇N(w))w‖.
    - `escape`: the underlying `EscapeDirections` of H = −N; its `result` and `stats` are this
        solve's (also as `.result`, `.stats`).
    """

    points: PyTree
    values: Array
    multipliers: Array
    kkt_residuals: Array
    escape: EscapeDirections

    @property
    def result(self) -> RESULTS:
        return self.escape.result

    @property
    def stats(self) -> dict:
        return self.escape.stats


class _Neg(eqx.Module):
    fn: Callable

    def __call__(self, w):
        return -self.fn(w)


def ncf_kkt_points(
    N: Callable, order: int, like: PyTree, *, key: PRNGKeyArray, **kwargs
) -> NCFKKTPoints:
    """Maximise the NCF on the unit sphere from random restarts and keep its non-negative KKT
    points: `optimal_escape(−N, order, like, ...)` filtered to N(w) ≥ 0 (SPEC §5).

    `kwargs` go to `optimal_escape` (n_restarts, invariant, tolerances, …).
    """
    esc = optimal_escape(_Neg(N), order, like, key=key, **kwargs)
    keep = jnp.nonzero(esc.speeds >= 0)[0]
    points = jax.tree_util.tree_map(lambda a: a[keep], esc.directions)
    values = esc.speeds[keep] / order
    return NCFKKTPoints(points, values, esc.speeds[keep], esc.kkt_residuals[keep], esc)


class _NeuronNCF(eqx.Module):
    neuron: Callable
    x: Float[Array, "n d"]
    y: Float[Array, " n"]

    def __call__(self, w) -> Scalar:
        return jnp.sum(self.y * jax.vmap(lambda xi: self.neuron(w, xi))(self.x))


def neuron_ncf(neuron: Callable, x: Array, y: Array) -> Callable:
    """Per-neuron NCF N_j(w) = Σ_i y_i g(w; x_i) of a separable network f = Σ_j g(w_j; x)
    (Kumar & Haupt; SPEC §6): each neuron converges in direction to a KKT point of it.

    `neuron(w, x_i)` is one sub-network's scalar output (e.g. `squared_relu_neuron`). The NCF is
    a pytree, so the sphere solver compiled for one data set is reused for another of the same
    shapes.
    """
    x = jnp.asarray(x)
    return _NeuronNCF(neuron, x, _as_2d(y, x.shape[0])[:, 0])


def squared_relu_neuron(w: Float[Array, " d"], x: Float[Array, " d"]) -> Scalar:
    """g(w; x) = max(0, wᵀx)², one neuron of `SquaredReLU` (2-homogeneous)."""
    return jax.nn.relu(jnp.dot(w, x)) ** 2


def ncf_kkt_residual(N: Callable, w: PyTree) -> Scalar:
    """‖∇N(w) − (wᵀ∇N(w))w‖ at w/‖w‖: zero iff w is a KKT point of the constrained NCF."""
    return kkt_residual(N, w)
