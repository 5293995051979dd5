"""Implicit differentiation of the theory's solutions (the implicit function theorem).

A solution y*(p) of F(y*, p) = 0 that a solver finds by iteration (Newton's method on the sphere
for escape directions, SPEC §5; the fixed-point iteration of Φ, SPEC §7) is differentiated by

    dy* = −(∂_yF)⁻¹ ∂_pF · dp      at y*,

not through the iterations (the descent's `while_loop` is not reverse-differentiable, and an
unrolled derivative is only as converged as the last iterate). optimistix's `ImplicitAdjoint`
does the plumbing (a custom JVP around one lineax solve, transposed for reverse mode; a failed
solve raises). What the theory's solvers add to it lives here: the linear solvers that suit
their systems, and the conversion of closures so that the arrays they capture are
differentiated.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import PyTree
from optimistix import two_norm


class NeumannSeries(lx.AbstractLinearSolver):
    """Solve (K − I)x = b by the Neumann series x = −Σ_{n≥0} Kⁿb, for K with spectral radius
    below 1: the iteration x_{n+1} = Kx_n − b = x_n + (K − I)x_n − b, from x_0 = −b.

    This is the linear system of the implicit function theorem at a fixed point x* = Φ(x*):
    K = ∂_xΦ(x*), and the operator passed is the Jacobian of Φ(x) − x, K − I. For the map Φ of
    SPEC §7, a contraction in a weighted norm and causal in time (a Volterra operator), the
    series converges at the rate of the fixed-point iteration itself, to roundoff at every
    time. A Krylov solve in the Euclidean norm converges less well there: I − K carries the
    growth of perturbations along the path (condition number ~ the ratio of the path's final
    and initial norms).

    **Arguments:**

    - `rtol`, `atol`: stop when ‖x_{n+1} − x_n‖ ≤ atol + rtol·‖x_{n+1}‖ (Euclidean norms).
    - `max_steps`: cap on terms; reaching it (or a non-finite term) is a failure.
    """

    rtol: float
    atol: float
    max_steps: int = 1000

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        if operator.in_structure() != operator.out_structure():
            raise ValueError(
                "`NeumannSeries` needs a square operator K − I (input and output of the same "
                "structure)."
            )
        return lx.linearise(operator)

    def compute(self, state, vector, options: dict[str, Any]):
        del options
        operator = state

        def step(x):
            return jax.tree_util.tree_map(
                lambda xi, axi, bi: xi + axi - bi, x, operator.mv(x), vector
            )

        def cond(carry):
            # A NaN change ends the loop too (the comparison is False).
            _, change, size, n = carry
            return (n < self.max_steps) & (change > self.atol + self.rtol * size)

        def body(carry):
            x, _, _, n = carry
            x_new = step(x)
            change = two_norm(jax.tree_util.tree_map(jnp.subtract, x_new, x))
            return x_new, change, two_norm(x_new), n + 1

        x0 = jax.tree_util.tree_map(jnp.negative, vector)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(vector))
        init = (x0, jnp.asarray(jnp.inf, dtype), two_norm(x0), jnp.zeros((), jnp.int32))
        x, change, size, n = jax.lax.while_loop(cond, body, init)
        converged = change <= self.atol + self.rtol * size
        result = lx.RESULTS.where(
            converged,
            lx.RESULTS.successful,
            lx.RESULTS.where(
                jnp.isfinite(change), lx.RESULTS.max_steps_reached, lx.RESULTS.singular
            ),
        )
        return x, result, {"num_steps": n}

    def transpose(self, state, options: dict[str, Any]):
        # (K − I)ᵀ = Kᵀ − I, and Kᵀ has the spectral radius of K.
        return state.transpose(), options

    def conj(self, state, options: dict[str, Any]):
        return lx.conj(state), options

    def assume_full_rank(self) -> bool:
        return True


# Escape directions: LSMR returns the minimum-norm least-squares solution where the symmetry
# directions make the Riemannian Hessian singular, with a stopping test relative to
# ‖A‖‖x‖ + ‖b‖, independent of the tangent's scale (lineax's GMRES and CG test each entry
# against atol + rtol·|b_i| and never stop where b_i = 0). rtol 1e−12: float64.
ESCAPE_ADJOINT = optx.ImplicitAdjoint(linear_solver=lx.LSMR(rtol=1e-12, atol=0.0))
# The fixed point of Φ: the Neumann series (see `NeumannSeries`), to the default `rtol` of the
# fixed-point iteration's own stopping test, one decade tighter.
FIXED_POINT_ADJOINT = optx.ImplicitAdjoint(
    linear_solver=NeumannSeries(rtol=1e-12, atol=0.0, max_steps=1000)
)


def check_adjoint(adjoint, *, what: str, unrolled_ok: bool) -> None:
    """ValueError unless `adjoint` is an `ImplicitAdjoint` (or, where the solver's loop can be
    differentiated, `unrolled_ok`, a `RecursiveCheckpointAdjoint`)."""
    allowed = (optx.ImplicitAdjoint,)
    if unrolled_ok:
        allowed += (optx.RecursiveCheckpointAdjoint,)
    if not isinstance(adjoint, allowed):
        names = " or ".join(f"`optimistix.{a.__name__}`" for a in allowed)
        raise ValueError(f"`adjoint` for {what} must be an {names}, got {adjoint!r}.")


def as_pytree(fn: Callable, *example) -> Callable:
    """`fn` with the arrays it closes over as pytree leaves, so that they are differentiated.

    An `eqx.Module` (e.g. `dln_taylor_term(G)`, a `TaylorTerm`'s `H`, a saddlejax objective)
    already is such a pytree and is returned as it is (a solver compiled for it is reused for
    new data). Any other callable is closure-converted at the `example` arguments when it
    captures a tracer (an array being differentiated, vmapped or jitted); otherwise it is
    returned as it is too (there is nothing to differentiate, and a solver compiled for the
    same function object is reused).
    """
    if isinstance(fn, eqx.Module):
        return fn
    converted = eqx.filter_closure_convert(fn, *example)
    consts = jax.tree_util.tree_leaves(getattr(converted, "consts", ()))
    if any(isinstance(c, jax.core.Tracer) for c in consts):
        return converted
    return fn


def stop_gradient(tree: PyTree) -> PyTree:
    """`jax.lax.stop_gradient` on the inexact arrays of a pytree (other leaves unchanged)."""
    return jax.tree_util.tree_map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree
    )
