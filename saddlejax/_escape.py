"""Escape directions and speeds of a homogeneous Taylor term H (SPEC §5; Jacot et al. §4.2).

An escape direction is ρ ∈ S^{P−1} with ∇H(ρ) = −sρ (a critical point of H on the sphere), s
its speed; then H(ρ) = −s/k by Euler's identity. The optimal one minimises H on the sphere,
s* = −k·H(ρ*). Everything is matrix-free: H, ∇H and Hessian-vector products come from JAX, and
restarts are batched with `jax.vmap`.

Solver (our numerical choice):

1. Riemannian gradient descent on S^{P−1} (projected gradient, normalisation retraction) with
    Barzilai–Borwein steps and Armijo backtracking (Wen & Yin 2013), from `n_restarts` Gaussian
    starts, vmapped, until the relative KKT residual is below `descent_rtol`. (We tried
    `optimistix.LBFGS` on H(x/‖x‖): for L = 5 DLNs half the restarts stalled at 2000 steps.)
2. A few Riemannian Newton steps to polish: solve Hess_R(ρ) d = −grad_R(ρ) on the tangent space
    with `lineax.GMRES` on Hessian-vector products (Hess_R v = P∇²H(ρ)v − (ρᵀ∇H(ρ))v, P = I − ρρᵀ),
    retract ρ ← (ρ + d)/‖ρ + d‖, and keep a step only if it lowers the KKT residual. GMRES copes
    with the singular directions that symmetries (DLN rotations, permutations) create.

Reported: the KKT residual ‖∇H(ρ) − (ρᵀ∇H(ρ))ρ‖ (it is the Riemannian gradient's norm).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
from jax.experimental.sparse.linalg import lobpcg_standard
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, Scalar

from ._taylor import _params


class ESCAPE_RESULTS(eqx.Enumeration):
    """Outcome of `optimal_escape`. The values are the messages a user reads."""

    successful = ""
    not_converged = (
        "No restart reached the KKT tolerance `kkt_rtol`: increase `max_steps` or `n_polish`, "
        "or loosen `kkt_rtol` (a non-smooth H, e.g. a ReLU net whose optimum has a kink, may "
        "not allow a tight residual)."
    )


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
    - `result`: an `ESCAPE_RESULTS` code.
    - `stats`: solver counters (L-BFGS steps per restart, accepted Newton steps, relative KKT).
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
    result: ESCAPE_RESULTS
    stats: dict


# ---------------------------------------------------------------------------------------------
# flat-vector machinery: the sphere S^{P−1} is the mathematical object, so ravel at this edge


class _FlatH(eqx.Module):
    """h(x) = H(unravel(x)) on flat vectors, as a pytree so that jit caches on shapes, not on
    the identity of H (a `TaylorTerm.H` of new data does not recompile)."""

    H: Callable
    treedef: object = eqx.field(static=True)
    shapes: tuple = eqx.field(static=True)

    def unravel(self, x):
        sizes = [int(np.prod(s)) for s in self.shapes]
        parts = jnp.split(x, np.cumsum(sizes)[:-1]) if len(sizes) > 1 else [x]
        leaves = [p.reshape(s) for p, s in zip(parts, self.shapes)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def __call__(self, x):
        return self.H(self.unravel(x))


def _flat_H(H, like):
    params = _params(like)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    flat = jnp.concatenate([jnp.ravel(x) for x in leaves])
    h = _FlatH(H, treedef, tuple(x.shape for x in leaves))
    return h, flat, h.unravel


def _kkt(h, rho):
    g = jax.grad(h)(rho)
    mu = jnp.dot(rho, g)
    gr = g - mu * rho
    return jnp.linalg.norm(gr), jnp.linalg.norm(g), mu


def _newton_polish(h, rho, n_steps, gmres_rtol, restart, sign):
    """Riemannian Newton on S^{P−1} for ∇H(ρ) ∥ ρ, keeping a step only when the KKT residual
    drops (and, when minimising, H does not rise beyond roundoff). Stops at the first rejected
    step (roundoff reached) or after `n_steps`."""

    def cond(carry):
        rho, accepted, n, done = carry
        return (n < n_steps) & ~done

    def body(carry):
        rho, accepted, n, _ = carry
        g = jax.grad(h)(rho)
        mu = jnp.dot(rho, g)
        gr = g - mu * rho

        def hvp(v):
            return jax.jvp(jax.grad(h), (rho,), (v,))[1]

        def op(v):
            pv = v - jnp.dot(rho, v) * rho
            hv = hvp(pv)
            return hv - jnp.dot(rho, hv) * rho - mu * pv + jnp.dot(rho, v) * rho

        operator = lx.FunctionLinearOperator(op, jax.ShapeDtypeStruct(rho.shape, rho.dtype))
        sol = lx.linear_solve(
            operator,
            -gr,
            lx.GMRES(rtol=gmres_rtol, atol=0.0, restart=restart, max_steps=10 * restart),
            throw=False,
        )
        d = sol.value - jnp.dot(rho, sol.value) * rho
        new = rho + d
        new = new / jnp.linalg.norm(new)
        k_old = jnp.linalg.norm(gr)
        k_new = _kkt(h, new)[0]
        h_old, h_new = h(rho), h(new)
        ok = jnp.isfinite(k_new) & (k_new < k_old)
        ok = ok & ((sign == 0) | (h_new <= h_old + 1e-12 * jnp.abs(h_old)))
        # Converged to roundoff: further steps cannot help (and would be rejected anyway).
        done = ~ok | (k_new <= 1e-14 * jnp.linalg.norm(g))
        return jnp.where(ok, new, rho), accepted + ok, n + 1, done

    init = (rho, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.array(n_steps <= 0))
    rho, accepted, _, _ = jax.lax.while_loop(cond, body, init)
    return rho, accepted


def _riemannian_descent(h, rho, max_steps, tol):
    """Riemannian gradient descent on S^{P−1} with Barzilai–Borwein steps safeguarded by Armijo
    backtracking along the normalisation retraction (Wen & Yin 2013). Stops when the relative
    KKT residual ‖grad_R‖/‖∇H‖ falls below `tol`."""
    dtype = rho.dtype

    def rgrad(r):
        val, g = jax.value_and_grad(h)(r)
        return val, g - jnp.dot(r, g) * r, jnp.linalg.norm(g)

    def retract(r, v):
        n = r + v
        return n / jnp.linalg.norm(n)

    val0, gr0, gn0 = rgrad(rho)
    eta0 = 1.0 / jnp.maximum(gn0, jnp.finfo(dtype).tiny)

    def cond(c):
        rho, val, gr, gn, eta, rho_p, gr_p, n, done = c
        return (n < max_steps) & ~done

    def body(c):
        rho, val, gr, gn, eta, rho_p, gr_p, n, done = c
        s = rho - rho_p
        y = gr - gr_p
        sy = jnp.dot(s, y)
        bb = jnp.where(n % 2 == 0, jnp.dot(s, s) / sy, sy / jnp.dot(y, y))
        bb = jnp.where((n > 0) & (sy > 0) & jnp.isfinite(bb), bb, eta)
        gr2 = jnp.dot(gr, gr)

        def bt_cond(b):
            t, new, vnew, k = b
            return (vnew > val - 1e-4 * t * gr2) & (k < 40)

        def bt_body(b):
            t, _, _, k = b
            t = t / 2
            new = retract(rho, -t * gr)
            return t, new, h(new), k + 1

        first = retract(rho, -bb * gr)
        t, new, _, _ = jax.lax.while_loop(bt_cond, bt_body, (bb, first, h(first), 0))
        vnew, grn, gnn = rgrad(new)
        stalled = jnp.all(new == rho)
        done = (jnp.linalg.norm(grn) <= tol * gnn) | stalled | ~jnp.isfinite(vnew)
        return new, vnew, grn, gnn, t, rho, gr, n + 1, done

    init = (rho, val0, gr0, gn0, eta0, rho, gr0, jnp.zeros((), jnp.int32), jnp.array(False))
    out = jax.lax.while_loop(cond, body, init)
    return out[0], out[7]


@eqx.filter_jit
def _solve_restarts(h, x0, *, max_steps, descent_rtol, n_polish, gmres_rtol, restart):
    def one(x):
        rho = x / jnp.linalg.norm(x)
        rho, steps = _riemannian_descent(h, rho, max_steps, descent_rtol)
        rho, accepted = _newton_polish(h, rho, n_polish, gmres_rtol, restart, 1)
        kkt, gnorm, mu = _kkt(h, rho)
        return rho, kkt, gnorm, h(rho), steps, accepted

    return jax.vmap(one)(x0)


def _dedup(speeds, kkts, feats, ok, speed_rtol, dir_atol):
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
                # keep the representative with the smaller KKT residual
                if kkts[i] < kkts[j]:
                    reps[r] = i
                break
        else:
            reps.append(i)
            counts.append(1)
    return reps, counts


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
    gmres_rtol: float = 1e-12,
    gmres_restart: int = 30,
    kkt_rtol: float = 1e-8,
    invariant: Callable | None = None,
    speed_rtol: float = 1e-7,
    direction_atol: float = 1e-4,
    init: PyTree | None = None,
) -> EscapeDirections:
    """The optimal escape direction ρ* = argmin_{S^{P−1}} H and speed s* = −k·H(ρ*) (SPEC §5).

    Jacot et al. §4.2 (escape directions, Prop. 14), Kumar & Haupt (KKT points of the NCF).
    Solver: vmapped Riemannian BB descent from `n_restarts` random starts, then `n_polish`
    Riemannian Newton steps (see the module docstring). All converged restarts (relative KKT
    residual ‖∇H − (ρᵀ∇H)ρ‖/‖∇H‖ ≤ `kkt_rtol`) are deduplicated into `directions`: two
    restarts are the same direction when their speeds agree to `speed_rtol` (relative to the
    largest) and `invariant(ρ)` agree to `direction_atol`. `invariant` removes the network's
    symmetries (e.g. `dln_invariant`: the end-to-end matrix A_ρ, invariant under rotations;
    `neuron_invariant`: sorted neurons, invariant under permutations); default: ρ itself.

    Restarts are local searches: the global minimum is found with high probability, not
    certainty. The non-optimal escape directions that restarts find are local minima of H on
    the sphere; saddle-type escape directions need `refine_escape_direction` from a guess.

    **Arguments:**

    - `H`: k-homogeneous function on pytrees shaped like `like` (e.g. `taylor_term(...).H`).
    - `order`: k.
    - `like`: a pytree fixing the structure (e.g. the critical point or a model).
    - `key`: PRNG key for the Gaussian starts (keyword only).
    - `n_restarts`, `max_steps` (descent steps), `descent_rtol` (relative KKT residual that
        ends the descent), `n_polish`,
        `gmres_rtol`, `gmres_restart`: solver settings.
    - `kkt_rtol`, `invariant`, `speed_rtol`, `direction_atol`: convergence and deduplication.
    - `init`: optional starting directions (pytree shaped like `like` with a leading restart
        axis) used instead of random starts.

    **Returns:** an `EscapeDirections`.
    """
    if order < 2:
        raise ValueError(
            f"`order` must be ≥ 2 (the point must be critical, k = 1 has no escape directions), "
            f"got {order}."
        )
    if n_restarts < 1 or max_steps < 1 or n_polish < 0:
        raise ValueError("`n_restarts` and `max_steps` must be ≥ 1 and `n_polish` ≥ 0.")
    h, flat, unravel = _flat_H(H, like)
    if init is None:
        x0 = jr.normal(key, (n_restarts, flat.size), flat.dtype)
    else:
        x0 = jax.vmap(lambda t: _flat_H(H, t)[1])(init)
        n_restarts = x0.shape[0]
    rho, kkt, gnorm, hval, steps, accepted = _solve_restarts(
        h,
        x0,
        max_steps=max_steps,
        descent_rtol=descent_rtol,
        n_polish=n_polish,
        gmres_rtol=gmres_rtol,
        restart=gmres_restart,
    )
    speeds = -order * hval
    rel = kkt / jnp.where(gnorm > 0, gnorm, 1.0)
    ok = np.asarray(jnp.isfinite(speeds) & (rel <= kkt_rtol))
    feats = jax.vmap(lambda r: _flat_H(H, invariant(unravel(r)))[1])(rho) if invariant else rho
    reps, counts = _dedup(
        np.asarray(speeds), np.asarray(kkt), np.asarray(feats), ok, speed_rtol, direction_atol
    )
    if reps:
        best = reps[0]
        result = ESCAPE_RESULTS.successful
    else:
        best = int(np.nanargmax(np.where(np.isfinite(speeds), speeds, -np.inf)))
        reps, counts = [best], [1]
        result = ESCAPE_RESULTS.not_converged
    idx = jnp.asarray(reps)
    directions = jax.vmap(unravel)(rho[idx])
    return EscapeDirections(
        direction=unravel(rho[best]),
        speed=speeds[best],
        kkt_residual=kkt[best],
        directions=directions,
        speeds=speeds[idx],
        kkt_residuals=kkt[idx],
        multiplicities=jnp.asarray(counts),
        restart_speeds=speeds,
        restart_kkt_residuals=kkt,
        order=order,
        result=result,
        stats={
            "descent_steps": steps,
            "newton_steps_accepted": accepted,
            "relative_kkt": rel,
            "n_converged": int(ok.sum()),
        },
    )


def refine_escape_direction(
    H: Callable,
    order: int,
    guess: PyTree,
    *,
    n_steps: int = 20,
    gmres_rtol: float = 1e-12,
    gmres_restart: int = 30,
) -> tuple[PyTree, Scalar, Scalar]:
    """Newton's method on S^{P−1} for ∇H(ρ) = −sρ from `guess`: converges to the nearby escape
    direction of any index (minimum, saddle or maximum of H on the sphere; SPEC §5).

    **Returns:** (ρ, s, KKT residual), with s = −k·H(ρ).
    """
    h, flat, unravel = _flat_H(H, guess)
    rho = flat / jnp.linalg.norm(flat)
    rho, _ = eqx.filter_jit(_newton_polish)(h, rho, n_steps, gmres_rtol, gmres_restart, 0)
    kkt = _kkt(h, rho)[0]
    return unravel(rho), -order * h(rho), kkt


def escape_speed(H: Callable, order: int, direction: PyTree) -> Scalar:
    """s = −k·H(ρ/‖ρ‖) (SPEC §5)."""
    h, flat, _ = _flat_H(H, direction)
    return -order * h(flat / jnp.linalg.norm(flat))


def kkt_residual(H: Callable, direction: PyTree) -> Scalar:
    """‖∇H(ρ) − (ρᵀ∇H(ρ))ρ‖ at ρ = direction/‖direction‖: zero iff ρ is an escape direction."""
    h, flat, _ = _flat_H(H, direction)
    return _kkt(h, flat / jnp.linalg.norm(flat))[0]


# ---------------------------------------------------------------------------------------------
# symmetry invariants for deduplication


def dln_invariant(weights) -> Array:
    """A_ρ = W_L ⋯ W_1: invariant under the DLN rotations (SPEC §2)."""
    from .nn import end_to_end_matrix

    return end_to_end_matrix(weights)


def neuron_invariant(neurons: Array) -> Array:
    """Rows sorted lexicographically: invariant under hidden-unit permutations of a separable
    network whose parameters are one row per neuron (e.g. `SquaredReLU.w`)."""
    neurons = _params(neurons)
    leaves = jax.tree_util.tree_leaves(neurons)
    mat = jnp.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)
    idx = jnp.lexsort(mat.T[::-1])
    return mat[idx]


# ---------------------------------------------------------------------------------------------
# second-order information: Prop. 14 and strict saddles


class StrictnessTest(eqx.Module):
    """Proposition 14 at an escape direction ρ (SPEC §5).

    - `min_curvature`: λ_min of vᵀ∇²H(ρ)v/‖v‖² over v ⊥ ρ (LOBPCG on Hessian-vector products).
    - `threshold`: −s*.
    - `strict`: `min_curvature < threshold` (some v ⊥ ρ has vᵀ∇²H(ρ)v < −s*‖v‖²).
    - `vector`: the minimising v (pytree shaped like ρ).
    """

    min_curvature: Scalar
    threshold: Scalar
    strict: Array
    vector: PyTree


def _lobpcg_bottom(matvec, n, dtype, key, n_eig, max_iters, tol):
    """The n_eig most negative eigenpairs of a symmetric operator, by LOBPCG on −A."""
    if not 5 * n_eig < n:
        raise ValueError(
            f"LOBPCG needs 5·n_eig < P: got n_eig = {n_eig} for P = {n}; ask for fewer pairs."
        )
    x0 = jr.normal(key, (n, n_eig), dtype)
    neg = lambda X: -jax.vmap(matvec, in_axes=1, out_axes=1)(X)  # noqa: E731
    theta, U, iters = lobpcg_standard(neg, x0, m=max_iters, tol=tol)
    return -theta, U, iters


@eqx.filter_jit
def _restricted_bottom(h, rho, key, max_iters, tol):
    def matvec(v):
        pv = v - jnp.dot(rho, v) * rho
        hv = jax.jvp(jax.grad(h), (rho,), (pv,))[1]
        return hv - jnp.dot(rho, hv) * rho

    lam, U, _ = _lobpcg_bottom(matvec, rho.size, rho.dtype, key, 1, max_iters, tol)
    return lam, U


def strictness_test(
    H: Callable,
    direction: PyTree,
    optimal_speed: Scalar,
    *,
    key: PRNGKeyArray,
    max_iters: int = 200,
    tol: float | None = None,
    margin: float = 1e-8,
) -> StrictnessTest:
    """Does some v ⊥ ρ have vᵀ∇²H(ρ)v < −s*‖v‖²? (Jacot et al. Prop. 14; SPEC §5.)

    The restricted Hessian P∇²H(ρ)P, P = I − ρρᵀ, is probed with LOBPCG
    (`jax.experimental.sparse.linalg.lobpcg_standard`) matrix-free; ρ itself is an eigenvector
    of P∇²H(ρ)P with eigenvalue 0, which never passes the (negative) threshold.
    """
    h, flat, unravel = _flat_H(H, direction)
    if not 5 < flat.size:
        raise ValueError(f"LOBPCG needs more than 5 parameters, `direction` has {flat.size}.")
    lam, U = _restricted_bottom(h, flat / jnp.linalg.norm(flat), key, max_iters, tol)
    threshold = -jnp.asarray(optimal_speed)
    strict = lam[0] < threshold * (1 + margin)
    return StrictnessTest(lam[0], threshold, strict, unravel(U[:, 0]))


class HessianEigenpairs(eqx.Module):
    """Most negative Hessian eigenpairs at a strict saddle (k = 2; SPEC §5).

    - `eigenvalues`: λ_1 ≤ λ_2 ≤ … (most negative first).
    - `vectors`: unit eigenvectors, a pytree with a leading axis.
    - `speeds`: s_i = −λ_i (H(δ) = ½δᵀ∇²Lδ, so ∇H(ρ) = λρ = −sρ).
    - `residuals`: ‖∇²L v − λv‖ per pair.
    """

    eigenvalues: Array
    vectors: PyTree
    speeds: Array
    residuals: Array


def hessian_negative_eigenpairs(
    loss: Callable,
    point: PyTree,
    n_eig: int = 1,
    *,
    key: PRNGKeyArray,
    max_iters: int = 200,
    tol: float | None = None,
) -> HessianEigenpairs:
    """The `n_eig` most negative eigenpairs of ∇²L(θ*), matrix-free (LOBPCG on HVPs).

    At a strict saddle (k = 2) these are the escape directions with the largest speeds.
    `loss` may be `taylor_term(...).H` with k = 2 (its Hessian is ∇²L(θ*)) or L itself.
    """
    static = eqx.partition(point, eqx.is_inexact_array)[1]
    f0, flat, unravel = _flat_H(loss, point)

    def f(x):
        return loss(eqx.combine(unravel(x), static))

    def matvec(v):
        return jax.jvp(jax.grad(f), (flat,), (v,))[1]

    lam, U, _ = _lobpcg_bottom(matvec, flat.size, flat.dtype, key, n_eig, max_iters, tol)
    res = jnp.linalg.norm(jax.vmap(matvec, in_axes=1, out_axes=1)(U) - U * lam[None, :], axis=0)
    return HessianEigenpairs(lam, jax.vmap(unravel, in_axes=1)(U), -lam, res)
