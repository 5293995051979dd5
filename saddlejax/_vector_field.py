"""The gradient-flow vector field f(t, θ) = −∇L(θ), shared by every flow in saddlejax."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree
from optimistix import two_norm

from ._flat import flattened


class GradientField(eqx.Module):
    """f(t, θ, args) = −∇L(θ) on the trainable state θ (SPEC §1), for `diffrax.ODETerm`.

    `objective` is L of the full model, `static` the frozen part (`eqx.partition`); both are
    pytree leaves, so new data or a new frozen part do not retrace a jitted solve. With
    `static=None` the state is the whole argument of L (e.g. a Taylor term H); with `unravel`,
    the state is one flat vector x and the trainable pytree is `unravel(x)` (`flattened`).
    """

    objective: Callable
    static: PyTree = None
    unravel: Callable | None = None

    def loss(self, state):
        if self.unravel is not None:
            state = self.unravel(state)
        if self.static is None:
            return self.objective(state)
        return self.objective(eqx.combine(state, self.static))

    def flattened(self, state):
        """(field, x): the same flow on one flat vector x, θ = `field.unravel(x)` (see
        `saddlejax._flat`); the state itself where flattening gains nothing."""
        if self.unravel is not None:
            return self, state
        x, unravel = flattened(state)
        return (self, state) if unravel is None else (
            GradientField(self.objective, self.static, unravel), x
        )

    def __call__(self, t, state, args):
        return jax.tree_util.tree_map(jnp.negative, jax.grad(self.loss)(state))

    def scalars(self, state):
        """(L(θ), ‖∇L(θ)‖, ‖θ‖)."""
        loss, grad = jax.value_and_grad(self.loss)(state)
        return loss, two_norm(grad), two_norm(state)
