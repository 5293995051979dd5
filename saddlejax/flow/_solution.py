"""The trajectory container shared by gradient flow, gradient descent and sweeps."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from .._results import RESULTS
from .._tree import tree_index


class FlowSolution(eqx.Module):
    """A trajectory of gradient flow or gradient descent (SPEC §1).

    Leading axes: under `sweep`, every array gains leading (α, seed) axes.

    **Fields:**

    - `ts`: save times, shape (n_save,). Gradient descent saves at t = kη.
    - `params`: what was saved at `ts` — by default the trainable part of the parameters with a
        leading time axis (see `observe=` of `gradient_flow`); `params_at(i)` rebuilds a model.
    - `loss`, `grad_norm`, `norm`: L(θ), ‖∇L(θ)‖ and ‖θ‖ (trainable part) at `ts`.
    - `event_time`: the time the event fired (root-found), or +inf if it did not fire.
    - `event_mask`: which of the event's conditions fired (a pytree of bools), or None.
    - `stop_time`, `stop_state`: where the solve stopped (t1, the event under
        `stop_at_event=True`, or a failure) and the trainable state there; `final_params` is
        the model at that point.
    - `steps`: per-step scalars when `record_steps=True`: dict of `t`, `loss`, `grad_norm`,
        `norm`, each of length `max_steps` padded with +inf after the last step; else None.
    - `stats`: `num_steps`, `num_accepted_steps`, `num_rejected_steps`, `grad_evals` and
        `hvp_evals` (gradients and Hessian-vector products: exact for gradient descent and
        explicit Runge–Kutta solvers, counted by saddlejax's own solvers — rejected steps
        estimated at the accepted mean — and −1 where unknown) and the tolerances used.
        saddlejax's solvers add their own counters (`max_cg_iterations`,
        `explicit_steps_accepted`, `implicit_steps_accepted`, …).
    - `result`: a `RESULTS` code; check `sol.result == RESULTS.successful`.
    - `resume`: with `keep_solver_state=True`, the solver and controller state where the solve
        stopped (for `continue_flow`); None otherwise.
    """

    ts: Float[Array, " n_save"]
    params: PyTree
    loss: Float[Array, " n_save"]
    grad_norm: Float[Array, " n_save"]
    norm: Float[Array, " n_save"]
    event_time: Float[Array, ""]
    event_mask: PyTree[Bool[Array, ""]] | None
    stop_time: Float[Array, ""]
    stop_state: PyTree
    steps: dict | None
    stats: dict[str, Array]
    result: RESULTS
    static: PyTree = eqx.field(default=None)
    resume: dict | None = None

    def params_at(self, i: int | Int[Array, ""]):
        """The full model (trainable part at save index i, combined with the frozen part)."""
        return eqx.combine(tree_index(self.params, i), self.static)

    @property
    def final_params(self):
        """The model where the solve stopped (only its trainable part under `observe=`)."""
        if self.static is None:
            return self.stop_state
        return eqx.combine(self.stop_state, self.static)

    @property
    def successful(self) -> Bool[Array, "..."]:
        return self.result == RESULTS.successful

    def time_below(self, level: float) -> Float[Array, "..."]:
        """The first save time with loss ≤ level (+inf if never): a save-grid estimate.

        For a root-found time use `event=LossBelow(level)` in `gradient_flow`.
        """
        hit = self.loss <= level
        return jnp.where(
            hit.any(-1),
            jnp.take_along_axis(self.ts, jnp.argmax(hit, axis=-1)[..., None], axis=-1)[..., 0],
            jnp.inf,
        )


def solution_from(ts, observed, **fields) -> FlowSolution:
    """A `FlowSolution` from the save times and the stacked observations (saved state or
    observable, L, ‖∇L‖, ‖θ‖) of `observation`; `fields` gives the rest."""
    params, loss, grad_norm, norm = observed
    return FlowSolution(ts=ts, params=params, loss=loss, grad_norm=grad_norm, norm=norm, **fields)
