"""Gradient descent under `lax.scan`: the discrete baseline of the flow (SPEC §1)."""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PyTree

from .._results import RESULTS, check
from .._trainable import split_trainable
from .._tree import tree_all_finite
from .._validate import check_int, check_real
from .._vector_field import GradientField
from ._flow import first_nonfinite_save, observation
from ._solution import FlowSolution, solution_from


@eqx.filter_jit
def _descend(problem, state0, learning_rate, *, optimizer, steps, save_every, observe):
    opt = optimizer(learning_rate)
    grad_fn = jax.grad(problem.loss)

    def step(carry, _):
        state, opt_state = carry
        updates, opt_state = opt.update(grad_fn(state), opt_state, state)
        return (optax.apply_updates(state, updates), opt_state), None

    def record(state):
        return observation(problem, observe, state)

    def block(carry, _):
        carry, _ = jax.lax.scan(step, carry, None, length=save_every)
        return carry, record(carry[0])

    carry = (state0, opt.init(state0))
    (state_end, _), rest = jax.lax.scan(block, carry, None, length=steps // save_every)
    first = record(state0)
    observed = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    finite = tree_all_finite(observed)
    n = jnp.asarray(steps)
    ts = learning_rate * jnp.arange(0, steps + 1, save_every, dtype=jnp.result_type(learning_rate))
    saved, loss = observed[0], observed[1]
    nonfinite_time = jnp.where(finite, jnp.inf, first_nonfinite_save(ts, ts[-1], n, loss, saved))
    return solution_from(
        ts,
        observed,
        event_time=jnp.array(jnp.inf, ts.dtype),
        event_mask=None,
        stop_time=ts[-1],
        stop_state=state_end,
        steps=None,
        stats={
            "num_steps": n,
            "num_accepted_steps": n,
            "num_rejected_steps": jnp.zeros_like(n),
            "grad_evals": n,
            "hvp_evals": jnp.zeros_like(n),
            "learning_rate": learning_rate,
            "nonfinite_time": nonfinite_time,
        },
        result=RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite_trajectory),
        static=problem.static if observe is None else None,
    )


def _default_save_every(steps: int, target: int = 256) -> int:
    """The divisor d of `steps` whose number of saves steps/d is closest to `target` (in log).

    It must divide `steps` (the scan saves every d iterations); steps // 256 need not.
    """
    divisors = set()
    for d in range(1, math.isqrt(steps) + 1):
        if steps % d == 0:
            divisors.update((d, steps // d))
    return min(sorted(divisors), key=lambda d: abs(math.log(steps / d) - math.log(target)))


def gradient_descent(
    objective: Callable,
    params0: PyTree,
    *,
    learning_rate: float,
    steps: int,
    optimizer: Callable[..., optax.GradientTransformation] = optax.sgd,
    save_every: int | None = None,
    observe: Callable | None = None,
    trainable=eqx.is_inexact_array,
    throw: bool = True,
) -> FlowSolution:
    """Gradient descent θ_{k+1} = θ_k − η∇L(θ_k) under `lax.scan`, as a `FlowSolution` (SPEC §1).

    It is the explicit-Euler discretisation of `gradient_flow`: iteration k sits at time t = kη,
    and as η → 0 the iterates converge to the flow at order 1 (tested). The papers train this way
    (e.g. Jacot Fig. 2 at η = 1e−4, Chen–Luo–Wang at 1e−3); it is stable for η < 2/λ_max(∇²L).

    **Arguments:**

    - `objective`, `params0`, `observe`, `trainable`, `throw`: as for `gradient_flow`.
    - `learning_rate`: η > 0 (may differ between calls without recompiling).
    - `steps`: number of iterations, a multiple of `save_every`.
    - `optimizer`: an optax factory called as `optimizer(learning_rate)`; `optax.sgd` is plain GD.
    - `save_every`: iterations between saves, dividing `steps` (default: the divisor giving
        closest to 256 saves).

    **Returns:** a `FlowSolution` with `ts = kη` at the saved iterations k = 0, save_every, ….
    A run that diverges is `nonfinite_trajectory`, with `sol.stats["nonfinite_time"]` the first
    saved time kη with a NaN/Inf (+inf otherwise).
    """
    if not isinstance(learning_rate, jax.core.Tracer):  # a traced η is the user's to check
        check_real("learning_rate", learning_rate, low=0.0, low_open=True)
    # The largest int32 (JAX's default int): the scan's length; also bounds the divisor search.
    steps = check_int("steps", steps, maximum=2**31 - 1)
    save_every = _default_save_every(int(steps)) if save_every is None else save_every
    if not isinstance(save_every, int | np.integer) or save_every <= 0 or steps % save_every:
        raise ValueError(
            f"`save_every` must be a positive int dividing `steps` = {steps}, got {save_every!r}."
        )
    state0, static = split_trainable(params0, trainable)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(state0))
    sol = _descend(
        GradientField(objective, static),
        state0,
        jnp.asarray(learning_rate, dtype),
        optimizer=optimizer,
        steps=int(steps),
        save_every=int(save_every),
        observe=observe,
    )
    return check(sol, throw=throw, what="gradient descent")
