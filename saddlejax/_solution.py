"""Result codes and the solution container shared by the flow, gradient descent and sweeps."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._tree import tree_index


class RESULTS(eqx.Enumeration):
    """Per-trajectory outcome. The values are the messages a user reads."""

    successful = ""
    max_steps_reached = (
        "The maximum number of solver steps was reached before `t1`. Increase `max_steps`, "
        "shorten `t1`, or use the stiff solver (`solver='kvaerno5'`) to cross long plateaus."
    )
    nonfinite = (
        "The parameters or the loss became NaN or infinite. For gradient descent, lower "
        "`learning_rate` below 2/λ_max(∇²L); for the flow, check the objective is finite at "
        "`params0`."
    )
    origin_not_left = (
        "The flow of the leading Taylor term at the origin did not reach the handoff defect "
        "before `max_time` (`origin_handoff`): θ₀ may lie in the stable set of the origin. "
        "Integrate L directly (no `origin_defect`) or raise `max_time`."
    )
    solver_failed = (
        "The ODE solver failed: an implicit (Newton/Krylov) solve did not converge or the step "
        "size collapsed. Loosen `rtol`/`atol`, or try `solver='tsit5'`."
    )


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
    - `steps`: per-step scalars when `record_steps=True`: dict of `t`, `loss`, `grad_norm`,
        `norm`, each of length `max_steps` padded with +inf after the last step; else None.
    - `stats`: `num_steps`, `num_accepted_steps`, `num_rejected_steps`, `grad_evals` (gradient
        evaluations: exact for gradient descent, stages × steps for explicit Runge–Kutta solvers,
        −1 where unknown) and the tolerances used. Rosenbrock and "auto" solvers add
        `hvp_evals` (Hessian-vector products; rejected steps estimated at the accepted mean),
        `hvp_evals_accepted`, `max_cg_iterations`, and for "auto" `explicit_steps_accepted` and
        `implicit_steps_accepted`.
    - `result`: a `RESULTS` code; check `sol.result == RESULTS.successful`.
    """

    ts: Float[Array, " n_save"]
    params: PyTree
    loss: Float[Array, " n_save"]
    grad_norm: Float[Array, " n_save"]
    norm: Float[Array, " n_save"]
    event_time: Float[Array, ""]
    event_mask: PyTree[Bool[Array, ""]] | None
    steps: dict | None
    stats: dict[str, Array]
    result: RESULTS
    static: PyTree = eqx.field(default=None)

    def params_at(self, i: int | Int[Array, ""]):
        """The full model (trainable part at save index i, combined with the frozen part)."""
        return eqx.combine(tree_index(self.params, i), self.static)

    @property
    def final_params(self):
        return self.params_at(-1)

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
