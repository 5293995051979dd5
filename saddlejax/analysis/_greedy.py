"""The greedy low-rank algorithm A_{ε,T,η} of Jacot et al. §5.3 (SPEC §8), the conjectured
α → 0 limit of gradient flow on a deep linear network: fit a width-1 network, add the neuron that
escapes fastest, fit the width-2 network, and so on. The saddles ϑ¹, ϑ², … it stops at are the
plateaus of a small-α flow (Conjecture 3).
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from optimistix import two_norm

from .._results import RESULTS
from ..flow import CriticalPoint, LossBelow, gradient_descent, gradient_flow
from ..nn._layers import matrix_chain
from ..problems import matrix_cost_gradient_at_zero
from ._ranks import numerical_rank


class _FactoredCost(eqx.Module):
    """L(W_1, …, W_L) = C(W_L ⋯ W_1) for an objective with a `matrix_cost` (SPEC §3)."""

    objective: eqx.Module

    def __call__(self, weights) -> Array:
        return self.objective.matrix_cost(matrix_chain(weights))


class GreedySaddle(eqx.Module):
    """One critical point ϑ^k of the greedy algorithm (k = its width; ϑ⁰ = 0).

    **Fields:** `weights` (W_1, …, W_L) of the width-k network; `matrix` A_ϑ; `loss` C(A_ϑ);
    `rank` (singular values of A_ϑ above `rank_tol`); `grad_norm` ‖∇L(ϑ)‖; `gradient_sv`
    σ_1(∇C(A_ϑ)); `speed` L^{−(L−2)/2} σ_1(∇C(A_ϑ)), the escape speed along the appended neuron
    (the DLN closed form of SPEC §5 applied to the residual gradient, Jacot et al. §5.3);
    `direction` (u, v), the top singular pair that the next neuron takes.
    """

    weights: tuple[Array, ...]
    matrix: Array
    loss: Array
    rank: Array
    grad_norm: Array
    gradient_sv: Array
    speed: Array
    direction: tuple[Array, Array]


class GreedyStage(eqx.Module):
    """The descent from ϑ^{k−1} (plus the appended neuron) to ϑ^k: `ts`, `loss` and
    `grad_norm` at the saves; `duration` the time the stage took (flow time, or T·η); `steps`;
    `result`."""

    ts: Array
    loss: Array
    grad_norm: Array
    duration: Array
    steps: Array
    result: RESULTS


class GreedyLowRank(eqx.Module):
    """The output of `greedy_low_rank`: `saddles` ϑ⁰ = 0, ϑ¹, … (the last one is where the
    algorithm stopped), `stages` (one per appended neuron), `converged` (every stage reached
    its stopping rule), `stop_reason`."""

    saddles: list[GreedySaddle]
    stages: list[GreedyStage]
    converged: bool
    stop_reason: str

    @property
    def losses(self) -> np.ndarray:
        return np.array([float(s.loss) for s in self.saddles])

    @property
    def ranks(self) -> np.ndarray:
        return np.array([int(s.rank) for s in self.saddles])

    @property
    def speeds(self) -> np.ndarray:
        return np.array([float(s.speed) for s in self.saddles])


def _top_pair(g: Float[Array, "m n"]):
    u, s, vt = jnp.linalg.svd(g)
    return u[:, 0], s[0], vt[0]


def _append_neuron(weights, k, u, v, epsilon):
    """(W_1; −εvᵀ), diag(W_ℓ, ε), (W_L, εu): Jacot et al.'s A_{ε,T,η}, one more neuron, whose
    contribution to A is −ε^L u vᵀ (a descent direction: ⟨∇C, −uvᵀ⟩ = −σ_1).

    The networks have the final width from the start, the unused neurons zero: the image of an
    inclusion is invariant under the flow (SPEC §2), so zero neurons stay zero, and one compiled
    solve serves every stage. Neuron k is the (k+1)-th."""
    depth = len(weights)
    eps = jnp.asarray(epsilon, weights[0].dtype)
    out = []
    for ell, w in enumerate(weights):
        if ell == 0:
            w = w.at[k, :].set(-eps * v)
        if ell == depth - 1:
            w = w.at[:, k].set(eps * u)
        if 0 < ell < depth - 1:
            w = w.at[k, k].set(eps)
        out.append(w)
    return tuple(out)


def _crop(weights, k):
    """The width-k network of the first k neurons."""
    depth = len(weights)
    return tuple(
        w[:k] if ell == 0 else w[:, :k] if ell == depth - 1 else w[:k, :k]
        for ell, w in enumerate(weights)
    )


def _saddle(cost, weights, k, depth, rank_tol) -> GreedySaddle:
    a = matrix_chain(weights)
    grad_a = jax.grad(cost.objective.matrix_cost)(a)
    u, s1, v = _top_pair(grad_a)
    return GreedySaddle(
        weights=_crop(weights, k),
        matrix=a,
        loss=cost.objective.matrix_cost(a),
        rank=numerical_rank(a, rank_tol),
        grad_norm=two_norm(jax.grad(cost)(weights)),
        gradient_sv=s1,
        speed=depth ** (-(depth - 2) / 2) * s1,
        direction=(u, v),
    )


def _stage_horizon(speed, epsilon, depth, factor) -> float:
    """A time by which the stage has surely escaped and settled: `factor` × the time the
    appended neuron takes to grow from ε to O(1) along its escape path (SPEC §5: log(1/ε')/s for
    L = 2, ε'^{−(L−2)}/((L−2)s) for L > 2, with ε' = √L·ε the neuron's norm)."""
    radius = np.sqrt(depth) * epsilon
    speed = max(float(speed), 1e-300)
    if depth == 2:
        escape = np.log(1.0 / radius) / speed
    else:
        escape = radius ** (-(depth - 2)) / ((depth - 2) * speed)
    return factor * (escape + 1.0 / speed)


def _flow_stage(cost, weights, start_loss, speed, config) -> tuple[tuple, GreedyStage]:
    """One stage as one solve, stopped by whichever comes first: a critical point below the
    start (`CriticalPoint`), or the loss floor (`LossBelow`), where the last stage's descent
    into a minimum may be too slow for `grad_tol`."""
    drop = config["min_drop"] * max(abs(float(start_loss)), 1e-300)
    t1 = _stage_horizon(speed, config["epsilon"], len(weights), config["horizon_factor"])
    sol = gradient_flow(
        cost,
        weights,
        t1,
        event=(
            CriticalPoint(config["grad_tol"], start_loss - drop),
            LossBelow(config["loss_floor"] + config["loss_tol"]),
        ),
        stop_at_event=True,
        rtol=config["rtol"],
        atol=config["atol"],
        max_steps=config["max_steps"],
        n_save=config["n_save"],
        throw=False,
        **config["flow_options"],
    )
    fired = bool(jnp.isfinite(sol.event_time))
    result = sol.result
    if result == RESULTS.successful and not fired:
        result = RESULTS.stage_not_converged
    stage = GreedyStage(
        ts=sol.ts,
        loss=sol.loss,
        grad_norm=sol.grad_norm,
        duration=jnp.where(fired, sol.event_time, t1),
        steps=sol.stats["num_steps"],
        result=result,
    )
    return tuple(sol.final_params), stage


def _descent_stage(cost, weights, config) -> tuple[tuple, GreedyStage]:
    sol = gradient_descent(
        cost, weights, learning_rate=config["step_size"], steps=config["steps"], throw=False
    )
    stage = GreedyStage(
        ts=sol.ts,
        loss=sol.loss,
        grad_norm=sol.grad_norm,
        duration=jnp.asarray(config["steps"] * config["step_size"]),
        steps=jnp.asarray(config["steps"]),
        result=sol.result,
    )
    return tuple(sol.final_params), stage


def greedy_low_rank(
    objective,
    depth: int,
    *,
    epsilon: float = 1e-3,
    method: Literal["flow", "descent"] = "flow",
    max_width: int | None = None,
    loss_floor: float = 0.0,
    loss_tol: float | None = None,
    grad_rtol: float = 1e-6,
    min_drop: float = 1e-3,
    rank_tol: float = 0.1,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    max_steps: int = 200_000,
    n_save: int = 128,
    horizon_factor: float = 1e3,
    steps: int = 100_000,
    step_size: float = 1e-2,
    **flow_options,
) -> GreedyLowRank:
    """The greedy low-rank algorithm A_{ε,T,η} (Jacot et al. §5.3, Algorithm 1; SPEC §8).

    Start from the width-1 network (−εv_1ᵀ, ε, …, ε, εu_1) built from the top singular pair of
    ∇C(0); then repeat: train the width-w network; take the top singular pair (u, v) of
    ∇C(A_θ); append a neuron (−εvᵀ row to W_1, ε on the new diagonal of W_2 … W_{L−1}, εu
    column to W_L); w += 1 — while C(A_θ) > C_min + tol (the paper prints "<", a typo).
    As T → ∞, η → 0, ε → 0 the trained networks are the saddles ϑ^k that gradient flow from
    α → 0 visits (Conjecture 3), so their losses are the plateau levels of a small-α flow.

    **Arguments:**

    - `objective`: a cost of the end-to-end matrix with a `matrix_cost` (`MatrixCompletion`,
        `SquareLoss`).
    - `depth`: L ≥ 2.
    - `epsilon`: ε, the scale of each appended neuron. Smaller ε follows the limit more
        closely at the cost of a longer escape (ε^{−(L−2)} for L > 2).
    - `method`: "flow" (default): each stage is the engine's gradient flow, run until the
        `CriticalPoint(grad_tol, …)` event — the T → ∞, η → 0 limit in one solve; "descent":
        the paper's `steps` = T gradient-descent steps at `step_size` = η.
    - `max_width`: stop after this many neurons (default min(n_out, n_in)).
    - `loss_floor`, `loss_tol`: C_min and the tolerance of the stopping rule C > C_min + tol
        (default tol: 1e−4 · C(0)). A flow stage also stops there: the descent into a minimum
        may be too slow for `grad_rtol`, and the last saddle is then where the floor was reached.
    - `grad_rtol`: a flow stage has reached its critical point when ‖∇L‖ ≤ grad_rtol·‖∇C(0)‖_F
        (relative to the gradient that starts the dynamics, so independent of the data's scale).
    - `min_drop`: the relative loss drop below the stage's start that must come first (so
        the event does not fire at the saddle it starts from).
    - `rank_tol`: the singular-value tolerance of the reported ranks (Jacot et al.: 0.1).
    - `rtol`, `atol`, `max_steps`, `n_save`, `**flow_options`: of `gradient_flow` (the default
        solver is the auto-switching stiff one).
    - `horizon_factor`: a flow stage runs at most this many times its predicted escape time.

    **Returns:** a `GreedyLowRank`: the saddles ϑ⁰ = 0, ϑ¹, … with loss, rank, escape speed and
    escape direction, and the stages between them.
    """
    matrix_cost = getattr(objective, "matrix_cost", None)
    if matrix_cost is None:
        raise ValueError(
            f"`objective` ({type(objective).__name__}) has no `matrix_cost`: the greedy algorithm "
            "is defined for costs of the end-to-end matrix (MatrixCompletion, SquareLoss)."
        )
    if not isinstance(depth, int) or depth < 2:
        raise ValueError(f"`depth` must be an int ≥ 2, got {depth!r}.")
    if method not in ("flow", "descent"):
        raise ValueError(f"`method` must be 'flow' or 'descent', got {method!r}.")
    if not epsilon > 0:
        raise ValueError(f"`epsilon` must be positive, got {epsilon}.")
    g0 = matrix_cost_gradient_at_zero(objective)
    n_out, n_in = g0.shape
    max_width = min(n_out, n_in) if max_width is None else max_width
    if not isinstance(max_width, int) or max_width < 1:
        raise ValueError(f"`max_width` must be a positive int, got {max_width!r}.")
    cost = _FactoredCost(objective)
    loss0 = float(matrix_cost(jnp.zeros_like(g0)))
    tol = 1e-4 * loss0 if loss_tol is None else loss_tol
    grad_tol = grad_rtol * float(jnp.linalg.norm(g0))
    config = dict(
        epsilon=epsilon,
        loss_floor=loss_floor,
        loss_tol=tol,
        grad_tol=grad_tol,
        min_drop=min_drop,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        n_save=n_save,
        horizon_factor=horizon_factor,
        steps=steps,
        step_size=step_size,
        flow_options=flow_options,
    )

    weights = tuple(
        jnp.zeros(
            (max_width, n_in) if ell == 0 else (n_out, max_width) if ell == depth - 1
            else (max_width, max_width),
            g0.dtype,
        )
        for ell in range(depth)
    )
    saddles = [_saddle(cost, weights, 0, depth, rank_tol)]
    stages: list[GreedyStage] = []
    stop_reason = "max_width"
    for k in range(max_width):
        here = saddles[-1]
        if float(here.loss) <= (loss_floor + tol) * (1 + 1e-6):  # the floor's event, rounded
            stop_reason = "loss_floor"
            break
        if float(here.gradient_sv) <= grad_tol:
            stop_reason = "no_escape"  # ∇C(A) = 0: a minimum of C over all matrices
            break
        u, v = here.direction
        weights = _append_neuron(weights, k, u, v, epsilon)
        if method == "flow":
            weights, stage = _flow_stage(cost, weights, here.loss, here.speed, config)
        else:
            weights, stage = _descent_stage(cost, weights, config)
        stages.append(stage)
        saddles.append(_saddle(cost, weights, k + 1, depth, rank_tol))
        if stage.result != RESULTS.successful:
            stop_reason = "stage_failed"
            break
    else:
        if float(saddles[-1].loss) <= (loss_floor + tol) * (1 + 1e-6):
            stop_reason = "loss_floor"
    converged = all(bool(s.result == RESULTS.successful) for s in stages)
    return GreedyLowRank(saddles, stages, converged, stop_reason)
