"""Gradient flow dθ/dt = −∇L(θ) integrated with diffrax (SPEC §1)."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree
from optimistix import rms_norm

from .._results import RESULTS, check, from_diffrax
from .._trainable import split_trainable
from .._tree import tree_all_finite
from .._vector_field import GradientField
from ..solvers._base import fill_tolerances, work_stats
from ._events import to_diffrax_event
from ._options import FlowOptions, check_t1
from ._origin import handoff, origin_term, rescaled_h_path
from ._solution import FlowSolution, solution_from

_STATIC_OPTIONS = ("solver", "event", "stop_at_event", "observe", "record_steps", "max_steps")


def observation(field: GradientField, observe: Callable | None, state):
    """What a trajectory saves at a time: (the state or `observe(model)`, L, ‖∇L‖, ‖θ‖)."""
    loss, gnorm, norm = field.scalars(state)
    saved = state if observe is None else observe(eqx.combine(state, field.static))
    return saved, loss, gnorm, norm


def _save_fn(field, observe):
    return lambda t, state, args: observation(field, observe, state)


def _steps_fn(field):
    def fn(t, state, args):
        return (t,) + field.scalars(state)

    return fn


def _merge_after(after, first, second):
    """Entries of `second` at save indices where `after`, of `first` elsewhere (any pytree)."""

    def pick(a, b):
        mask = after.reshape(after.shape + (1,) * (a.ndim - 1))
        return jnp.where(mask, b, a)

    return jax.tree_util.tree_map(pick, first, second)


def _add_work(total, more):
    """Sum two dicts of counters (maxima for `max_*` counters)."""
    return {k: (jnp.maximum if k.startswith("max_") else jnp.add)(total[k], more[k]) for k in total}


class _Segment(eqx.Module):
    """One diffeqsolve of the flow: what it saved, where it stopped and its counters."""

    saved: tuple
    steps: tuple | None
    t_stop: jax.Array
    y_stop: PyTree
    stats: dict
    result: RESULTS
    diffrax_result: diffrax.RESULTS
    event_mask: PyTree


def _segment(field, solver, controller, t_start, t1, y_start, ts, dt0, event, config):
    """Integrate from (t_start, y_start) to t1, saving at `ts` (all ≥ t_start)."""
    subs = [diffrax.SubSaveAt(ts=ts, fn=_save_fn(field, config["observe"]))]
    if config["record_steps"]:
        subs.append(diffrax.SubSaveAt(steps=True, fn=_steps_fn(field)))
    subs.append(diffrax.SubSaveAt(t1=True))  # the state where the solve stopped
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        t_start,
        t1,
        dt0,
        y_start,
        saveat=diffrax.SaveAt(subs=subs, solver_state=True),
        stepsize_controller=controller,
        event=event,
        max_steps=config["max_steps"],
        throw=False,
        progress_meter=(
            diffrax.TextProgressMeter() if config["progress"] else diffrax.NoProgressMeter()
        ),
    )
    stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
    stats.update(work_stats(solver, sol.solver_state, stats))
    return _Segment(
        saved=sol.ys[0],
        steps=sol.ys[1] if config["record_steps"] else None,
        t_stop=sol.ts[-1][0],
        y_stop=jax.tree_util.tree_map(lambda x: x[0], sol.ys[-1]),
        stats=stats,
        result=from_diffrax(sol.result),
        diffrax_result=sol.result,
        event_mask=sol.event_mask,
    )


def _integrate(field, solver, controller, t_start, t1, y_start, ts, dt0, config):
    """The flow from t_start to t1, with the event's time recorded and, unless
    `stop_at_event`, the solve continued from the event state to t1 (save grids merged; shapes
    stay static). **Returns:** (`_Segment` of the whole, event time, event mask)."""
    event = to_diffrax_event(config["event"], field.loss)
    first = _segment(field, solver, controller, t_start, t1, y_start, ts, dt0, event, config)
    if event is None:
        return first, jnp.array(jnp.inf, dtype=ts.dtype), None
    fired = first.diffrax_result == diffrax.RESULTS.event_occurred
    event_time = jnp.where(fired, first.t_stop, jnp.inf)
    if config["stop_at_event"]:
        return first, event_time, first.event_mask
    t_event = first.t_stop
    second = _segment(
        field,
        solver,
        controller,
        t_event,
        t1,
        first.y_stop,
        jnp.maximum(ts, t_event),
        dt0,
        None,
        config,
    )
    # Only continue after an event (or t1), never past a failure of the first solve.
    ok = first.result == RESULTS.successful
    steps = first.steps
    if config["record_steps"]:
        steps = jax.tree_util.tree_map(
            lambda a, b: jnp.concatenate([a, b]), first.steps, second.steps
        )
    whole = _Segment(
        saved=_merge_after((ts > t_event) & ok, first.saved, second.saved),
        steps=steps,
        t_stop=jnp.where(ok, second.t_stop, first.t_stop),
        y_stop=jax.tree_util.tree_map(
            lambda a, b: jnp.where(ok, a, b), second.y_stop, first.y_stop
        ),
        stats=_add_work(first.stats, second.stats),
        result=RESULTS.where(ok, second.result, first.result),
        diffrax_result=second.diffrax_result,
        event_mask=first.event_mask,
    )
    return whole, event_time, first.event_mask


def _nonfinite(ts, t_stop, loss, saved) -> jax.Array:
    """Whether a NaN/Inf appeared at a save time the solve reached. (diffrax fills save times
    after the solve stopped — event or failure — with inf: not a non-finite value, so a
    max_steps failure stays a max_steps failure.)"""
    reached = ts <= t_stop
    finite = jnp.all(jnp.where(reached, jnp.isfinite(loss), True)) & tree_all_finite(
        _merge_after(~reached, saved, jax.tree_util.tree_map(jnp.zeros_like, saved))
    )
    return ~finite


def _start_from_origin(field, term, state0, t0, t1, ts, defect_tol):
    """Lemma 13's handoff from θ₀ (`origin_defect`): the start of the flow of L, the states at
    the save times before it (rescaled H-flow), and the handoff's statistics and result."""
    state_s, time, defect, lam, tau_s, h_steps, result = handoff(
        field.loss,
        term,
        state0,
        defect_tol,
        max_time=jnp.asarray(1e8, ts.dtype),
        rtol=1e-10,
        atol=1e-12,
        max_steps=100_000,
    )
    t_s = t0 + time
    result = RESULTS.where(
        (result == RESULTS.successful) & ~(t_s < t1), RESULTS.origin_handoff_after_t1, result
    )
    # After a failed handoff nothing is integrated (the solve runs from t1 to t1).
    t_start = jnp.where(result == RESULTS.successful, t_s, t1)
    before, path_result = rescaled_h_path(term, lam, tau_s, state0, ts - t0)
    result = RESULTS.where(result == RESULTS.successful, path_result, result)
    stats = dict(origin_time=t_s, origin_defect=defect, origin_h_steps=h_steps)
    return t_start, state_s, before, stats, result


@eqx.filter_jit
def solve_flow(field: GradientField, state0, times: dict, origin, config: dict) -> FlowSolution:
    """The jitted solve behind `gradient_flow` and `sweep`: `times` holds the traced numbers
    (t0, t1, ts, rtol, atol — NaN for the default —, dt0, origin_defect), `origin` the
    Taylor term at the origin or None, `config` the static options."""
    t0, t1, ts, rtol = times["t0"], times["t1"], times["ts"], times["rtol"]
    atol = jnp.where(jnp.isnan(times["atol"]), rtol * rms_norm(state0), times["atol"])
    solver = fill_tolerances(config["solver"], rtol, atol)
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    t_start, y_start, result, extra = t0, state0, RESULTS.successful, {}
    if origin is not None:
        t_start, y_start, before, extra, result = _start_from_origin(
            field, origin, state0, t0, t1, ts, times["origin_defect"]
        )
    whole, event_time, event_mask = _integrate(
        field,
        solver,
        controller,
        t_start,
        t1,
        y_start,
        jnp.maximum(ts, t_start),
        times["dt0"],
        config,
    )
    saved, loss, gnorm, norm = whole.saved
    if origin is not None:
        fill = jax.vmap(lambda s: observation(field, config["observe"], s))(before)
        saved, loss, gnorm, norm = _merge_after(ts >= t_start, fill, (saved, loss, gnorm, norm))
    result = RESULTS.where(result == RESULTS.successful, whole.result, result)
    result = RESULTS.where(
        _nonfinite(ts, whole.t_stop, loss, saved), RESULTS.nonfinite_trajectory, result
    )
    stats = dict(whole.stats, rtol=rtol, atol=atol, **extra)
    steps = None
    if config["record_steps"]:
        steps = dict(zip(("t", "loss", "grad_norm", "norm"), whole.steps))
    return solution_from(
        ts,
        (saved, loss, gnorm, norm),
        event_time=event_time,
        event_mask=event_mask,
        stop_time=whole.t_stop,
        stop_state=whole.y_stop,
        steps=steps,
        stats=stats,
        result=result,
        static=field.static if config["observe"] is None else None,
    )


def prepare(objective: Callable, params0: PyTree, t1, options: FlowOptions):
    """Everything `solve_flow` needs from the user's arguments, validated before compiling:
    (field, θ₀'s trainable state, traced numbers, origin term or None, static config)."""
    t1 = check_t1(float(options.t0), t1)
    state0, static = split_trainable(params0, options.trainable)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(state0))
    field = GradientField(objective, static)
    nan = jnp.asarray(jnp.nan, dtype)
    times = dict(
        t0=jnp.asarray(options.t0, dtype),
        t1=jnp.asarray(t1, dtype),
        ts=jnp.asarray(options.save_times(t1), dtype),
        rtol=jnp.asarray(options.rtol, dtype),
        atol=nan if options.atol is None else jnp.asarray(options.atol, dtype),
        dt0=None if options.dt0 is None else jnp.asarray(options.dt0, dtype),
        origin_defect=None
        if options.origin_defect is None
        else jnp.asarray(options.origin_defect, dtype),
    )
    origin = None if options.origin_defect is None else origin_term(field.loss, state0)
    config = {name: getattr(options, name) for name in _STATIC_OPTIONS}
    config["progress"] = options.progress
    return field, state0, times, origin, config


def gradient_flow(
    objective: Callable, params0: PyTree, t1: float, *, throw: bool = True, **options
) -> FlowSolution:
    """Integrate the gradient flow dθ/dt = −∇L(θ), θ(t0) = θ₀, with diffrax (SPEC §1).

    Jacot et al. §2, Kumar & Haupt §2, Chen–Luo–Wang §2: gradient descent with step η is the
    explicit-Euler discretisation of this ODE, with iteration k at time t = kη.

    **Arguments:**

    - `objective`: L, any callable mapping the parameters (a model or any pytree of float arrays)
        to a scalar, e.g. `MatrixCompletion`, `SquareLoss` or a user function.
    - `params0`: θ₀, e.g. `saddlejax.init.scale(DeepLinear(...), alpha)`.
    - `t1`: final time.
    - `throw`: raise on failure (default). With `throw=False` the failure is in `sol.result`,
        also per trajectory under `jax.vmap`; no numerical failure raises then.
    - `**options`: the fields of `FlowOptions` — `solver` (default `AutoStiff()`), `rtol`,
        `atol`, `t0`, `saveat`, `n_save`, `observe`, `event`, `stop_at_event`, `trainable`,
        `dt0`, `max_steps`, `record_steps`, `origin_defect`, `progress`.

    **Returns:** a `FlowSolution`.

    **Example:**

    ```python
    problem = saddlejax.matrix_completion_problem(jr.key(0))
    net = saddlejax.init.scale(saddlejax.nn.DeepLinear((10, 100, 100, 100, 10), key=jr.key(1)), 0.1)
    sol = saddlejax.gradient_flow(problem, net, 500.0)
    ```
    """
    options = FlowOptions(**options)
    sol = solve_flow(*prepare(objective, params0, t1, options))
    return check(sol, throw=throw, what="gradient flow")
