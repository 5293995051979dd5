"""Gradient flow dθ/dt = −∇L(θ) integrated with diffrax (SPEC §1)."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, PyTree

from ._auto import AutoStiff
from ._events import to_diffrax_event
from ._origin import origin_handoff, rescaled_h_path
from ._solution import RESULTS, FlowSolution
from ._solvers import KrylovSettings, check_solver, make_solver
from ._stiff import RosenbrockKrylov
from ._trainable import split_trainable
from ._tree import tree_all_finite, tree_norm, tree_rms


def default_save_times(t0: float, t1: float, n_save: int) -> np.ndarray:
    """Save times resolving both plateaus and drops: half geometric in t − t0 over six decades
    (early dynamics, escape times of order log(1/α) or α^{−(L−2)}), half uniform on [t0, t1]
    (late drops), merged and sorted, always including t0 and t1."""
    if n_save < 4:
        raise ValueError(f"`n_save` must be at least 4, got {n_save}.")
    span = t1 - t0
    geo = t0 + np.geomspace(span * 1e-6, span, n_save // 2)
    uni = np.linspace(t0, t1, n_save - n_save // 2)
    return np.sort(np.concatenate([geo, uni]))


def check_tolerance(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, int | float | np.floating) and not value > 0:
        raise ValueError(f"`{name}` must be positive, got {value}.")


class _Problem(eqx.Module):
    """The flow's vector field and observables on the trainable state (the objective and the
    frozen part are pytree leaves, so new data do not retrace)."""

    objective: Callable
    static: PyTree

    def loss(self, state):
        return self.objective(eqx.combine(state, self.static))

    def neg_grad(self, t, state, args):
        return jax.tree_util.tree_map(jnp.negative, jax.grad(self.loss)(state))

    def scalars(self, state):
        loss, grad = jax.value_and_grad(self.loss)(state)
        return loss, tree_norm(grad), tree_norm(state)


def _save_fn(problem, observe):
    def fn(t, state, args):
        loss, gnorm, norm = problem.scalars(state)
        saved = state if observe is None else observe(eqx.combine(state, problem.static))
        return saved, loss, gnorm, norm

    return fn


def _steps_fn(problem):
    def fn(t, state, args):
        return (t,) + problem.scalars(state)

    return fn


def _to_results(diffrax_result) -> RESULTS:
    ok = (diffrax_result == diffrax.RESULTS.successful) | (
        diffrax_result == diffrax.RESULTS.event_occurred
    )
    max_steps = diffrax_result == diffrax.RESULTS.max_steps_reached
    return RESULTS.where(
        ok,
        RESULTS.successful,
        RESULTS.where(max_steps, RESULTS.max_steps_reached, RESULTS.solver_failed),
    )


_COUNT_NAMES = {
    "hvp": "hvp_evals_accepted",
    "max_cg": "max_cg_iterations",
    "n_implicit": "implicit_steps_accepted",
    "n_explicit": "explicit_steps_accepted",
}


def _solver_counts(solver_state) -> dict:
    """Work counters kept in a Rosenbrock–Krylov or auto solver's state (accepted steps)."""
    return {name: solver_state[k] for k, name in _COUNT_NAMES.items() if k in solver_state}


def _merge_after(after, first, second):
    """Entries of `second` at save indices after the event, of `first` before (any pytree)."""

    def pick(a, b):
        mask = after.reshape(after.shape + (1,) * (a.ndim - 1))
        return jnp.where(mask, b, a)

    return jax.tree_util.tree_map(pick, first, second)


@eqx.filter_jit
def _solve(
    problem: _Problem,
    state0,
    t0,
    t1,
    ts,
    rtol,
    atol,
    dt0,
    *,
    solver,
    krylov,
    event,
    stop_at_event,
    observe,
    record_steps,
    max_steps,
    progress,
):
    atol = jnp.where(jnp.isnan(atol), rtol * tree_rms(state0), atol)
    diffrax_solver, evals_per_step = make_solver(solver, rtol, atol, krylov)
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    term = diffrax.ODETerm(problem.neg_grad)
    meter = diffrax.TextProgressMeter() if progress else diffrax.NoProgressMeter()
    diffrax_event = to_diffrax_event(event, problem.loss)
    # Rosenbrock–Krylov solvers count Hessian-vector products in their solver state.
    counts_hvp = isinstance(diffrax_solver, RosenbrockKrylov | AutoStiff)

    def run(t_start, y_start, save_ts, with_event):
        subs = [diffrax.SubSaveAt(ts=save_ts, fn=_save_fn(problem, observe))]
        if record_steps:
            subs.append(diffrax.SubSaveAt(steps=True, fn=_steps_fn(problem)))
        subs.append(diffrax.SubSaveAt(t1=True))  # the state where the solve stopped
        return diffrax.diffeqsolve(
            term,
            diffrax_solver,
            t_start,
            t1,
            dt0,
            y_start,
            saveat=diffrax.SaveAt(subs=subs, solver_state=counts_hvp),
            stepsize_controller=controller,
            event=diffrax_event if with_event else None,
            max_steps=max_steps,
            throw=False,
            progress_meter=meter,
        )

    sol = run(t0, state0, ts, True)
    saved, loss, gnorm, norm = sol.ys[0]
    steps = sol.ys[1] if record_steps else None
    stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
    if counts_hvp:
        stats.update(_solver_counts(sol.solver_state))
    result = _to_results(sol.result)
    t_stop = sol.ts[-1][0]  # where the solve stopped: t1, the event, or a failure
    if diffrax_event is None:
        event_time, event_mask = jnp.array(jnp.inf, dtype=jnp.result_type(ts)), None
    else:
        fired = sol.result == diffrax.RESULTS.event_occurred
        event_time = jnp.where(fired, sol.ts[-1][0], jnp.inf)
        event_mask = sol.event_mask
        if not stop_at_event:
            # Continue from the event state to t1 and merge the save grids; shapes stay static.
            t_event = sol.ts[-1][0]
            y_event = jax.tree_util.tree_map(lambda x: x[0], sol.ys[-1])
            sol2 = run(t_event, y_event, jnp.maximum(ts, t_event), False)
            # Only continue after an event (or t1), never past a failure of the first solve.
            first_ok = result == RESULTS.successful
            saved, loss, gnorm, norm = _merge_after(
                (ts > t_event) & first_ok, (saved, loss, gnorm, norm), sol2.ys[0]
            )
            t_stop = jnp.where(first_ok, sol2.ts[-1][0], t_stop)
            stats2 = dict(sol2.stats)
            if counts_hvp:
                stats2.update(_solver_counts(sol2.solver_state))
            stats = {
                k: (jnp.maximum if k == "max_cg_iterations" else jnp.add)(stats[k], stats2[k])
                for k in stats
            }
            if record_steps:
                steps = jax.tree_util.tree_map(
                    lambda a, b: jnp.concatenate([a, b]), steps, sol2.ys[1]
                )
            result = RESULTS.where(result == RESULTS.successful, _to_results(sol2.result), result)
    # Save times after the solve stopped (event or failure) are filled with inf by diffrax:
    # not a non-finite value (a max_steps failure must stay a max_steps failure).
    reached = ts <= t_stop
    finite = jnp.all(jnp.where(reached, jnp.isfinite(loss), True)) & tree_all_finite(
        _merge_after(~reached, saved, jax.tree_util.tree_map(jnp.zeros_like, saved))
    )
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    if "explicit_steps_accepted" in stats:
        # solver="auto": 6 gradients per Tsit5 step, the Rosenbrock count per implicit step;
        # rejected steps are apportioned like the accepted ones.
        # (+1: the auto solver evaluates f(θₙ₊₁) after an implicit step for the next one.)
        per_implicit = RosenbrockKrylov.grad_evals_per_step(diffrax_solver.tableau) + 1
        accepted_evals = (
            6.0 * stats["explicit_steps_accepted"] + per_implicit * stats["implicit_steps_accepted"]
        )
        ratio = stats["num_steps"] / jnp.maximum(stats["num_accepted_steps"], 1)
        stats["grad_evals"] = jnp.round(accepted_evals * ratio).astype(stats["num_steps"].dtype)
    elif evals_per_step > 0:
        stats["grad_evals"] = stats["num_steps"] * evals_per_step
    else:
        stats["grad_evals"] = -jnp.ones_like(stats["num_steps"])
    if counts_hvp:
        # Rejected steps' products are not kept by diffrax: estimate them at the accepted mean.
        accepted = jnp.maximum(stats["num_accepted_steps"], 1)
        ratio = stats["num_steps"] / accepted
        stats["hvp_evals"] = jnp.round(stats["hvp_evals_accepted"] * ratio).astype(
            stats["num_steps"].dtype
        )
    stats["rtol"] = rtol
    stats["atol"] = atol
    if record_steps:
        steps = dict(zip(("t", "loss", "grad_norm", "norm"), steps))
    return FlowSolution(
        ts=ts,
        params=saved,
        loss=loss,
        grad_norm=gnorm,
        norm=norm,
        event_time=event_time,
        event_mask=event_mask,
        steps=steps,
        stats=stats,
        result=result,
        static=problem.static if observe is None else None,
    )


def _as_save_times(saveat, t0, t1, n_save):
    if saveat is None:
        return default_save_times(t0, t1, n_save)
    if isinstance(saveat, diffrax.SaveAt):
        subs = saveat.subs
        if not isinstance(subs, diffrax.SubSaveAt) or subs.ts is None:
            raise ValueError(
                "a `diffrax.SaveAt` passed as `saveat` must be `SaveAt(ts=...)`; for custom "
                "saved quantities use `observe=`, for per-step scalars `record_steps=True`."
            )
        saveat = subs.ts
    ts = np.asarray(saveat, dtype=float)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"`saveat` must be a 1-D array of times, got shape {ts.shape}.")
    if np.any(np.diff(ts) < 0) or ts[0] < t0 or ts[-1] > t1:
        raise ValueError(
            f"`saveat` times must be non-decreasing and lie in [t0, t1] = [{t0}, {t1}]."
        )
    return ts


def validate_flow_args(t0, t1, rtol, atol, solver, max_steps):
    if not np.isfinite(t1) or not t1 > t0:
        raise ValueError(f"`t1` must be finite and greater than `t0` = {t0}, got {t1}.")
    check_tolerance("rtol", rtol)
    check_tolerance("atol", atol)
    check_solver(solver)
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps <= 0):
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")


def gradient_flow(
    objective: Callable,
    params0: PyTree,
    t1: float,
    *,
    t0: float = 0.0,
    solver: str | diffrax.AbstractSolver = "tsit5",
    rtol: float | ArrayLike = 1e-6,
    atol: float | ArrayLike | None = None,
    saveat: diffrax.SaveAt | ArrayLike | None = None,
    n_save: int = 256,
    observe: Callable | None = None,
    event=None,
    stop_at_event: bool = True,
    trainable=eqx.is_inexact_array,
    dt0: float | None = None,
    max_steps: int = 1_000_000,
    record_steps: bool = False,
    krylov: KrylovSettings | None = None,
    origin_defect: float | None = None,
    progress: bool = False,
    throw: bool = True,
) -> FlowSolution:
    """Integrate the gradient flow dθ/dt = −∇L(θ), θ(t0) = θ₀, with diffrax (SPEC §1).

    Jacot et al. §2, Kumar & Haupt §2, Chen–Luo–Wang §2: gradient descent with step η is the
    explicit-Euler discretisation of this ODE, with iteration k at time t = kη.

    **Arguments:**

    - `objective`: L, any callable mapping the parameters (a model or any pytree of float arrays)
        to a scalar, e.g. `MatrixCompletion`, `SquareLoss` or a user function.
    - `params0`: θ₀, e.g. `saddlejax.init.scale(DeepLinear(...), alpha)`.
    - `t1`: final time.
    - `t0`: initial time.
    - `solver`: "tsit5" (default; explicit, cheap while ∇²L is small, i.e. near the origin of a
        deep net), "auto" (Tsit5 where the flow is not stiff, RODAS4 with deflated conjugate
        gradients on Hessian-vector products on stiff plateaus; the fastest choice for small α),
        "rodas3" / "rodas4" (Rosenbrock–Krylov throughout), "kvaerno5" / "stiff" (implicit,
        Newton–GMRES), other names in `SOLVER_NAMES`, or a diffrax solver. The Rosenbrock and
        auto solvers add `hvp_evals` (Hessian-vector products; rejected steps estimated at the
        accepted mean), `hvp_evals_accepted`, `max_cg_iterations` and, for "auto",
        `explicit_steps_accepted` / `implicit_steps_accepted` to `sol.stats`.
    - `rtol`: relative tolerance of the PID step-size controller.
    - `atol`: absolute tolerance. Default `None` means rtol·RMS(θ₀): the initial scale sets the
        absolute accuracy, so α = 1e−6 is resolved as well as α = 1e−1 (a fixed 1e−6 would not).
    - `saveat`: save times (an array, or `diffrax.SaveAt(ts=...)`). Default: `n_save` times, half
        geometric in t − t0 over six decades and half uniform, so that plateaus of length
        α^{−(L−2)} and the drops between them are both visible.
    - `observe`: a function of the full model saved at `saveat` in place of the parameters, e.g.
        `lambda m: m.matrix()` (keeps memory small for large nets).
    - `event`: `EscapeRadius(r)`, `LossBelow(level)`, a tuple of them (the first to fire counts)
        or a `diffrax.Event`. Its time is root-found on the dense output.
    - `stop_at_event`: stop there (default), or record the time and continue to `t1`.
        Small gradient norms are not events: the origin is itself a critical point.
    - `trainable`: a filter (callable on leaves, or a pytree of bools from `saddlejax.freeze`)
        selecting the parameters that move; the rest stay frozen.
    - `dt0`: initial step (default: chosen by the controller).
    - `max_steps`: cap on solver steps; reaching it is a `RESULTS.max_steps_reached` failure.
    - `record_steps`: also save t, L, ‖∇L‖, ‖θ‖ at every solver step (buffer of `max_steps`).
    - `krylov`: `KrylovSettings` of implicit solvers.
    - `origin_defect`: skip the neighbourhood of the origin by Lemma 13 (`origin_handoff`): the
        flow of the leading Taylor term H at 0 is integrated at unit scale and rescaled, and L
        takes over where ‖∇L − ∇H‖/‖∇H‖ reaches this value (e.g. 1e−4; measured state error at
        the handoff ≈ 0.5× it). Save times before the handoff are filled from the rescaled
        H-flow. `sol.stats` gains `origin_time`, `origin_defect`, `origin_h_steps`. Only for
        flows started near a critical origin (deep nets from small initialisation).
    - `progress`: print progress.
    - `throw`: raise on failure (default). With `throw=False` the failure is in `sol.result`,
        also per trajectory under `jax.vmap`.

    **Returns:** a `FlowSolution`.

    **Example:**

    ```python
    problem = saddlejax.matrix_completion_problem(jr.key(0))
    net = saddlejax.init.scale(saddlejax.nn.DeepLinear((10, 100, 100, 100, 10), key=jr.key(1)), 0.1)
    sol = saddlejax.gradient_flow(problem, net, 500.0)
    ```
    """
    t0, t1 = float(t0), float(t1) if isinstance(t1, int | float) else t1
    validate_flow_args(t0, float(t1), rtol, atol, solver, max_steps)
    state0, static = split_trainable(params0, trainable)
    ts = _as_save_times(saveat, t0, float(t1), n_save)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(state0))
    problem = _Problem(objective, static)
    if origin_defect is not None:
        options = dict(
            rtol=rtol,
            atol=atol,
            dt0=dt0,
            solver=solver,
            krylov=krylov,
            event=event,
            stop_at_event=stop_at_event,
            observe=observe,
            record_steps=record_steps,
            max_steps=max_steps,
            progress=progress,
        )
        return _flow_from_origin(
            problem, params0, state0, t0, t1, ts, dtype, origin_defect, trainable, throw, options
        )
    sol = _solve(
        problem,
        state0,
        jnp.asarray(t0, dtype),
        jnp.asarray(t1, dtype),
        jnp.asarray(ts, dtype),
        jnp.asarray(rtol, dtype),
        jnp.asarray(jnp.nan if atol is None else atol, dtype),
        None if dt0 is None else jnp.asarray(dt0, dtype),
        solver=solver,
        krylov=krylov,
        event=event,
        stop_at_event=stop_at_event,
        observe=observe,
        record_steps=record_steps,
        max_steps=max_steps,
        progress=progress,
    )
    if throw:
        sol = raise_if_failed(sol)
    return sol


def _flow_from_origin(problem, params0, state0, t0, t1, ts, dtype, defect, trainable, throw, kw):
    """`gradient_flow(..., origin_defect=...)`: the rescaled H-flow up to the handoff, then L."""
    handoff = origin_handoff(problem.objective, params0, defect_tol=defect, trainable=trainable)
    if handoff.result != RESULTS.successful:
        raise RuntimeError(_handoff_message(handoff))
    t_s = t0 + float(handoff.time)
    if not t_s < float(t1):
        raise ValueError(
            f"the origin handoff (defect {defect}) is at t = {t_s:.6g}, not before `t1` = {t1}: "
            "raise `t1` or lower `origin_defect`."
        )
    state_s = split_trainable(handoff.params, trainable)[0]
    ts = jnp.asarray(ts, dtype)
    rtol = jnp.asarray(kw.pop("rtol"), dtype)
    atol = kw.pop("atol")
    # The default atol scales with the initial state θ₀, as without the handoff.
    atol = rtol * tree_rms(state0) if atol is None else jnp.asarray(atol, dtype)
    dt0 = kw.pop("dt0")
    sol = _solve(
        problem,
        state_s,
        jnp.asarray(t_s, dtype),
        jnp.asarray(t1, dtype),
        jnp.maximum(ts, t_s),
        rtol,
        atol,
        None if dt0 is None else jnp.asarray(dt0, dtype),
        **kw,
    )
    # Save times before the handoff: the rescaled H-flow (Lemma 13).
    before = ts < t_s
    states = rescaled_h_path(handoff.term, handoff, state0, ts - t0)
    loss, gnorm, norm = jax.vmap(problem.scalars)(states)
    observe = kw["observe"]
    saved = (
        states
        if observe is None
        else jax.vmap(lambda s: observe(eqx.combine(s, problem.static)))(states)
    )
    params, loss, gnorm, norm = _merge_after(
        ~before, (saved, loss, gnorm, norm), (sol.params, sol.loss, sol.grad_norm, sol.norm)
    )
    stats = dict(
        sol.stats,
        origin_time=jnp.asarray(t_s, dtype),
        origin_defect=handoff.defect,
        origin_h_steps=handoff.h_steps,
    )
    sol = eqx.tree_at(
        lambda s: (s.ts, s.params, s.loss, s.grad_norm, s.norm, s.stats),
        sol,
        (ts, params, loss, gnorm, norm, stats),
    )
    return raise_if_failed(sol) if throw else sol


def _handoff_message(handoff) -> str:
    code = int(np.asarray(handoff.result._value))
    return "origin handoff failed: " + RESULTS._index_to_message[code]


def raise_if_failed(sol: FlowSolution) -> FlowSolution:
    """Raise a RuntimeError naming the cause if any trajectory in `sol` failed.

    **Returns:** `sol`. Under a user's jit/vmap the check is attached to the returned solution's
    arrays (`eqx.error_if`), so use the returned value: a check whose output is unused is
    removed by jit's dead-code elimination and would never fire.
    """
    if isinstance(sol.result._value, jax.core.Tracer):
        # Under a user's jit/vmap: a runtime error, raised if any trajectory failed.
        msg = "gradient flow failed (pass `throw=False` and read `sol.result` for the cause)"
        return eqx.error_if(sol, sol.result._value != RESULTS.successful._value, msg)
    codes = np.asarray(sol.result._value)
    if np.all(codes == RESULTS.successful._value):
        return sol
    bad = codes[codes != RESULTS.successful._value]
    messages = sorted({RESULTS._index_to_message[int(c)] for c in np.unique(bad)})
    raise RuntimeError(
        f"{bad.size} of {codes.size} trajectories failed: "
        + " | ".join(messages)
        + " (pass `throw=False` to inspect `sol.result` per trajectory)."
    )
