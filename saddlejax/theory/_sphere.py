"""Riemannian optimisation on the unit sphere S^{P−1} for the escape-direction solvers (SPEC §5).

Escape directions are the critical points of H on S^{P−1} (Jacot et al. §4.2): the sphere of
flattened parameters is the mathematical object here, so this is the one place where pytrees are
raveled (`jax.flatten_util.ravel_pytree`). Two solvers, both matrix-free:

- `riemannian_descent`: gradient descent with Barzilai–Borwein steps safeguarded by Armijo
    backtracking along the normalisation retraction ρ ↦ (ρ + v)/‖ρ + v‖ (Wen & Yin 2013); it finds
    local minima of H on the sphere from any start.
- `riemannian_newton`: Newton's method for grad_R h(ρ) = 0, solving Hess_R(ρ) d = −grad_R(ρ) on the
    tangent space with a lineax solver on Hessian-vector products, where
    Hess_R v = P∇²h(ρ)Pv − (ρᵀ∇h(ρ))Pv, P = I − ρρᵀ. It converges to the nearby critical point of
    any index; GMRES copes with the singular directions that symmetries (DLN rotations,
    permutations) create.

`implicit_direction` differentiates a converged escape direction with respect to the arrays of h
by the implicit function theorem on the same KKT system (see its docstring).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PyTree, Scalar

# Armijo sufficient-decrease constant (the usual 1e−4) and the cap on step halvings.
ARMIJO_C = 1e-4
MAX_HALVINGS = 40
# A Newton step that raises h by more than this (relative) is refused when minimising: roundoff
# of h may rise, a genuine ascent may not.
H_RISE_RTOL = 1e-12
# A KKT residual this small relative to ‖∇h‖ is roundoff: Newton stops there.
ROUNDOFF_RTOL = 1e-14

DEFAULT_LINEAR_SOLVER = lx.GMRES(rtol=1e-12, atol=0.0, restart=30, max_steps=300)


class FlatFunction(eqx.Module):
    """x ↦ fn(unravel(x)) on flat vectors of R^P.

    A pytree whose `unravel` (from `ravel_pytree`) is static and compared by structure, so a jitted
    solver called with a new `fn` of the same structure (e.g. the Taylor term of new data) reuses
    its compilation.
    """

    fn: Callable
    unravel: Callable = eqx.field(static=True)

    def __call__(self, x: Float[Array, " P"]) -> Scalar:
        return self.fn(self.unravel(x))


def flatten(fn: Callable, tree: PyTree) -> tuple[FlatFunction, Float[Array, " P"], Callable]:
    """(h, x, unravel): h = fn on flat vectors, x = the flattened parameters (inexact arrays) of
    `tree`, and unravel: R^P → pytree shaped like them."""
    flat, unravel = ravel_pytree(eqx.filter(tree, eqx.is_inexact_array))
    return FlatFunction(fn, unravel), flat, unravel


def kkt(h: Callable, rho: Float[Array, " P"]) -> tuple[Scalar, Scalar, Scalar]:
    """(‖grad_R h(ρ)‖, ‖∇h(ρ)‖, μ) with μ = ρᵀ∇h(ρ) and grad_R h(ρ) = ∇h(ρ) − μρ (the KKT residual
    of min h on the sphere; zero iff ρ is an escape direction)."""
    g = jax.grad(h)(rho)
    mu = jnp.dot(rho, g)
    return jnp.linalg.norm(g - mu * rho), jnp.linalg.norm(g), mu


def riemannian_gradient(h: Callable, rho: Float[Array, " P"]):
    """(h(ρ), grad_R h(ρ), ‖∇h(ρ)‖)."""
    value, g = jax.value_and_grad(h)(rho)
    return value, g - jnp.dot(rho, g) * rho, jnp.linalg.norm(g)


def projected_hessian(h: Callable, rho: Float[Array, " P"]) -> Callable:
    """v ↦ P∇²h(ρ)Pv with P = I − ρρᵀ, by a Hessian-vector product (matrix-free)."""

    def matvec(v):
        pv = v - jnp.dot(rho, v) * rho
        hv = jax.jvp(jax.grad(h), (rho,), (pv,))[1]
        return hv - jnp.dot(rho, hv) * rho

    return matvec


def _retract(rho, v):
    """The normalisation retraction (ρ + v)/‖ρ + v‖."""
    x = rho + v
    return x / jnp.linalg.norm(x)


# ---------------------------------------------------------------------------------------------
# descent: Barzilai–Borwein steps with Armijo backtracking


def _barzilai_borwein(n, rho, rho_prev, grad, grad_prev, fallback):
    """Alternating BB1/BB2 step sizes; `fallback` on the first step or without positive
    curvature along the last step."""
    s = rho - rho_prev
    y = grad - grad_prev
    sy = jnp.dot(s, y)
    bb = jnp.where(n % 2 == 0, jnp.dot(s, s) / sy, sy / jnp.dot(y, y))
    return jnp.where((n > 0) & (sy > 0) & jnp.isfinite(bb), bb, fallback)


def _armijo_backtracking(h, rho, value, grad, step):
    """Halve `step` until h(retract(ρ, −t·grad)) ≤ h(ρ) − c·t‖grad‖² (at most `MAX_HALVINGS`
    times). **Returns:** (t, the accepted point)."""
    grad_sq = jnp.dot(grad, grad)

    def cond(carry):
        t, _, value_new, k = carry
        return (value_new > value - ARMIJO_C * t * grad_sq) & (k < MAX_HALVINGS)

    def body(carry):
        t, _, _, k = carry
        t = t / 2
        new = _retract(rho, -t * grad)
        return t, new, h(new), k + 1

    first = _retract(rho, -step * grad)
    t, new, _, _ = jax.lax.while_loop(cond, body, (step, first, h(first), 0))
    return t, new


def riemannian_descent(
    h: Callable, rho: Float[Array, " P"], max_steps: int, rtol: float
) -> tuple[Float[Array, " P"], Int[Array, ""]]:
    """Minimise h on S^{P−1} from the unit vector ρ by Riemannian gradient descent with BB steps
    and Armijo backtracking (Wen & Yin 2013).

    Stops when ‖grad_R h‖/‖∇h‖ ≤ `rtol`, when a step does not move ρ, when h is not finite, or
    after `max_steps`. **Returns:** (ρ, number of steps).
    """
    value0, grad0, gnorm0 = riemannian_gradient(h, rho)
    step0 = 1.0 / jnp.maximum(gnorm0, jnp.finfo(rho.dtype).tiny)

    def cond(carry):
        *_, n, done = carry
        return (n < max_steps) & ~done

    def body(carry):
        rho, value, grad, step, rho_prev, grad_prev, n, _ = carry
        step = _barzilai_borwein(n, rho, rho_prev, grad, grad_prev, step)
        t, new = _armijo_backtracking(h, rho, value, grad, step)
        value_new, grad_new, gnorm_new = riemannian_gradient(h, new)
        stalled = jnp.all(new == rho)
        converged = jnp.linalg.norm(grad_new) <= rtol * gnorm_new
        done = converged | stalled | ~jnp.isfinite(value_new)
        return new, value_new, grad_new, t, rho, grad, n + 1, done

    n0 = jnp.zeros((), jnp.int32)
    init = (rho, value0, grad0, step0, rho, grad0, n0, jnp.array(False))
    out = jax.lax.while_loop(cond, body, init)
    return out[0], out[6]


# ---------------------------------------------------------------------------------------------
# Newton's method on the sphere


def _newton_step(h, rho, grad_r, mu, linear_solver):
    """The tangent solution d of Hess_R(ρ) d = −grad_R(ρ).

    The operator is extended to all of R^P by the identity on span(ρ), so that it is invertible
    on the normal direction and the solution's ρ-component (projected out) is zero.
    """
    hessian = projected_hessian(h, rho)

    def operator(v):
        return hessian(v) - mu * (v - jnp.dot(rho, v) * rho) + jnp.dot(rho, v) * rho

    structure = jax.ShapeDtypeStruct(rho.shape, rho.dtype)
    sol = lx.linear_solve(
        lx.FunctionLinearOperator(operator, structure), -grad_r, linear_solver, throw=False
    )
    return sol.value - jnp.dot(rho, sol.value) * rho


def riemannian_newton(
    h: Callable,
    rho: Float[Array, " P"],
    max_steps: int,
    linear_solver: lx.AbstractLinearSolver,
    *,
    monotone: bool,
) -> tuple[Float[Array, " P"], Int[Array, ""]]:
    """Newton's method on S^{P−1} for ∇h(ρ) ∥ ρ from the unit vector ρ.

    A step is kept only if it lowers the KKT residual and, when `monotone` (polishing a
    minimiser), does not raise h beyond roundoff. Stops at the first refused step (roundoff
    reached), at a KKT residual at roundoff, or after `max_steps`.

    **Returns:** (ρ, number of accepted steps).
    """

    def cond(carry):
        _, _, n, done = carry
        return (n < max_steps) & ~done

    def body(carry):
        rho, accepted, n, _ = carry
        g = jax.grad(h)(rho)
        mu = jnp.dot(rho, g)
        grad_r = g - mu * rho
        new = _retract(rho, _newton_step(h, rho, grad_r, mu, linear_solver))
        kkt_old, kkt_new = jnp.linalg.norm(grad_r), kkt(h, new)[0]
        ok = jnp.isfinite(kkt_new) & (kkt_new < kkt_old)
        if monotone:
            h_old = h(rho)
            ok = ok & (h(new) <= h_old + H_RISE_RTOL * jnp.abs(h_old))
        done = ~ok | (kkt_new <= ROUNDOFF_RTOL * jnp.linalg.norm(g))
        return jnp.where(ok, new, rho), accepted + ok, n + 1, done

    zero = jnp.zeros((), jnp.int32)
    rho, accepted, _, _ = jax.lax.while_loop(
        cond, body, (rho, zero, zero, jnp.array(max_steps <= 0))
    )
    return rho, accepted


# ---------------------------------------------------------------------------------------------
# the implicit function theorem at an escape direction


def _given_root(inputs):
    # The root was found before (by a solver that need not be differentiable); `implicit_jvp`
    # only needs it returned, and a copy of it as the "residual" the rewrite reads.
    rho = inputs[1]
    return rho, rho


def _kkt_rewrite(x, rho, inputs):
    """F(x) = P(∇h(x) − μx) + ρ(ρᵀx − 1), P = I − ρρᵀ, μ = ρᵀ∇h(ρ), with ρ the root.

    F(ρ) = grad_R h(ρ) = 0 at an escape direction. ∂_xF(ρ) = P∇²h(ρ) − μP + ρρᵀ is the Riemannian
    Hessian on the tangent space and the identity on span(ρ) (up to (k−1)·grad_R h(ρ)ρᵀ, zero at
    the root); ∂_pF(ρ) = P∂_p∇h(ρ), since ∂_pμ multiplies Pρ = 0.
    """
    h = inputs[0]
    mu = jnp.dot(rho, jax.grad(h)(rho))
    v = jax.grad(h)(x) - mu * x
    return v - jnp.dot(rho, v) * rho + (jnp.dot(rho, x) - 1) * rho


def implicit_direction(
    h: Callable, rho: Float[Array, " P"], adjoint: optx.ImplicitAdjoint
) -> Float[Array, " P"]:
    """ρ, a converged escape direction of h, differentiable in the arrays of h by the implicit
    function theorem (SPEC §5).

    The KKT system ∇h(ρ; p) = μρ, ‖ρ‖ = 1 differentiates to Hess_R(ρ) dρ = −P ∂_p∇h(ρ; p) dp with
    dρ ⊥ ρ, solved by `adjoint.linear_solver` on Hessian-vector products. Continuous symmetries
    of h (the hidden-layer rotations of a DLN) make Hess_R singular, with the right-hand side
    orthogonal to its null space (h(·; p) is invariant for every p); a least-squares solver
    (LSMR, SVD) then returns the minimum-norm solution: the derivative of ρ orthogonal to the
    orbit of the symmetry group, the one a quotient by the group defines. Invariant functions
    of ρ (A_ρ of a DLN) have the same derivative whatever the choice. Where Hess_R is singular
    beyond the symmetries (σ_1(G) repeated: the optimal directions form a larger family) the
    derivative does not exist: LSMR then returns the minimum-norm least-squares solution of an
    inconsistent system, and where Hess_R is nearly so (condition above LSMR's `conlim`, 1e8:
    a gap σ_1 − σ_2 ≲ 1e−8·σ_1) the solve fails and raises.

    **Arguments:** `h` (a function on R^P whose array leaves carry the tangents, e.g. a
    `FlatFunction`), `rho` (the unit root, found by any solver; its own tangent is ignored: the
    converged point does not depend on where the solver started), `adjoint`.

    **Returns:** ρ with its implicit derivative.
    """
    rho = jax.lax.stop_gradient(rho)
    out, _ = adjoint.apply(_given_root, _kkt_rewrite, (h, rho), frozenset())
    return out
