"""Neural correlation functions and their KKT points (Kumar & Haupt; SPEC §5, §6).

N_y(w) = yᵀf(X; w) = Σ_i ⟨y_i, f(x_i; w)⟩. For a per-sample loss near f = 0, −∇L ≈ ∇N_ỹ with
ỹ = −∂L/∂f(0), so N_ỹ = −H exactly (square loss "mean": ỹ = (2/N)y; "half_sum": ỹ = y; logistic:
ỹ = y/(2N)). Non-negative KKT points of max N(w) s.t. ‖w‖ = 1, i.e. ∇N(w) = λw with
λ = k·N(w) ≥ 0, are exactly the escape directions of H = −N with H(ρ) ≤ 0, and λ is their speed.
"""

import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Scalar

from .._results import RESULTS, NumericalWarning
from .._validate import check_int, check_key, check_real
from ..nn._kinks import relu
from ._escape import (
    EscapeDirections,
    _dedup,
    _features,
    _relative,
    _solve_restarts,
    _starting_points,
    kkt_residual,
    optimal_escape,
)
from ._sphere import DEFAULT_LINEAR_SOLVER, flatten, kkt, riemannian_newton
from ._taylor import MAX_ORDER, _params

# Beyond int32 the solvers' step counters overflow; no search needs 2³¹ steps.
_MAX_STEPS = 2**31 - 1


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

    - `points`: unit w with ∇N(w) = λw and N(w) ≥ 0 (leading axis), sorted by decreasing N:
        local maxima, saddles and local minima of N on the sphere alike.
    - `values`: N(w) ≥ 0.
    - `multipliers`: λ = k·N(w).
    - `kkt_residuals`: ‖∇N(w) − (wᵀ∇N(w))w‖.
    - `escape`: the `EscapeDirections` of H = −N from the maximising restarts (its best
        direction is the global maximiser found); its `result` is this solve's (also as
        `.result`).
    - `stats`: the maximising restarts' statistics (`escape.stats`) and `n_points_by_search`:
        how many converged points with N ≥ 0 each search returned (maximising descent after its
        deduplication, minimising descent, Newton from random starts) before they were merged.
    """

    points: PyTree
    values: Array
    multipliers: Array
    kkt_residuals: Array
    escape: EscapeDirections
    stats: dict

    @property
    def result(self) -> RESULTS:
        return self.escape.result


class _Signed(eqx.Module):
    """sign·fn(w); `sign` is an array, so N and −N share one compiled sphere solver."""

    fn: Callable
    sign: Array

    def __call__(self, w):
        return self.sign * self.fn(w)


@eqx.filter_jit
def _newton_restarts(h, x0, max_steps, linear_solver):
    """Riemannian Newton on the KKT residual of h from each row of `x0`: converges to the nearby
    critical point of h on the sphere of any index (saddles included)."""

    def one(x):
        rho, _ = riemannian_newton(
            h, x / jnp.linalg.norm(x), max_steps, linear_solver, monotone=False
        )
        residual, gnorm, _ = kkt(h, rho)
        return rho, residual, gnorm, h(rho)

    return jax.vmap(one)(x0)


def ncf_kkt_points(
    N: Callable,
    order: int,
    like: PyTree,
    *,
    key: PRNGKeyArray,
    n_restarts: int = 16,
    max_steps: int = 5000,
    descent_rtol: float = 1e-7,
    n_polish: int = 8,
    n_newton: int = 30,
    linear_solver: lx.AbstractLinearSolver = DEFAULT_LINEAR_SOLVER,
    kkt_rtol: float = 1e-8,
    invariant: Callable | None = None,
    speed_rtol: float = 1e-7,
    direction_atol: float = 1e-4,
    starts: PyTree | None = None,
) -> NCFKKTPoints:
    """The non-negative KKT points of max N(w) s.t. ‖w‖ = 1: every critical point of N on the
    unit sphere (∇N(w) = λw, λ = k·N(w) by Euler's identity) with N(w) ≥ 0 (SPEC §5).

    Three searches from `n_restarts` random starts each, merged and deduplicated as in
    `optimal_escape`: Riemannian descent on −N (local maxima; this is
    `optimal_escape(−N, order, like, ...)`, kept as `escape`), Riemannian descent on N (local
    minima of N on the sphere), and Riemannian Newton on the KKT residual (`n_newton` steps; the
    nearby critical point of any index, so saddles of N on the sphere are found from starts in
    their basin of Newton's method). Points with N(w) < 0 are dropped. Restarts are local
    searches: every point is found with high probability, not certainty; a point that one
    needs can be refined from a guess with `refine_escape_direction(−N, order, guess)`.
    Where N vanishes on an open set of the sphere (e.g. a ReLU neuron that no input activates),
    every point there is a KKT point with λ = 0: those found are listed as they come.

    Every point returned has relative KKT residual ‖∇N − (wᵀ∇N)w‖/‖∇N‖ ≤ `kkt_rtol` (only
    converged restarts are kept). When no maximising restart converges, the best estimate of
    the maximiser, `escape.direction`, is above that tolerance and is not among `points`: then
    `result` is `escape_not_converged` and a `NumericalWarning` says so, with its residual.

    **Arguments:** as `optimal_escape` (`N` in place of H), and `n_newton`: Newton steps of
    the third search.

    **Returns:** an `NCFKKTPoints`.

    **Raises:** `ValueError` for an argument of the wrong type or out of range, naming it.
    **Warns:** `NumericalWarning` when no maximising restart reaches `kkt_rtol` (above).
    """
    order, n_restarts, max_steps, n_polish, n_newton, kkt_rtol = _check_kkt_args(
        order, n_restarts, max_steps, n_polish, n_newton, kkt_rtol
    )
    for name, value in (
        ("descent_rtol", descent_rtol),
        ("speed_rtol", speed_rtol),
        ("direction_atol", direction_atol),
    ):
        check_real(name, value, low=0.0)
    k_max, k_min, k_newton = jr.split(check_key("key", key), 3)
    esc = optimal_escape(
        _Signed(N, jnp.asarray(-1.0)),
        order,
        like,
        key=k_max,
        n_restarts=n_restarts,
        max_steps=max_steps,
        descent_rtol=descent_rtol,
        n_polish=n_polish,
        linear_solver=linear_solver,
        kkt_rtol=kkt_rtol,
        invariant=invariant,
        speed_rtol=speed_rtol,
        direction_atol=direction_atol,
        starts=starts,
    )
    h_max, flat, unravel = flatten(_Signed(N, jnp.asarray(-1.0)), like)
    h_min, _, _ = flatten(_Signed(N, jnp.asarray(1.0)), like)
    # Minima of N: the maximising restarts' compiled solver, applied to +N.
    low = _solve_restarts(
        h_min,
        _starting_points(k_min, flat, n_restarts, starts),
        max_steps=max_steps,
        descent_rtol=descent_rtol,
        n_polish=n_polish,
        linear_solver=linear_solver,
    )
    newton = _newton_restarts(
        h_max, _starting_points(k_newton, flat, n_restarts, starts), n_newton, linear_solver
    )
    # (points, KKT residuals, N, converged) of each search, the maxima already deduplicated.
    n_max = esc.speeds.shape[0]
    searches = [
        (
            jax.vmap(lambda d: ravel_pytree(_params(d))[0])(esc.directions),
            esc.kkt_residuals,
            esc.speeds / order,
            np.full(n_max, bool(esc.result != RESULTS.escape_not_converged)),
        ),
        (low[0], low[1], low[3], np.asarray(_relative(low[1], low[2]) <= kkt_rtol)),
        (newton[0], newton[1], -newton[3], np.asarray(_relative(newton[1], newton[2]) <= kkt_rtol)),
    ]
    rho, residuals, values = (jnp.concatenate([s[i] for s in searches]) for i in range(3))
    valid = np.asarray(jnp.isfinite(values) & (values >= 0))
    ok = np.concatenate([s[3] for s in searches]) & valid
    bounds = np.cumsum([0] + [len(s[3]) for s in searches])
    n_found = [int(ok[lo:hi].sum()) for lo, hi in zip(bounds[:-1], bounds[1:])]
    multipliers = order * values
    reps, _ = _dedup(
        np.asarray(multipliers),
        np.asarray(residuals),
        np.asarray(_features(rho, unravel, invariant)),
        ok,
        speed_rtol,
        direction_atol,
    )
    idx = jnp.asarray(reps, dtype=jnp.int32)
    if esc.result == RESULTS.escape_not_converged:
        _warn_not_converged(h_max, esc.direction, kkt_rtol, len(reps), flat.dtype)
    return NCFKKTPoints(
        points=jax.vmap(unravel)(rho[idx]),
        values=values[idx],
        multipliers=multipliers[idx],
        kkt_residuals=residuals[idx],
        escape=esc,
        stats=dict(esc.stats, n_points_by_search=n_found),
    )


def _check_kkt_args(order, n_restarts, max_steps, n_polish, n_newton, kkt_rtol):
    """The validated integer settings and `kkt_rtol` of `ncf_kkt_points`."""
    return (
        check_int("order", order, minimum=2, maximum=MAX_ORDER),
        check_int("n_restarts", n_restarts, maximum=2**16),
        check_int("max_steps", max_steps, maximum=_MAX_STEPS),
        check_int("n_polish", n_polish, minimum=0, maximum=_MAX_STEPS),
        check_int("n_newton", n_newton, minimum=0, maximum=_MAX_STEPS),
        check_real("kkt_rtol", kkt_rtol, low=0.0, low_open=True),
    )


@eqx.filter_jit
def _relative_kkt(h, rho):
    residual, gnorm, _ = kkt(h, rho / jnp.linalg.norm(rho))
    return _relative(residual, gnorm)


def _warn_not_converged(h, direction, kkt_rtol, n_points, dtype):
    """`NumericalWarning`: the maximiser's estimate is above the KKT tolerance (SPEC §5)."""
    flat = ravel_pytree(_params(direction))[0]
    rel = float(_relative_kkt(h, flat))
    eps = float(jnp.finfo(dtype).eps)
    roundoff = (
        f" `kkt_rtol` is below 100·eps of the {jnp.dtype(dtype).name} parameters "
        f"(eps = {eps:.3g}): roundoff alone exceeds it."
        if kkt_rtol < 100 * eps
        else ""
    )
    warnings.warn(
        f"No maximising restart of `ncf_kkt_points` reached the relative KKT residual "
        f"`kkt_rtol` = {kkt_rtol:g}: the best estimate of the maximiser of N, "
        f"`escape.direction`, has relative KKT residual {rel:.3g}, is not a KKT point to that "
        f"tolerance and is not among the {n_points} `points` returned "
        f"(`result` is `escape_not_converged`). Raise `max_steps` or `n_polish`, or loosen "
        f"`kkt_rtol`.{roundoff}",
        NumericalWarning,
        stacklevel=3,
    )


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
    return relu(jnp.dot(w, x)) ** 2


def ncf_kkt_residual(N: Callable, w: PyTree) -> Scalar:
    """‖∇N(w) − (wᵀ∇N(w))w‖ at w/‖w‖: zero iff w is a KKT point of the constrained NCF."""
    return kkt_residual(N, w)
