"""Escape directions and speeds of a homogeneous Taylor term H (Jacot et al. §4.2; SPEC §5).

An escape direction is ρ ∈ S^{P−1} with ∇H(ρ) = −sρ (a critical point of H on the sphere), s its
speed; then H(ρ) = −s/k by Euler's identity. The optimal one minimises H on the sphere,
s* = −k·H(ρ*). Random restarts of Riemannian descent, polished by Riemannian Newton steps
(`saddlejax.theory._sphere`), are batched with `jax.vmap` and deduplicated modulo the network's
symmetries. (A Euclidean L-BFGS on H(x/‖x‖) stalls on deep DLNs, hence a solver on the sphere.)

Derivatives with respect to the data in H (the arrays of an `eqx.Module` H, or those a closure
captures) do not go through the solvers' loops. The speed uses the envelope theorem: with
∇H(ρ*) = μρ* and ρ* on the sphere, every change of ρ* is orthogonal to ∇H(ρ*), so
ds* = −k·∂_pH(ρ*; p)·dp at fixed ρ*. The direction uses the implicit function theorem on the
KKT system (`implicit_direction`): Hess_R(ρ*) dρ* = −P∂_p∇H(ρ*; p)·dp, dρ* ⊥ ρ*, solved by
least squares, so that where symmetries make Hess_R singular dρ* is the minimum-norm solution
(orthogonal to the symmetry orbit).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, Scalar

from .._results import RESULTS
from .._validate import check_int
from ._implicit import ESCAPE_ADJOINT, as_pytree, check_adjoint, stop_gradient
from ._sphere import (
    DEFAULT_LINEAR_SOLVER,
    flatten,
    implicit_direction,
    kkt,
    riemannian_descent,
    riemannian_newton,
)
from ._taylor import MAX_ORDER, _params


class EscapeDirections(eqx.Module):
    """Escape directions of H found from random restarts (SPEC §5).

    **Fields:**

    - `direction`: the best direction found, ρ* (a pytree shaped like `like`, unit norm).
    - `speed`: s* = −k·H(ρ*).
    - `kkt_residual`: ‖∇H(ρ*) − (ρ*ᵀ∇H(ρ*))ρ*‖.
    - `directions`, `speeds`, `kkt_residuals`, `multiplicities`: all distinct converged directions
        (leading axis), sorted by decreasing speed, and how many restarts reached each.
    - `restart_speeds`, `restart_kkt_residuals`: per restart, before deduplication.
    - `order`: k.
    - `result`: a `RESULTS` code.
    - `stats`: per restart `descent_steps`, `newton_steps_accepted` and `relative_kkt`
        (‖grad_R H‖/‖∇H‖); `n_converged`; `measured_order`, log₂(H(2ρ*)/H(ρ*)).

    Differentiable in the arrays of H: `speed` and `speeds` (envelope theorem), `direction`
    (implicit function theorem; see the module docstring). The other fields are constants.
    """

    direction: PyTree
    speed: Scalar
    kkt_residual: Scalar
    directions: PyTree
    speeds: Float[Array, " n_distinct"]
    kkt_residuals: Float[Array, " n_distinct"]
    multiplicities: Int[Array, " n_distinct"]
    restart_speeds: Float[Array, " n_restarts"]
    restart_kkt_residuals: Float[Array, " n_restarts"]
    order: int = eqx.field(static=True)
    result: RESULTS
    stats: dict


class EscapeDirection(eqx.Module):
    """One escape direction refined by Newton's method on the sphere (SPEC §5).

    **Fields:** `direction` ρ (unit norm, shaped like the guess), `speed` s = −k·H(ρ),
    `kkt_residual` ‖∇H(ρ) − (ρᵀ∇H(ρ))ρ‖, `result` (a `RESULTS` code), `stats`
    (`newton_steps_accepted`, `relative_kkt`, `measured_order` log₂(H(2ρ)/H(ρ))).
    `speed` (envelope theorem) and `direction` (implicit function theorem) are differentiable
    in the arrays of H.
    """

    direction: PyTree
    speed: Scalar
    kkt_residual: Scalar
    result: RESULTS
    stats: dict


def _relative(kkt_residual, gnorm):
    return kkt_residual / jnp.where(gnorm > 0, gnorm, 1.0)


@eqx.filter_jit
def _solve_restarts(h, x0, *, max_steps, descent_rtol, n_polish, linear_solver):
    def one(x):
        rho = x / jnp.linalg.norm(x)
        rho, steps = riemannian_descent(h, rho, max_steps, descent_rtol)
        rho, accepted = riemannian_newton(h, rho, n_polish, linear_solver, monotone=True)
        residual, gnorm, _ = kkt(h, rho)
        return rho, residual, gnorm, h(rho), h(2 * rho), steps, accepted

    return jax.vmap(one)(x0)


def _dedup(speeds, kkts, feats, ok, speed_rtol, dir_atol):
    """Greedy clustering by decreasing speed: representatives (smallest KKT residual of each
    cluster) and cluster sizes."""
    order = np.argsort(-speeds, kind="stable")
    reps: list[int] = []
    counts: list[int] = []
    scale = np.max(np.abs(speeds[ok])) if ok.any() else 1.0
    for i in order:
        if not ok[i]:
            continue
        for r, j in enumerate(reps):
            same_speed = abs(speeds[i] - speeds[j]) <= speed_rtol * scale
            if same_speed and np.linalg.norm(feats[i] - feats[j]) <= dir_atol * max(
                1.0, np.linalg.norm(feats[j])
            ):
                counts[r] += 1
                if kkts[i] < kkts[j]:
                    reps[r] = i
                break
        else:
            reps.append(i)
            counts.append(1)
    return reps, counts


# H(2ρ) = 2^k·H(ρ) must hold to this relative accuracy (roundoff of a homogeneous H is far
# below it; a wrong order misses by a factor 2 or more).
HOMOGENEITY_RTOL = 1e-6


def measured_order(value, doubled):
    """log₂(H(2ρ)/H(ρ)): the homogeneity order of H measured along ρ (NaN where H(ρ) = 0 or
    the signs differ, where no order fits)."""
    ratio = doubled / jnp.where(value == 0, 1.0, value)
    positive = (value != 0) & (ratio > 0)
    return jnp.where(positive, jnp.log2(jnp.where(positive, ratio, 1.0)), jnp.nan)


def order_matches(order, value, doubled, gnorm):
    """Whether H(2ρ) = 2^k·H(ρ) to `HOMOGENEITY_RTOL`. Not tested (True) where H(ρ) is at the
    roundoff of its terms, k|H(ρ)| ≤ 1e−8·‖∇H(ρ)‖ (e.g. min H = 0 at a minimum): a relative
    test of two cancelled sums would fail on roundoff alone."""
    scale = 2.0**order
    gap = jnp.abs(doubled - scale * value)
    homogeneous = gap <= HOMOGENEITY_RTOL * (jnp.abs(doubled) + scale * jnp.abs(value))
    return homogeneous | (order * jnp.abs(value) <= 1e-8 * gnorm)


def _order_error(order, measured, where) -> ValueError:
    return ValueError(
        f"`order` = {order}, but H(2ρ) = 2^{float(measured):.4g}·H(ρ) at {where}: H is not "
        f"{order}-homogeneous. Pass the order of the first non-vanishing Taylor term "
        "(`taylor_term(...).order`)."
    )


def _live_and_frozen(H, like):
    """(h, h₀, x, unravel): h = H on R^P with its arrays as leaves (closures converted, so that
    the arrays they capture carry derivatives), h₀ = h with those leaves stop-gradiented (what
    the solvers run on), x = the flattened, stop-gradiented parameters of `like`."""
    _, flat, unravel = flatten(H, like)
    h, _, _ = flatten(as_pytree(H, unravel(flat)), like)
    return h, stop_gradient(h), stop_gradient(flat), unravel


_ESCAPE = "escape directions (whose solvers' loops are not differentiated)"


def _check_escape_args(order, n_restarts, max_steps, n_polish):
    """A ValueError naming the first integer setting of `optimal_escape` that is not an int in
    range: `order` in [2, `MAX_ORDER`] (the orders `taylor_term` reads), `n_restarts` at most
    2¹⁶ (one batched solve)."""
    if isinstance(order, int) and not isinstance(order, bool) and order < 2:
        raise ValueError(
            f"`order` must be ≥ 2 (the point must be critical, k = 1 has no escape directions), "
            f"got {order}."
        )
    check_int("order", order, minimum=2, maximum=MAX_ORDER)
    check_int("n_restarts", n_restarts, maximum=2**16)
    check_int("max_steps", max_steps, maximum=2**31 - 1)
    check_int("n_polish", n_polish, minimum=0, maximum=2**31 - 1)


def _starting_points(key, flat, n_restarts, starts):
    """Gaussian starts in R^P, or the given `starts` (leading restart axis) flattened."""
    if starts is None:
        return jr.normal(key, (n_restarts, flat.size), flat.dtype)
    return jax.vmap(lambda t: ravel_pytree(_params(t))[0])(starts)


def _features(rho, unravel, invariant):
    """What deduplication compares: ρ itself, or `invariant(ρ)` flattened (one row per ρ)."""
    if invariant is None:
        return rho
    return jax.vmap(lambda r: ravel_pytree(_params(invariant(unravel(r))))[0])(rho)


def _distinct(rho, speeds, kkts, ok, unravel, invariant, speed_rtol, direction_atol):
    """Representatives and multiplicities of the distinct converged directions, best first, and
    the result code; if none converged, the fastest finite restart and `escape_not_converged`."""
    feats = _features(rho, unravel, invariant)
    reps, counts = _dedup(
        np.asarray(speeds), np.asarray(kkts), np.asarray(feats), ok, speed_rtol, direction_atol
    )
    if reps:
        return reps, counts, RESULTS.successful
    best = int(np.nanargmax(np.where(np.isfinite(speeds), speeds, -np.inf)))
    return [best], [1], RESULTS.escape_not_converged


def optimal_escape(
    H: Callable,
    order: int,
    like: PyTree,
    *,
    key: PRNGKeyArray,
    n_restarts: int = 16,
    max_steps: int = 5000,
    descent_rtol: float = 1e-7,
    n_polish: int = 8,
    linear_solver: lx.AbstractLinearSolver = DEFAULT_LINEAR_SOLVER,
    kkt_rtol: float = 1e-8,
    invariant: Callable | None = None,
    speed_rtol: float = 1e-7,
    direction_atol: float = 1e-4,
    starts: PyTree | None = None,
    adjoint: optx.ImplicitAdjoint = ESCAPE_ADJOINT,
) -> EscapeDirections:
    """The optimal escape direction ρ* = argmin_{S^{P−1}} H and speed s* = −k·H(ρ*) (SPEC §5).

    Jacot et al. §4.2 (escape directions, Prop. 14), Kumar & Haupt (KKT points of the NCF).
    Solver: vmapped Riemannian Barzilai–Borwein descent from `n_restarts` random starts, then
    `n_polish` Riemannian Newton steps. All converged restarts (relative KKT residual
    ‖∇H − (ρᵀ∇H)ρ‖/‖∇H‖ ≤ `kkt_rtol`) are deduplicated into `directions`: two restarts are the
    same direction when their speeds agree to `speed_rtol` (relative to the largest) and
    `invariant(ρ)` agree to `direction_atol`. `invariant` removes the network's symmetries (e.g.
    `dln_invariant`: the end-to-end matrix A_ρ, invariant under rotations; `neuron_invariant`:
    sorted neurons, invariant under permutations); default: ρ itself.

    Restarts are local searches: the global minimum is found with high probability, not
    certainty. The non-optimal escape directions that restarts find are local minima of H on
    the sphere; saddle-type escape directions need `refine_escape_direction` from a guess.

    **Arguments:**

    - `H`: k-homogeneous function on pytrees shaped like `like` (e.g. `taylor_term(...).H`).
        Pass an `eqx.Module` (or a `TaylorTerm`'s `H`) so that new data of the same shapes reuse
        the compiled solver.
    - `order`: k.
    - `like`: a pytree fixing the structure (e.g. the critical point or a model).
    - `key`: PRNG key for the Gaussian starts.
    - `n_restarts`, `max_steps` (descent steps), `descent_rtol` (relative KKT residual that ends
        the descent), `n_polish` (Newton steps), `linear_solver` (for the Newton systems;
        default GMRES at rtol 1e−12, restart 30): solver settings.
    - `kkt_rtol`, `invariant`, `speed_rtol`, `direction_atol`: convergence and deduplication.
    - `starts`: optional starting directions (pytree shaped like `like` with a leading restart
        axis) used instead of random starts.
    - `adjoint`: how `direction` is differentiated: an `optimistix.ImplicitAdjoint` whose
        `linear_solver` solves the implicit-function-theorem system (default LSMR at rtol
        1e−12: the minimum-norm solution where symmetries make it singular). A failed solve
        raises when the derivative is computed (e.g. at a nearly degenerate ρ*, σ_1(G) ≈
        σ_2(G); see `implicit_direction`); the speed's derivative does not need the solve:
        `escape_speed(H, k, jax.lax.stop_gradient(esc.direction))`.

    **Differentiation:** `speed`, `speeds` and `direction` are differentiable with respect to
    the arrays of H (the data of a `dln_taylor_term(G)`, of a `TaylorTerm`'s loss, or arrays a
    closure captures), in forward and reverse mode, by the envelope theorem and the implicit
    function theorem at the solution (module docstring); the restarts themselves are not
    differentiated. This function reads concrete values (deduplication), so it runs under
    `jax.grad`/`jax.jvp` but not under `jit` or `vmap`; `refine_escape_direction` does.

    **Returns:** an `EscapeDirections`. Its `result` is `escape_not_converged` if no restart
    converged, `no_escape_direction` if H ≥ 0 on the sphere (s* ≤ `speed_rtol`·max|s|: the
    critical point is a minimum of its leading term; `direction` is then the minimiser of H
    with s* ≤ 0), and successful otherwise.

    **Raises:** `ValueError` if H(2ρ*) ≠ 2^k·H(ρ*) (H is not `order`-homogeneous; the measured
    order, log₂(H(2ρ*)/H(ρ*)), is in `stats["measured_order"]` when it matches).

    **Example:**

    ```python
    taylor = saddlejax.taylor_term(loss, origin)
    esc = saddlejax.optimal_escape(taylor.H, taylor.order, origin, key=jr.key(0),
                                   invariant=saddlejax.dln_invariant)
    esc.speed, esc.direction
    jax.grad(lambda g: saddlejax.optimal_escape(saddlejax.dln_taylor_term(g), L, like,
                                                key=jr.key(0)).speed)(G)  # ∂s*/∂G
    ```
    """
    _check_escape_args(order, n_restarts, max_steps, n_polish)
    check_adjoint(adjoint, what=_ESCAPE, unrolled_ok=False)
    h, h0, flat, unravel = _live_and_frozen(H, like)
    x0 = _starting_points(key, flat, n_restarts, stop_gradient(starts))
    rho, residuals, gnorms, values, doubled, steps, accepted = _solve_restarts(
        h0,
        x0,
        max_steps=max_steps,
        descent_rtol=descent_rtol,
        n_polish=n_polish,
        linear_solver=linear_solver,
    )
    speeds = -order * values
    rel = _relative(residuals, gnorms)
    ok = np.asarray(jnp.isfinite(speeds) & (rel <= kkt_rtol))
    reps, counts, result = _distinct(
        rho, speeds, residuals, ok, unravel, invariant, speed_rtol, direction_atol
    )
    best, idx = reps[0], jnp.asarray(reps)
    if not bool(order_matches(order, values[best], doubled[best], gnorms[best])):
        measured = measured_order(values[best], doubled[best])
        raise _order_error(order, measured, "the direction found")
    finite = np.asarray(speeds)[np.isfinite(np.asarray(speeds))]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    if result == RESULTS.successful and not float(speeds[best]) > speed_rtol * scale:
        result = RESULTS.no_escape_direction
    if _traced(h):
        direction, live_speeds = _differentiable(h, rho[best], rho[idx], order, adjoint)
    else:
        direction, live_speeds = rho[best], speeds[idx]
    return EscapeDirections(
        direction=unravel(direction),
        speed=live_speeds[0],
        kkt_residual=residuals[best],
        directions=jax.vmap(unravel)(rho[idx]),
        speeds=live_speeds,
        kkt_residuals=residuals[idx],
        multiplicities=jnp.asarray(counts),
        restart_speeds=speeds,
        restart_kkt_residuals=residuals,
        order=order,
        result=result,
        stats={
            "descent_steps": steps,
            "newton_steps_accepted": accepted,
            "relative_kkt": rel,
            "n_converged": int(ok.sum()),
            "measured_order": measured_order(values[best], doubled[best]),
        },
    )


@eqx.filter_jit
def _differentiable(h, best, others, order, adjoint):
    """ρ = `best` with its implicit derivative, and −k·h at `others` (leading axis) with their
    envelope derivative: the live h at the frozen directions."""
    return implicit_direction(h, best, adjoint), -order * jax.vmap(h)(others)


def _traced(tree) -> bool:
    """Whether any leaf is a tracer: without one (no transformation around the call) there is
    nothing to differentiate, and the frozen values are returned as they are."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


@eqx.filter_jit
def _newton(h, rho, max_steps, linear_solver):
    return riemannian_newton(h, rho, max_steps, linear_solver, monotone=False)


def refine_escape_direction(
    H: Callable,
    order: int,
    guess: PyTree,
    *,
    max_steps: int = 20,
    linear_solver: lx.AbstractLinearSolver = DEFAULT_LINEAR_SOLVER,
    kkt_rtol: float = 1e-8,
    adjoint: optx.ImplicitAdjoint = ESCAPE_ADJOINT,
) -> EscapeDirection:
    """Newton's method on S^{P−1} for ∇H(ρ) = −sρ from `guess`: converges to the nearby escape
    direction of any index — minimum, saddle or maximum of H on the sphere (SPEC §5).

    **Arguments:** `H`, `order` (k), `guess` (a pytree, normalised first); `max_steps` Newton
    steps, each solved by `linear_solver`; `kkt_rtol`: the relative KKT residual
    ‖∇H − (ρᵀ∇H)ρ‖/‖∇H‖ below which the result is successful; `adjoint`: as in
    `optimal_escape`.

    **Differentiation:** `speed` and `direction` are differentiable with respect to the arrays
    of H (envelope and implicit function theorems at the refined ρ, not through the Newton
    steps), in forward and reverse mode, under `jit` and `vmap` (e.g. `jax.vmap(jax.grad(f))`
    over data sets, each refined from its own guess). The guess carries no derivative.

    **Returns:** an `EscapeDirection` with s = −k·H(ρ) (negative at a critical point of H on
    the sphere where H > 0: a KKT point that is not an escape direction).

    **Raises:** `ValueError` if H(2ρ) ≠ 2^k·H(ρ) at the refined ρ (H is not `order`-homogeneous;
    under a user's `jit` the result is `order_mismatch` instead).
    """
    check_adjoint(adjoint, what=_ESCAPE, unrolled_ok=False)
    h, h0, flat, unravel = _live_and_frozen(H, guess)
    rho, accepted = _newton(h0, flat / jnp.linalg.norm(flat), max_steps, linear_solver)
    residual, gnorm, _ = kkt(h0, rho)
    rel = _relative(residual, gnorm)
    value, doubled = h0(rho), h0(2 * rho)
    matches = order_matches(order, value, doubled, gnorm)
    if not isinstance(matches, jax.core.Tracer) and not bool(matches):
        raise _order_error(order, measured_order(value, doubled), "the refined direction")
    result = RESULTS.where(
        jnp.isfinite(rel) & (rel <= kkt_rtol),
        RESULTS.successful,
        RESULTS.nonlinear_max_steps_reached,
    )
    result = RESULTS.where(matches, result, RESULTS.order_mismatch)
    stats = {
        "newton_steps_accepted": accepted,
        "relative_kkt": rel,
        "measured_order": measured_order(value, doubled),
    }
    if _traced(h):
        rho, speed = _differentiable(h, rho, rho[None], order, adjoint)
        speed = speed[0]
    else:
        speed = -order * value
    return EscapeDirection(unravel(rho), speed, residual, result, stats)


def escape_speed(H: Callable, order: int, direction: PyTree) -> Scalar:
    """s = −k·H(ρ/‖ρ‖) (SPEC §5).

    Differentiable in H's arrays and in `direction`. At an escape direction the derivative in
    `direction` vanishes (∇H(ρ) ∥ ρ), so at a solver's ρ* this is the envelope theorem:
    ds* = −k·∂_pH(ρ*; p)·dp, e.g. `jax.grad(lambda g: escape_speed(dln_taylor_term(g), L, ρ*))`.
    """
    h, flat, _ = flatten(H, direction)
    return -order * h(flat / jnp.linalg.norm(flat))


def kkt_residual(H: Callable, direction: PyTree) -> Scalar:
    """‖∇H(ρ) − (ρᵀ∇H(ρ))ρ‖ at ρ = direction/‖direction‖: zero iff ρ is an escape direction."""
    h, flat, _ = flatten(H, direction)
    return kkt(h, flat / jnp.linalg.norm(flat))[0]
