"""Gradient flow dθ/dt = −∇L(θ) integrated with diffrax (SPEC §1)."""

import warnings
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree
from optimistix import rms_norm

from .._cacheable import cacheable_errors
from .._flat import event_on_state, saveat_on_state
from .._results import RESULTS, NumericalWarning, check, from_diffrax
from .._trainable import split_trainable
from .._tree import tree_all_finite, tree_dot
from .._vector_field import GradientField
from ..solvers._base import AbstractMatrixFreeSolver, fill_tolerances, work_stats
from ._events import armed_event, differentiable_event_time, to_diffrax_event
from ._options import FlowOptions, check_t1
from ._origin import h_flow_tolerances, handoff, origin_term, rescaled_h_path
from ._solution import FlowSolution, solution_from

_STATIC_OPTIONS = (
    "solver",
    "event",
    "stop_at_event",
    "require_event",
    "observe",
    "record_steps",
    "max_steps",
    "adjoint",
)

# A step shorter than this many float spacings of t does not advance t in a resolvable way:
# the solve stops there (diffrax would otherwise repeat steps of zero length to `max_steps`).
MIN_STEP_ULPS = 10.0
# Why the step size collapsed, as recorded by `_GuardedController`.
_OK, _UNDERFLOW, _NONFINITE, _IMPLICIT = 0, 1, 2, 3


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


class _GuardedController(diffrax.AbstractAdaptiveStepSizeController):
    """diffrax's PID controller that ends the solve when the next step is shorter than
    `MIN_STEP_ULPS` float spacings of t (diffrax's `dt_min_reached`), and records why in its
    state: the last candidate step was finite (plain underflow: stiffness, a singularity or a
    blow-up), not finite (the vector field is NaN/inf ahead), or finite with a non-finite error
    estimate from an implicit solver (its Newton/Krylov solve failed)."""

    controller: diffrax.PIDController
    implicit: bool = eqx.field(static=True)

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm

    def wrap(self, direction):
        return _GuardedController(self.controller.wrap(direction), self.implicit)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        # Near t = 0 the float spacing of t vanishes; ε times the first step stands in for it
        # there, so a collapsing step stops at ~10ε²·h₀ instead of running into subnormal
        # numbers. (Not ε·|t1 − t0|: a clock restarted at a handoff may have t1 ≈ 10¹²⁰.)
        floor = jnp.finfo(jnp.result_type(t0, t1)).eps * jnp.abs(tnext - t0)
        # The last proposed step (unclipped by t1): a continued solve starts with it.
        dt_next = jnp.asarray(tnext - t0, jnp.result_type(t0, t1))
        return tnext, (state, jnp.asarray(_OK, jnp.int32), floor, dt_next)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        state, _, floor, _ = controller_state
        keep, next_t0, next_t1, jump, state, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )
        dt = next_t1 - next_t0
        eps = jnp.finfo(jnp.result_type(dt)).eps
        resolution = MIN_STEP_ULPS * eps * jnp.maximum(jnp.abs(next_t0), floor)
        underflow = ~(jnp.abs(dt) > resolution)
        finite_y = tree_all_finite(y1_candidate)
        finite_error = tree_all_finite(y_error)
        implicit_failed = finite_y & ~finite_error & self.implicit
        cause = jnp.where(
            implicit_failed, _IMPLICIT, jnp.where(finite_y & finite_error, _UNDERFLOW, _NONFINITE)
        )
        cause = jnp.where(underflow, cause, _OK).astype(jnp.int32)
        result = diffrax.RESULTS.where(
            underflow & (result == diffrax.RESULTS.successful),
            diffrax.RESULTS.dt_min_reached,
            result,
        )
        dt_next = jnp.asarray(next_t1 - next_t0, controller_state[3].dtype)
        return keep, next_t0, next_t1, jump, (state, cause, floor, dt_next), result


def _is_implicit(solver) -> bool:
    return isinstance(solver, diffrax.AbstractImplicitSolver | AbstractMatrixFreeSolver)


def _runaway(loss0, loss, gnorm, t_stop) -> jax.Array:
    """Whether the flow is blowing up where the steps collapsed (L = `loss`, ‖∇L‖ = `gnorm` at
    t = `t_stop`; L = `loss0` where the solve started).

    A gradient flow can only blow up where L → −∞: ‖θ(t) − θ(t₀)‖² ≤ (t − t₀)(L(θ(t₀)) − L(θ(t)))
    (Cauchy–Schwarz on ∫‖θ̇‖² = L(θ(t₀)) − L(θ(t))), so ‖θ‖ → ∞ at a finite time forces
    L → −∞. The test: L fell below −10|L(y_start)| and changes by its own size within √ε·|t|
    (|L|/‖∇L‖², with dL/dt = −‖∇L‖²). A loss bounded below (every square loss) never passes
    it, so a stiff or unresolvable flow there is reported as step-size underflow, not blow-up.
    """
    short = jnp.sqrt(jnp.finfo(jnp.result_type(t_stop)).eps) * jnp.abs(t_stop)
    return (loss < -10 * jnp.abs(loss0)) & (jnp.abs(loss) <= short * gnorm**2)


def _classify(field, sol, y_start, t_stop, y_stop):
    """The saddlejax result of one diffeqsolve, and the time a non-finite value stopped it
    (+inf if none). A collapsed step size is a blow-up (`_runaway`), a non-finite vector field,
    a failed implicit solve or plain underflow; a failed solve whose last state has a NaN/Inf
    loss or gradient is `nonfinite_trajectory`; a failed event root find is
    `event_not_located`."""
    result = from_diffrax(sol.result)
    cause = sol.controller_state[1]
    collapsed = sol.result == diffrax.RESULTS.dt_min_reached
    masks = [jnp.asarray(m) for m in jax.tree_util.tree_leaves(sol.event_mask)]
    fired = jnp.any(jnp.stack(masks)) if masks else jnp.array(False)
    known = (
        (sol.result == diffrax.RESULTS.successful)
        | (sol.result == diffrax.RESULTS.event_occurred)
        | collapsed
        | (sol.result == diffrax.RESULTS.max_steps_reached)
    )
    result = RESULTS.where(fired & ~known, RESULTS.event_not_located, result)
    failed = result != RESULTS.successful
    loss, gnorm, _ = field.scalars(y_stop)
    finite_stop = tree_all_finite(y_stop) & jnp.isfinite(loss) & jnp.isfinite(gnorm)
    result = RESULTS.where(
        collapsed,
        RESULTS.where(
            cause == _IMPLICIT,
            RESULTS.stiff_solver_failed,
            RESULTS.step_size_underflow,
        ),
        result,
    )
    nonfinite = (collapsed & (cause == _NONFINITE)) | (failed & ~finite_stop)
    result = RESULTS.where(nonfinite, RESULTS.nonfinite_trajectory, result)
    blowup = collapsed & finite_stop & _runaway(field.loss(y_start), loss, gnorm, t_stop)
    result = RESULTS.where(blowup, RESULTS.finite_time_blowup, result)
    nonfinite_time = jnp.where(nonfinite & ~blowup, t_stop, jnp.inf)
    return result, nonfinite_time


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
    nonfinite_time: jax.Array
    solver_state: PyTree
    controller_state: PyTree


def _segment(
    field, solver, controller, t_start, t1, y_start, ts, dt0, event, config, resume=None,
    args=None,
):
    """Integrate from (t_start, y_start) to t1, saving at `ts` (all ≥ t_start); `resume`:
    the solver and controller states a previous solve stopped with, or None; `args`: what the
    event's condition receives (see `armed_event`)."""
    states = {}
    if resume is not None:
        states = dict(
            solver_state=resume["solver_state"], controller_state=resume["controller_state"]
        )
        dt0 = resume["controller_state"][3]
    subs = [diffrax.SubSaveAt(ts=ts, fn=_save_fn(field, config["observe"]))]
    if config["record_steps"]:
        subs.append(diffrax.SubSaveAt(steps=True, fn=_steps_fn(field)))
    subs.append(diffrax.SubSaveAt(t1=True))  # the state where the solve stopped
    saveat = diffrax.SaveAt(subs=subs, solver_state=True, controller_state=True)
    # The solver sees one flat vector; what is saved, and what events see, is the pytree θ.
    flat, x_start = field.flattened(y_start)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(flat),
        solver,
        t_start,
        t1,
        dt0,
        x_start,
        args=args,
        saveat=saveat_on_state(saveat, flat.unravel),
        stepsize_controller=controller,
        event=event_on_state(event, flat.unravel),
        max_steps=config["max_steps"],
        adjoint=config["adjoint"],
        throw=False,
        **states,
        progress_meter=(
            diffrax.TextProgressMeter() if config["progress"] else diffrax.NoProgressMeter()
        ),
    )
    stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
    stats.update(work_stats(solver, sol.solver_state, stats))
    t_stop = sol.ts[-1][0]
    y_stop = jax.tree_util.tree_map(lambda x: x[0], sol.ys[-1])
    result, nonfinite_time = _classify(field, sol, y_start, t_stop, y_stop)
    return _Segment(
        saved=sol.ys[0],
        steps=sol.ys[1] if config["record_steps"] else None,
        t_stop=t_stop,
        y_stop=y_stop,
        stats=stats,
        result=result,
        diffrax_result=sol.result,
        event_mask=sol.event_mask,
        nonfinite_time=nonfinite_time,
        solver_state=sol.solver_state,
        controller_state=sol.controller_state,
    )


def _integrate(field, solver, controller, t_start, t1, y_start, ts, dt0, config, resume=None):
    """The flow from t_start to t1, with the event's time recorded and, unless
    `stop_at_event`, the solve continued from the event state to t1 (save grids merged; shapes
    stay static). **Returns:** (`_Segment` of the whole, event time, event mask)."""
    event = to_diffrax_event(config["event"], field.loss)
    second = None
    if event is not None and not config["stop_at_event"] and resume is None:
        first, second = _event_then_rest(
            field, solver, controller, t_start, t1, y_start, ts, dt0, event, config
        )
    else:
        first = _segment(
            field, solver, controller, t_start, t1, y_start, ts, dt0, event, config, resume
        )
    if event is None:
        return first, jnp.array(jnp.inf, dtype=ts.dtype), None
    fired = first.diffrax_result == diffrax.RESULTS.event_occurred
    t_event, y_event = first.t_stop, first.y_stop
    if not isinstance(config["event"], diffrax.Event):
        t_event, y_event = differentiable_event_time(
            config["event"], field.loss, first.t_stop, first.y_stop, first.event_mask
        )
    event_time = jnp.where(fired, t_event, jnp.inf)
    if config["stop_at_event"]:
        stopped = eqx.tree_at(lambda s: (s.t_stop, s.y_stop), first, (t_event, y_event))
        return stopped, event_time, first.event_mask
    t_event = first.t_stop
    if second is None:  # a resumed solve: its continuation starts afresh, compiled apart
        second = _segment(
            field, solver, controller, t_event, t1, first.y_stop, jnp.maximum(ts, t_event), dt0,
            None, config,
        )
    return _joined(first, second, ts, t_event, config), event_time, first.event_mask


def _event_then_rest(field, solver, controller, t_start, t1, y_start, ts, dt0, event, config):
    """The solve up to the event, then on to t1 from where it stopped, as two iterations of one
    `lax.scan` (the event disarmed in the second): one traced and compiled solve instead of
    two (`benchmarks/bench_event_continuation.py` measures what that saves).
    **Returns:** the two `_Segment`s."""
    event = armed_event(event)

    def one(carry, _):
        t_s, y_s, armed = carry
        seg = _segment(
            field, solver, controller, t_s, t1, y_s, jnp.maximum(ts, t_s), dt0, event, config,
            args=armed,
        )
        return (seg.t_stop, seg.y_stop, jnp.zeros_like(armed)), seg

    carry = (jnp.asarray(t_start, ts.dtype), y_start, jnp.asarray(True))
    _, segs = jax.lax.scan(one, carry, None, length=2)
    return tuple(jax.tree_util.tree_map(lambda x, i=i: x[i], segs) for i in range(2))


def _joined(first, second, ts, t_event, config) -> _Segment:
    """The solve to the event and its continuation to t1 as one `_Segment`."""
    # Only continue after an event (or t1), never past a failure of the first solve.
    ok = first.result == RESULTS.successful
    steps = first.steps
    if config["record_steps"]:
        steps = jax.tree_util.tree_map(
            lambda a, b: jnp.concatenate([a, b]), first.steps, second.steps
        )
    return _Segment(
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
        nonfinite_time=jnp.where(ok, second.nonfinite_time, first.nonfinite_time),
        solver_state=second.solver_state,
        controller_state=second.controller_state,
    )


# Solves on successive clocks per flow after an origin handoff (one `lax.scan` iteration each,
# compiled once; `clock_restart` of `FlowOptions` says when a clock restarts): an escape from a
# k-homogeneous saddle shrinks the clock ≈ (t/clock_restart)^{1/(k−1)}-fold per restart, a few
# restarts per plateau.
MAX_CLOCKS = 12


def _with_restart(user: diffrax.Event | None, loss, threshold) -> diffrax.Event:
    """The event (user's conditions, clock restart): a boolean that fires at the end of the first
    step where t·‖∇L(θ)‖ > threshold·‖θ‖ (θ moves by its own size in less than t/threshold)."""

    def restart(t, y, args, **kwargs):
        g = jax.grad(loss)(y)
        return jnp.abs(t) * jnp.sqrt(tree_dot(g, g)) > threshold * jnp.sqrt(tree_dot(y, y))

    if user is None:
        return diffrax.Event((lambda t, y, args, **kwargs: jnp.array(False), restart))
    if user.direction is not None:
        raise ValueError(
            "`origin_defect` with a `diffrax.Event` that sets `direction` is not supported: "
            "pass saddlejax events (`EscapeRadius`, `LossBelow`, `CriticalPoint`)."
        )
    return diffrax.Event((user.cond_fn, restart), root_finder=user.root_finder)


def _integrate_on_clocks(field, solver, controller, t_s, t1, y_start, ts, dt0, threshold, config):
    """The flow of L from the handoff (t_s, y_start) to t1 on clocks that start at 0: at the
    handoff, and again where `_with_restart` fires (the time since the handoff is carried as
    the sum of the clocks' ends). Up to `MAX_CLOCKS` solves of one `lax.scan`; the user's event
    fires once (then, unless `stop_at_event`, the solve goes on). Restarting re-initialises
    the solver (as after an event): its step size carries over.
    **Returns:** (`_Segment` in global time, event time, the event's time since t_s, its mask,
    the number of restarts)."""
    user = to_diffrax_event(config["event"], field.loss)
    event = _with_restart(None if user is None else armed_event(user), field.loss, threshold)
    flow_event = config["event"] is not None and not isinstance(config["event"], diffrax.Event)
    since_t1, since_ts = t1 - t_s, ts - t_s
    zero = jnp.zeros((), ts.dtype)

    def solve(tau, y, horizon, elapsed, armed):
        local_ts = jnp.maximum(since_ts - elapsed, tau)
        return _segment(
            field, solver, controller, tau, horizon, y, local_ts, dt0, event, config, args=armed
        )

    template = jax.eval_shape(solve, zero, y_start, since_t1, zero, jnp.array(True))
    blank = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), template)
    user_mask0 = jax.tree_util.tree_map(lambda m: jnp.zeros_like(m), blank.event_mask[0])
    acc0 = dict(
        seg=blank, since_stop=zero, event_since=jnp.asarray(jnp.inf, ts.dtype),
        event_mask=user_mask0, nonfinite_since=jnp.asarray(jnp.inf, ts.dtype),
        restarts=jnp.zeros((), jnp.int32),
    )
    if config["record_steps"]:
        acc0["seg"] = eqx.tree_at(
            lambda s: s.steps[0], acc0["seg"], jnp.full_like(acc0["seg"].steps[0], jnp.inf)
        )

    def one(carry, _):
        tau, y, armed, elapsed, done, acc = carry
        horizon = jnp.where(done, tau, since_t1 - elapsed)
        seg = solve(tau, y, horizon, elapsed, armed)
        ran = ~done
        fired = ran & (seg.diffrax_result == diffrax.RESULTS.event_occurred)
        user_mask, restart_mask = seg.event_mask
        user_fired = fired & armed & jnp.any(
            jnp.stack([jnp.asarray(m) for m in jax.tree_util.tree_leaves(user_mask)])
        )
        restart = fired & ~user_fired & jnp.asarray(restart_mask)
        ok = seg.result == RESULTS.successful
        t_ev, y_ev = seg.t_stop, seg.y_stop
        if flow_event:
            t_ev, y_ev = differentiable_event_time(
                config["event"], field.loss, seg.t_stop, seg.y_stop, user_mask
            )
        stop_here = user_fired & config["stop_at_event"]
        t_stop = jnp.where(stop_here, t_ev, seg.t_stop)
        y_stop = jax.tree_util.tree_map(lambda a, b: jnp.where(stop_here, a, b), y_ev, seg.y_stop)

        def where_ran(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(ran, a, b), new, old)

        old = acc["seg"]
        mine = ran & (since_ts - elapsed >= tau)  # saves this solve made
        steps = old.steps
        if config["record_steps"]:
            joined = jax.tree_util.tree_map(
                lambda a, b: jnp.concatenate([a, b]),
                old.steps,
                (jnp.where(ran, seg.steps[0] + elapsed, jnp.inf),) + tuple(seg.steps[1:]),
            )
            order = jnp.argsort(joined[0], stable=True)[: old.steps[0].shape[0]]
            steps = tuple(x[order] for x in joined)
        merged = _Segment(
            saved=_merge_after(mine, old.saved, seg.saved),
            steps=steps,
            t_stop=zero,
            y_stop=where_ran(y_stop, old.y_stop),
            stats=_add_work(old.stats, seg.stats),
            result=RESULTS.where(ran, seg.result, old.result),
            diffrax_result=diffrax.RESULTS.where(ran, seg.diffrax_result, old.diffrax_result),
            event_mask=old.event_mask,
            nonfinite_time=zero,
            solver_state=where_ran(seg.solver_state, old.solver_state),
            controller_state=where_ran(seg.controller_state, old.controller_state),
        )
        acc = dict(
            seg=merged,
            since_stop=jnp.where(ran, elapsed + t_stop, acc["since_stop"]),
            event_since=jnp.where(user_fired, elapsed + t_ev, acc["event_since"]),
            event_mask=jax.tree_util.tree_map(
                lambda a, b: jnp.where(user_fired, a, b), user_mask, acc["event_mask"]
            ),
            nonfinite_since=jnp.where(
                ran & jnp.isfinite(seg.nonfinite_time),
                elapsed + seg.nonfinite_time,
                acc["nonfinite_since"],
            ),
            restarts=acc["restarts"] + restart.astype(jnp.int32),
        )
        done = done | ~ok | stop_here | ~(user_fired | restart)
        carry = (
            jnp.where(restart, zero, seg.t_stop),
            where_ran(seg.y_stop, y),
            armed & ~user_fired,
            jnp.where(restart, elapsed + seg.t_stop, elapsed),
            done,
            acc,
        )
        return carry, None

    carry = (zero, y_start, jnp.array(True), zero, jnp.array(False), acc0)
    (_, _, _, _, done, acc), _ = jax.lax.scan(one, carry, None, length=MAX_CLOCKS)
    seg = acc["seg"]
    result = RESULTS.where(
        done | (seg.result != RESULTS.successful), seg.result, RESULTS.clock_restarts_exhausted
    )
    whole = eqx.tree_at(
        lambda s: (s.t_stop, s.nonfinite_time, s.result, s.event_mask),
        seg,
        (t_s + acc["since_stop"], t_s + acc["nonfinite_since"], result, acc["event_mask"]),
        is_leaf=lambda x: x is None,
    )
    if config["record_steps"]:
        whole = eqx.tree_at(lambda s: s.steps[0], whole, whole.steps[0] + t_s)
    event_mask = acc["event_mask"] if user is not None else None
    return whole, t_s + acc["event_since"], acc["event_since"], event_mask, acc["restarts"]


def first_nonfinite_save(ts, t_stop, accepted, loss, saved) -> jax.Array:
    """The first save time the solve reached with a NaN/Inf loss or saved value (+inf if none).
    (diffrax fills the save times it did not reach — after an event or a failure, and t0 itself
    when no step was accepted — with inf: not a non-finite value, so a max_steps failure stays
    a max_steps failure.)"""
    reached = (ts < t_stop) | ((ts == t_stop) & (accepted > 0))

    def bad(x):
        x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[:, None]
        return ~jnp.all(jnp.isfinite(x), axis=1)

    arrays = [x for x in jax.tree_util.tree_leaves(saved) if eqx.is_inexact_array(x)]
    bad_at = ~jnp.isfinite(loss)
    for x in arrays:
        bad_at = bad_at | bad(x)
    return jnp.min(jnp.where(reached & bad_at, ts, jnp.inf))


def _start_from_origin(field, term, state0, t0, t1, ts, defect_tol):
    """Lemma 13's handoff from θ₀ (`origin_defect`): the start of the flow of L, the states at
    the save times before it (rescaled H-flow), and the handoff's statistics and result."""
    rtol, atol = h_flow_tolerances(defect_tol)
    state_s, time, defect, lam, tau_s, h_steps, result, records = handoff(
        field.loss,
        term,
        state0,
        defect_tol,
        max_time=jnp.asarray(1e4, ts.dtype),
        rtol=rtol,
        atol=atol,
        max_steps=100_000,
    )
    t_s = t0 + time
    result = RESULTS.where(
        (result == RESULTS.successful) & ~(t_s < t1), RESULTS.origin_handoff_after_t1, result
    )
    # After a failed handoff nothing is integrated (the solve runs from t1 to t1).
    t_start = jnp.where(result == RESULTS.successful, t_s, t1)
    before, path_result = rescaled_h_path(
        term, lam, tau_s, state0, ts - t0, ts < t_start, records, rtol, atol
    )
    result = RESULTS.where(result == RESULTS.successful, path_result, result)
    stats = dict(origin_time=t_s, origin_defect=defect, origin_h_steps=h_steps)
    return t_start, state_s, before, stats, result


@eqx.filter_jit
def solve_flow(field: GradientField, state0, times: dict, origin, config: dict) -> FlowSolution:
    """The jitted solve behind `gradient_flow` and `sweep`: `times` holds the traced numbers
    (t0, t1, ts, rtol, atol — None for the default —, dt0, origin_defect), `origin` the
    Taylor term at the origin or None, `config` the static options."""
    t0, t1, ts, rtol = times["t0"], times["t1"], times["ts"], times["rtol"]
    if times["atol"] is None:
        # A tolerance, not part of the result: no derivative flows through it.
        atol = rtol * jax.lax.stop_gradient(rms_norm(state0))
        valid = jnp.isfinite(rtol) & (rtol > 0)
    else:
        atol = times["atol"]
        valid = jnp.isfinite(rtol) & (rtol > 0) & jnp.isfinite(atol) & (atol > 0)
    # Invalid (traced) tolerances: nothing is integrated (the solve runs from t1 to t1 with
    # harmless tolerances) and the result says why.
    rtol, atol = jnp.where(valid, rtol, 1e-3), jnp.where(valid, atol, 1e-6)
    solver = fill_tolerances(config["solver"], rtol, atol)
    controller = _GuardedController(
        diffrax.PIDController(rtol=rtol, atol=atol), _is_implicit(config["solver"])
    )
    t_start, y_start, result, extra = t0, state0, RESULTS.successful, {}
    if origin is not None:
        t_start, y_start, before, extra, result = _start_from_origin(
            field, origin, state0, t0, t1, ts, times["origin_defect"]
        )
    t_start = jnp.where(valid, t_start, t1)
    result = RESULTS.where(valid, result, RESULTS.invalid_tolerance)
    if origin is None:
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
            times.get("resume"),
        )
    else:
        # After a handoff the flow of L runs on clocks started there (at t_s ≈ α^{−(k−2)},
        # 10²⁰ at α = 1e−10, depth 4, one float spacing of t outlasts the drop that follows).
        whole, event_time, since, event_mask, restarts = _integrate_on_clocks(
            field, solver, controller, t_start, t1, y_start, ts, times["dt0"],
            times["clock_restart"], config,
        )
        extra.update(event_time_after_origin=since, clock_restarts=restarts)
    saved, loss, gnorm, norm = whole.saved
    if origin is not None:
        fill = jax.vmap(lambda s: observation(field, config["observe"], s))(before)
        saved, loss, gnorm, norm = _merge_after(ts >= t_start, fill, (saved, loss, gnorm, norm))
    result = RESULTS.where(result == RESULTS.successful, whole.result, result)
    first_bad_save = first_nonfinite_save(
        ts, whole.t_stop, whole.stats["num_accepted_steps"], loss, saved
    )
    keep = (result == RESULTS.finite_time_blowup) | (result == RESULTS.invalid_tolerance)
    result = RESULTS.where(
        jnp.isfinite(first_bad_save) & ~keep, RESULTS.nonfinite_trajectory, result
    )
    nonfinite_time = jnp.where(
        result == RESULTS.nonfinite_trajectory,
        jnp.minimum(first_bad_save, whole.nonfinite_time),
        jnp.inf,
    )
    if config["event"] is not None and config["require_event"]:
        result = RESULTS.where(
            (result == RESULTS.successful) & ~jnp.isfinite(event_time),
            RESULTS.event_not_fired,
            result,
        )
    stats = dict(whole.stats, rtol=rtol, atol=atol, nonfinite_time=nonfinite_time, **extra)
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
        resume=dict(
            t1=times["t1"],
            solver_state=whole.solver_state,
            controller_state=whole.controller_state,
        )
        if config["keep_solver_state"]
        else None,
    )


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_finite_params(params0) -> None:
    """A ValueError naming the first leaf of `params0` with a NaN or infinite entry (concrete
    leaves only: under a user's `jit` the solve reports `nonfinite_trajectory` instead)."""
    leaves = jax.tree_util.tree_flatten_with_path(params0)[0]
    for path, leaf in leaves:
        if not (eqx.is_inexact_array(leaf) and _is_concrete(leaf)):
            continue
        finite = np.isfinite(np.asarray(leaf))  # on the host: no compilation per leaf shape
        if not finite.all():
            raise ValueError(
                f"`params0` has NaN or infinite entries at `params0{jax.tree_util.keystr(path)}`"
                f" ({int((~finite).sum())} of {leaf.size}): the flow from it is "
                "not defined. Check the initialisation (e.g. `init.scale` with a finite α)."
            )


# The time scale of the unit-scale dynamics must span this many float spacings of t at the
# escape time. Calibration (depth-4 DLN, Tsit5, float32): event times are right to 3e−7 down to
# 0.4 spacings per time scale (α = 2e−3) and the solve fails from 0.25 (α = 1.5e−3); 3 warns
# ten times before that, and not at α = 1e−2 (10.7 spacings).
MIN_TIME_RESOLUTION = 3.0
# Below this initial scale the float64 time-resolution check is evaluated (`_numerical_warnings`).
TINY_SCALE = 1e-6
# Digits that a direction at the initial scale must keep after the state has grown
# (`_precision_warning`): two keep a later escape's time to ≈ 1 %.
MIN_DIGITS = 2.0


@eqx.filter_jit
def _time_scales(field: GradientField, state0):
    """(τ₀, τ̃): the time for θ to move by its own size, τ = ‖θ‖/‖∇L(θ)‖, at θ₀ and at the
    unit-scale θ̃ = θ₀/RMS(θ₀)."""

    def tau(state):
        grad = jax.grad(field.loss)(state)
        return jnp.sqrt(tree_dot(state, state) / tree_dot(grad, grad))

    unit = jax.tree_util.tree_map(lambda x: x / rms_norm(state0), state0)
    return tau(state0), tau(unit)


def _warn(message: str, stacklevel: int = 5) -> None:
    # user code → gradient_flow → prepare → _numerical_warnings → _warn
    warnings.warn(message, NumericalWarning, stacklevel=stacklevel)


def _numerical_warnings(field: GradientField, state0, options: FlowOptions, dtype) -> None:
    """Warn (`NumericalWarning`) where the solve would run but cannot resolve the flow:

    - `rtol` below 4 float spacings of 1 (eps of the state's dtype): the error estimate is
        roundoff, the controller can only shrink steps;
    - an explicit `atol` that is not well below the initial scale: atol > max(10⁻³, rtol)·RMS(θ₀),
        so the controller accepts errors of order the state itself at the start;
    - a state dtype coarser than float64 (float32 without `jax_enable_x64`) at an initial scale
        where time cannot be resolved: by Lemma 13 the flow from θ₀ = αθ̃ near a k-homogeneous
        critical point escapes after a time of order τ₀ = ‖θ₀‖/‖∇L(θ₀)‖ ∝ α^{−(k−2)}, and then
        moves on the time scale τ̃ of the unit-scale state θ₀/RMS(θ₀); at t ≈ τ₀ one float
        spacing is ε·τ₀, so the escape is resolved only if τ̃ ≥ `MIN_TIME_RESOLUTION`·ε·τ₀.
        For float64 it is evaluated (two gradients) only below RMS(θ₀) = `TINY_SCALE`, since it
        fires only for α^{k−2} ≲ 10⁻¹⁵ (a depth-4 DLN below α ≈ 10⁻⁸). With `origin_defect`
        the first drop is resolved (L runs on a clock started at the handoff) and the warning
        is about the escapes after it.
    """
    eps = float(jnp.finfo(dtype).eps)
    name = jnp.dtype(dtype).name
    x64_hint = " or enable float64 (`jax.config.update('jax_enable_x64', True)`)"
    rtol = _largest(options.rtol)
    if rtol is not None and rtol < 4 * eps:
        _warn(
            f"`rtol` = {rtol:g} is below 4·eps of the state's dtype {name} (eps = {eps:.3g}): "
            "the error estimate is roundoff and the step size can only shrink. Raise `rtol`"
            + (x64_hint if eps > 1e-10 else "")
            + "."
        )
    atol = _largest(options.atol)
    low_precision = eps > 1e-10
    leaves = jax.tree_util.tree_leaves(state0)
    if not leaves or not all(map(_is_concrete, leaves)):
        return
    scale = _rms(leaves)  # RMS(θ₀), on the host
    if atol is not None and scale > 0 and atol > max(1e-3, rtol or 0.0) * scale:
        _warn(
            f"`atol` = {atol:g} is not well below the initial scale RMS(θ₀) = {scale:.3g}: the "
            "step-size controller accepts errors comparable to the state, so the early dynamics "
            "near θ₀ are not resolved. Use the default `atol=None` (rtol·RMS(θ₀)) or "
            "atol ≤ 1e−3·RMS(θ₀)."
        )
    if not (scale > 0 and (low_precision or scale < TINY_SCALE)):
        return
    tau0, tau_unit = (float(x) for x in _time_scales(field, state0))
    if np.isfinite(tau0) and np.isfinite(tau_unit) and tau_unit < MIN_TIME_RESOLUTION * eps * tau0:
        what = "the escape (and events near it) cannot be resolved"
        fix = (
            x64_hint + " before creating arrays."
            if low_precision
            else ", or pass `origin_defect` (the flow of L then runs on a clock started at the "
            "handoff, which resolves the first drop; later escapes of k > 2 saddles take as "
            "long again on that clock and stay unresolved)."
        )
        if options.origin_defect is not None:
            what = (
                "the first drop is resolved (the flow of L runs on a clock started at the "
                "handoff), but a later escape of a k > 2 saddle takes as long again on that "
                "clock and cannot be resolved"
            )
            fix = " (the α → 0 times of the later escapes: `saddle_chain`)."
        _warn(
            f"The state is {name} and the initial scale RMS(θ₀) = {scale:.3g} is too small for "
            f"it: the flow escapes after t ≈ {tau0:.3g}, where one float spacing of t "
            f"({eps * tau0:.3g}) is not small against the time scale {tau_unit:.3g} of the "
            f"escape itself, so {what}. Use a larger initial scale" + fix
        )


def _rms(leaves) -> float:
    flat = np.concatenate([np.ravel(np.asarray(x, dtype=np.float64)) for x in leaves])
    return float(np.sqrt(np.mean(flat**2)))


def _precision_warning(state0, sol: FlowSolution, trainable, rtol) -> None:
    """Warn (`NumericalWarning`) when the state grew so far beyond its initial scale that
    components still at that scale fell below the resolution of the solve: after the first
    escape of a deep linear net the typical (median) weight entry is O(S), and a direction that
    is still at the initial scale RMS(θ₀) is stored in the same entries with
    log₁₀(RMS(θ₀)/(δ·S)) digits, where δ is the float spacing ε or, if larger, the solver's
    per-step relative error `rtol`. Later escapes start from those directions, so below
    `MIN_DIGITS` their times are set by rounding or by the solver's error, not by θ₀ (measured,
    depth-4 width-10 DLN, rtol 1e−6 against 1e−10: second drop moved 1.2e−5 at 2.3 digits,
    2.1e−3 at 1.3, 10–30 % at 0.5; concrete arguments only)."""
    leaves = jax.tree_util.tree_leaves(state0)
    final = jax.tree_util.tree_leaves(split_trainable(sol.final_params, trainable)[0])
    if not leaves or not all(map(_is_concrete, leaves + final + [sol.result._value])):
        return
    if not bool(np.all(np.asarray(sol.result._value) == RESULTS.successful._value)):
        return  # a failed solve (e.g. a blow-up) reports its own cause
    dtype = jnp.result_type(*leaves)
    eps = float(jnp.finfo(dtype).eps)
    scale = _rms(leaves)
    # The typical entry: where only a few entries grew (separate neurons of a two-layer net)
    # the others keep their own scale, and their precision with it.
    reached = float(np.median(np.abs(np.concatenate([np.ravel(np.asarray(x)) for x in final]))))
    if not (0 < scale and reached > 1e3 * scale):
        return
    growth = (
        f"The state grew from RMS(θ₀) = {scale:.3g} to a median entry of {reached:.3g}: "
        "directions still at the initial scale keep "
    )
    digits = np.log10(scale / (eps * reached))
    if digits < MIN_DIGITS:
        _warn(
            growth + f"{max(digits, 0.0):.1f} digits in {dtype} (eps = {eps:.3g}), so escapes "
            "after the first are seeded by rounding and their times do not follow θ₀'s scale. "
            "Use a larger initial scale (in float64 RMS(θ₀) ≳ 1e−12·median|θ| keeps two "
            "digits).",
            stacklevel=4,  # user code → gradient_flow → _precision_warning → _warn
        )
        return
    if rtol is None or rtol <= eps:
        return
    digits = np.log10(scale / (rtol * reached))
    if digits < MIN_DIGITS:
        enough = 10.0**-MIN_DIGITS * scale / reached
        fix = (
            f"Lower `rtol` to ≲ {enough:.2g} (more steps; fewer with "
            "`AutoStiff(implicit=RosenbrockKrylov(tableau=RODAS5P))`) or use a larger "
            "initial scale"
            if enough >= 4 * eps
            else "Use a larger initial scale (no `rtol` above roundoff keeps two digits)"
        )
        _warn(
            growth + f"{max(digits, 0.0):.1f} digits against the solver's error (`rtol` = "
            f"{rtol:.3g} of the state per step), so escapes after the first are seeded partly "
            f"by that error and their times do not follow θ₀'s scale. {fix}; the α → 0 limit "
            "of the later escapes: `saddle_chain`.",
            stacklevel=4,
        )


def _largest(value) -> float | None:
    """The largest entry of a concrete tolerance, None if it is None or traced."""
    if value is None or not _is_concrete(value):
        return None
    return float(np.max(np.asarray(value)))


def _forward_mode_stages(solver, adjoint):
    """Runge–Kutta solvers nested in `solver` (e.g. `AutoStiff`'s explicit one) with their
    stages in a plain `lax` loop under `ForwardMode`, as diffrax does for a top-level solver:
    their default checkpointed stage loop is a `custom_vjp`, which forward mode cannot enter."""
    if not isinstance(adjoint, diffrax.ForwardMode):
        return solver

    def is_rk(x):
        return isinstance(x, diffrax.AbstractRungeKutta)

    def lax_stages(x):
        if not is_rk(x) or x.scan_kind is not None:
            return x
        return eqx.tree_at(lambda s: s.scan_kind, x, "lax", is_leaf=lambda v: v is None)

    return jax.tree_util.tree_map(lax_stages, solver, is_leaf=is_rk)


def prepare(objective: Callable, params0: PyTree, t1, options: FlowOptions):
    """Everything `solve_flow` needs from the user's arguments, validated before compiling:
    (field, θ₀'s trainable state, traced numbers, origin term or None, static config).
    Concrete `params0` must be finite (ValueError); settings the dtype cannot resolve warn
    (`NumericalWarning`, see `_numerical_warnings`)."""
    t1 = check_t1(float(options.t0), t1)
    _check_finite_params(params0)
    state0, static = split_trainable(params0, options.trainable)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(state0))
    field = GradientField(objective, static)
    with jax.ensure_compile_time_eval():  # concrete numbers even inside a user's `jit`
        _numerical_warnings(field, state0, options, dtype)
    times = dict(
        t0=jnp.asarray(options.t0, dtype),
        t1=jnp.asarray(t1, dtype),
        ts=jnp.asarray(options.save_times(t1), dtype),
        rtol=jnp.asarray(options.rtol, dtype),
        atol=None if options.atol is None else jnp.asarray(options.atol, dtype),
        dt0=None if options.dt0 is None else jnp.asarray(options.dt0, dtype),
        origin_defect=None
        if options.origin_defect is None
        else jnp.asarray(options.origin_defect, dtype),
        clock_restart=jnp.asarray(options.clock_restart, dtype),
    )
    origin = (
        None
        if options.origin_defect is None
        else origin_term(field.objective, field.static, state0)
    )
    config = {name: getattr(options, name) for name in _STATIC_OPTIONS}
    config["solver"] = _forward_mode_stages(config["solver"], options.adjoint)
    config["progress"] = options.progress
    config["keep_solver_state"] = options.keep_solver_state
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
        `atol`, `t0`, `saveat`, `n_save`, `observe`, `event`, `stop_at_event`,
        `require_event`, `trainable`, `dt0`, `max_steps`, `record_steps`, `origin_defect`,
        `clock_restart`, `progress`.

    **Returns:** a `FlowSolution`. An event that did not fire before `t1` leaves
    `sol.event_time = +inf` on a successful solve (unless `require_event=True`).
    `sol.stats["nonfinite_time"]` is the first time a NaN/Inf was seen (a save time, or the
    time the solver could not step past) under `nonfinite_trajectory`, +inf otherwise.

    **Failures** (`sol.result`, raised with `throw=True`): `max_steps_reached`;
    `finite_time_blowup` (L → −∞ at a finite time: the steps collapse while L falls without
    bound); `step_size_underflow` (the step fell to ~10 float spacings of t with bounded L:
    stiffness, a singular ∇L, or times too late to resolve); `nonfinite_trajectory`;
    `stiff_solver_failed` (an implicit solver's inner solve failed until the step collapsed);
    `event_not_located` (the event fired but its time could not be root-found);
    `event_not_fired` (with `require_event=True`); `invalid_tolerance` (a traced `rtol`/`atol`
    not positive and finite; concrete ones raise a ValueError in `FlowOptions`); the origin
    handoff's codes.

    **Raises:** `ValueError` before compiling for invalid options and for a concrete `params0`
    with NaN/Inf entries (naming the leaf). **Warns:** `NumericalWarning` where the solve
    would run but cannot resolve the flow (float32 at too small an initial scale, an `atol`
    comparable to RMS(θ₀), an `rtol` at roundoff; see `_numerical_warnings`), and after the
    solve where directions still at the initial scale kept under two digits against rounding
    or against `rtol` once the state grew (later escapes then do not follow θ₀'s scale).

    **Example:**

    ```python
    problem = saddlejax.matrix_completion_problem(jr.key(0))
    net = saddlejax.init.scale(saddlejax.nn.DeepLinear((10, 100, 100, 100, 10), key=jr.key(1)), 0.1)
    sol = saddlejax.gradient_flow(problem, net, 500.0)
    ```
    """
    options = FlowOptions.of(options)
    with cacheable_errors():
        sol = solve_flow(*prepare(objective, params0, t1, options))
    _precision_warning(
        split_trainable(params0, options.trainable)[0], sol, options.trainable,
        _largest(options.rtol),
    )
    return check(sol, throw=throw, what="gradient flow")


def continue_flow(
    objective: Callable, sol: FlowSolution, t1: float, *, throw: bool = True, **options
) -> FlowSolution:
    """Continue a gradient flow that `sol` ended at its `t1`, to a later `t1`, from the solver
    and controller state it stopped with: the step size, an explicit solver's last stage, the
    implicit solver's tracked eigenvectors of ∇²L (no warm-up). With the same options the
    steps are those one solve to the later `t1` takes, so a very long trajectory can be
    computed (and saved: `FlowSolution` is a pytree, `eqx.tree_serialise_leaves` writes it)
    piece by piece.

    **Arguments:**

    - `objective`: L, as for `gradient_flow`.
    - `sol`: a `FlowSolution` from `gradient_flow(..., keep_solver_state=True)` that reached
        its `t1` (not stopped at an event, not failed).
    - `t1`: the new final time, later than `sol.stop_time`.
    - `**options`: as for `gradient_flow`; they must be those `sol` was computed with
        (solver, tolerances, `trainable`, ...); `t0` is `sol.stop_time`, `origin_defect` None.

    **Returns:** the `FlowSolution` of the continuation (save times from `sol.stop_time`).
    """
    resume = sol.resume
    if resume is None:
        raise ValueError(
            "`sol` has no solver state: compute it with `gradient_flow(..., "
            "keep_solver_state=True)`."
        )
    if np.ndim(sol.stop_time) != 0:
        raise ValueError("`sol` must be one trajectory (index a sweep's solution first).")
    stopped, end = float(sol.stop_time), float(resume["t1"])
    if not (bool(sol.result == RESULTS.successful) and stopped == end):
        raise ValueError(
            f"`sol` stopped at t = {stopped:g} before its t1 = {end:g} (an event or a failure): "
            "continue it with `gradient_flow(objective, sol.final_params, t1, t0=...)` instead."
        )
    for name in ("t0", "origin_defect"):
        if options.get(name) is not None:
            raise ValueError(f"`{name}` is set by the continuation; do not pass it.")
    options = FlowOptions.of(dict(options, t0=stopped, keep_solver_state=True))
    field, state0, times, origin, config = prepare(objective, sol.final_params, t1, options)
    times["resume"] = dict(
        solver_state=resume["solver_state"], controller_state=resume["controller_state"]
    )
    with cacheable_errors():
        out = solve_flow(field, state0, times, origin, config)
    return check(out, throw=throw, what="gradient flow")
