"""The options of a gradient-flow solve: one set, shared by `gradient_flow` and `sweep`."""

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import numpy as np
from jaxtyping import ArrayLike

from .._validate import check_int, check_real, describe, did_you_mean
from ..solvers import SOLVER_NAMES, AutoStiff
from ._events import check_event

# Caps of the static counts: above them a solve cannot run (memory, int32 step counters).
MAX_SAVE = 10**7
MAX_STEPS = 2**31 - 1


def _positive_or_traced(name: str, value, *, allow_none: bool = False) -> None:
    """A ValueError unless `value` is a positive finite scalar (one number for all parameters:
    an array would be broadcast against the state inside the solve). A traced value (under a
    user's `jit`/`vmap`) is checked inside the solve (`invalid_tolerance`)."""
    if value is None:
        if allow_none:
            return
        raise ValueError(f"`{name}` must be given, got None.")
    if isinstance(value, jax.core.Tracer):
        return
    is_array = isinstance(value, np.ndarray | jax.Array)
    if isinstance(value, bool) or not (isinstance(value, int | float | np.floating) or is_array):
        raise ValueError(f"`{name}` must be a positive number, got {describe(value)}.")
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"`{name}` must be a positive number, got {describe(value)}.")
    if array.ndim != 0:
        raise ValueError(
            f"`{name}` must be a positive scalar, got an array of shape {array.shape}: pass "
            "one number (it applies to every parameter)."
        )
    array = array.astype(float)
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError(f"`{name}` must be positive and finite, got {value}.")


def _static_count(name: str, value, minimum: int, maximum: int, why: str) -> None:
    """A ValueError unless `value` is a Python int in [`minimum`, `maximum`] (a static argument
    of the compiled solve: a NumPy or JAX integer would be hashed or traced)."""
    check_int(name, value, minimum=minimum)
    if not isinstance(value, int):
        raise ValueError(f"`{name}` must be a Python int, got {describe(value)}: pass int(...).")
    if value > maximum:
        raise ValueError(f"`{name}` must be at most {maximum} ({why}), got {value}.")


class FlowOptions(eqx.Module):
    """How to integrate dθ/dt = −∇L(θ): solver, tolerances, what to save, events, frozen
    parameters. `gradient_flow(objective, params0, t1, **options)` and
    `sweep(objective, draw, t1, ..., **options)` take exactly these keywords.

    **Fields:**

    - `solver`: a diffrax solver instance. Default `AutoStiff()`: Tsit5 where the flow is not
        stiff, RODAS4 with deflated conjugate gradients on Hessian-vector products on stiff
        plateaus — the choice that works from α = 0.1 down to small α. `diffrax.Tsit5()` is
        cheaper where the flow never gets stiff; `RosenbrockKrylov()` stays implicit;
        `diffrax.Kvaerno5(root_finder=saddlejax.solvers.newton_krylov())` is diffrax's
        implicit method made matrix-free. saddlejax's solvers report `hvp_evals`,
        `grad_evals` and their own counters in `sol.stats`.
    - `rtol`: relative tolerance of the PID step-size controller.
    - `atol`: absolute tolerance. Default `None`: rtol·RMS(θ₀), so the initial scale sets the
        absolute accuracy and α = 1e−6 is resolved as well as α = 1e−1.
    - `t0`: initial time.
    - `saveat`: save times (an array, or `diffrax.SaveAt(ts=...)`). Default: `n_save` times,
        half geometric in t − t0 over six decades and half uniform, so that plateaus of length
        α^{−(L−2)} and the drops between them are both visible.
    - `n_save`: the number of default save times.
    - `observe`: a function of the full model saved at the save times in place of the
        parameters, e.g. `lambda m: m.matrix()` (keeps memory small for large nets).
    - `event`: `EscapeRadius(r)`, `LossBelow(level)`, a tuple of them (the first to fire
        counts) or a `diffrax.Event`, root-found on the dense output.
    - `stop_at_event`: stop there (default), or record the time and continue to `t1`.
        A flow that reaches `t1` without its event is a successful solve with
        `sol.event_time = +inf` (the event did not happen before `t1`).
    - `require_event`: make that case a failure instead, `RESULTS.event_not_fired` (for
        sweeps where every trajectory must reach its event, e.g. escape times).
    - `trainable`: a filter (callable on leaves, or a pytree of bools from `saddlejax.freeze`)
        selecting the parameters that move; the rest stay frozen.
    - `dt0`: initial step (default: chosen by the controller).
    - `max_steps`: cap on solver steps; reaching it is a failure, never a success.
    - `record_steps`: also save t, L, ‖∇L‖, ‖θ‖ at every solver step (a buffer of
        `max_steps`).
    - `origin_defect`: skip the neighbourhood of the origin by Lemma 13 (`origin_handoff`): the
        flow of the leading Taylor term H at 0 is integrated at unit scale and rescaled, and L
        takes over where ‖∇L − ∇H‖/‖∇H‖ reaches this value (e.g. 1e−4; the state error at the
        handoff is ≈ 0.5× it). Save times before the handoff come from the rescaled H-flow;
        `sol.stats` gains `origin_time` (t_s), `origin_defect`, `origin_h_steps` and
        `event_time_after_origin`. The cost does not grow with 1/α (down to α ≈ 1e−60 at
        depth 4, where t_s ≈ 10¹²⁰), and L is integrated on a clock started at t_s, so the drop
        after the handoff is resolved however large t_s is: `event_time` = t_s +
        `event_time_after_origin`, the latter exact where the sum rounds. Only for flows
        started near a critical origin (deep nets from small initialisation).
    - `clock_restart`: after an origin handoff, the clock restarts at 0 (the elapsed time
        carried as an offset; `sol.stats["clock_restarts"]` counts them) once θ moves by its
        own size in less than t/`clock_restart` (‖θ‖/‖∇L‖): a later k > 2 escape at
        t ≈ α^{−(k−2)} then stays resolved. The default 1e7 keeps ≥ 10⁸ float spacings of t
        per such time (the default problem restarts once, before its second drop, at
        α = 1e−5).
    - `adjoint`: how `jax.grad`/`jax.jvp` differentiate the solve (diffrax's adjoints).
        Default `diffrax.RecursiveCheckpointAdjoint()`: reverse mode through the steps with
        O(log(max_steps)) checkpoints — the choice for a gradient with respect to many inputs
        (a target matrix, all of θ̃). `diffrax.ForwardMode()`: forward mode, no stored steps —
        cheaper for `jax.jvp`/`jax.jacfwd` with respect to a few inputs (α, γ).
        `diffrax.DirectAdjoint()` supports both, at more memory. Reverse mode recomputes
        more the larger `max_steps` is (its checkpoints are spread over `max_steps`): set
        `max_steps` near the steps the solve takes (`sol.stats["num_steps"]`), or pass
        `RecursiveCheckpointAdjoint(checkpoints=n)`, for a cheaper gradient.
        `BacksolveAdjoint` is refused: it cannot differentiate computed save values or events,
        which every flow here has.
        Implicit steps differentiate their linear solves implicitly (one more CG solve per
        stage and tangent); the auto solver's switch is not differentiated, its steps are.
        Event times are differentiated by the implicit function theorem at the event.
    - `keep_solver_state`: also return the solver's and step-size controller's state where the
        solve stopped (`sol.resume`), so that `continue_flow` can take the trajectory further
        with the same steps (off by default: under `sweep` it is per trajectory, and an
        implicit solver's state holds its tracked eigenvectors of ∇²L).
    - `progress`: show progress (a per-step meter for one flow, a line per finished chunk in a
        sweep).
    """

    solver: diffrax.AbstractSolver = AutoStiff()
    rtol: float | ArrayLike = 1e-6
    atol: float | ArrayLike | None = None
    t0: float = 0.0
    saveat: diffrax.SaveAt | ArrayLike | None = None
    n_save: int = 256
    observe: Callable | None = None
    event: Any = None
    stop_at_event: bool = True
    require_event: bool = False
    trainable: Any = eqx.is_inexact_array
    dt0: float | None = None
    max_steps: int = 1_000_000
    record_steps: bool = False
    origin_defect: float | None = None
    clock_restart: float = 1e7
    progress: bool = False
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()
    keep_solver_state: bool = False

    @classmethod
    def of(cls, options: dict) -> "FlowOptions":
        """`FlowOptions(**options)`, with a misspelt keyword named and its closest field."""
        fields = [f.name for f in dataclasses.fields(cls)]
        names = [f for f in fields if f != "keep_solver_state"]  # internal: `continue_flow`'s
        for name in options:
            if name not in fields:
                raise ValueError(
                    f"`{name}` is not an option of the flow; {did_you_mean(name, names)}the "
                    f"options are {', '.join(names)}."
                )
        return cls(**options)

    def __check_init__(self):
        if isinstance(self.solver, str):
            name = self.solver.lower()
            named = (
                f"`saddlejax.solvers.solver_from_name({self.solver!r})`"
                if name in SOLVER_NAMES
                else "`saddlejax.solvers.solver_from_name(name)`; "
                f"{did_you_mean(name, SOLVER_NAMES)}the names are {', '.join(SOLVER_NAMES)}"
            )
            raise ValueError(
                f"`solver` takes a solver object, got the string {self.solver!r}: use e.g. "
                f"`saddlejax.AutoStiff()`, `diffrax.Tsit5()`, or {named}."
            )
        if not isinstance(self.solver, diffrax.AbstractSolver):
            raise ValueError(
                "`solver` must be a `diffrax.AbstractSolver` instance such as "
                f"`saddlejax.AutoStiff()` or `diffrax.Tsit5()`, got {type(self.solver).__name__}."
            )
        if not isinstance(self.adjoint, diffrax.AbstractAdjoint):
            raise ValueError(
                "`adjoint` must be a diffrax adjoint such as "
                "`diffrax.RecursiveCheckpointAdjoint()` or `diffrax.ForwardMode()`, got "
                f"{type(self.adjoint).__name__}."
            )
        if isinstance(self.adjoint, diffrax.BacksolveAdjoint):
            raise ValueError(
                "`adjoint=diffrax.BacksolveAdjoint()` cannot differentiate the computed save "
                "values and events of a flow; use `diffrax.RecursiveCheckpointAdjoint()` "
                "(reverse mode, the default) or `diffrax.ForwardMode()`."
            )
        _positive_or_traced("rtol", self.rtol)
        _positive_or_traced("atol", self.atol, allow_none=True)
        _positive_or_traced("dt0", self.dt0, allow_none=True)
        _positive_or_traced("origin_defect", self.origin_defect, allow_none=True)
        _positive_or_traced("clock_restart", self.clock_restart)
        check_real("t0", self.t0)
        _static_count(
            "max_steps", self.max_steps, 1, MAX_STEPS, "the largest int32, JAX's default int"
        )
        _static_count(
            "n_save",
            self.n_save,
            4,
            MAX_SAVE,
            "each save holds a copy of the saved state: save fewer times",
        )
        check_event(self.event)
        if not isinstance(self.require_event, bool):
            raise ValueError(f"`require_event` must be a bool, got {self.require_event!r}.")
        if self.require_event and self.event is None:
            raise ValueError("`require_event=True` needs an `event`.")

    def save_times(self, t1: float) -> np.ndarray:
        """The save times on [t0, t1] (concrete t1), checked."""
        t0 = float(self.t0)
        if self.saveat is None:
            return default_save_times(t0, t1, self.n_save)
        saveat = self.saveat
        if isinstance(saveat, diffrax.SaveAt):
            subs = saveat.subs
            if not isinstance(subs, diffrax.SubSaveAt) or subs.ts is None:
                raise ValueError(
                    "a `diffrax.SaveAt` passed as `saveat` must be `SaveAt(ts=...)`; for custom "
                    "saved quantities use `observe=`, for per-step scalars `record_steps=True`."
                )
            saveat = subs.ts
        try:
            ts = np.asarray(saveat)
            if not (np.issubdtype(ts.dtype, np.integer) or np.issubdtype(ts.dtype, np.floating)):
                raise TypeError
            ts = ts.astype(float)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"`saveat` must be a 1-D array of real times, got {describe(saveat)}."
            ) from None
        if ts.ndim != 1 or ts.size == 0:
            raise ValueError(f"`saveat` must be a 1-D array of times, got shape {ts.shape}.")
        if not np.all(np.isfinite(ts)):
            raise ValueError(f"`saveat` times must be finite, got {describe(saveat)}.")
        # Times within a few float spacings of the ends (np.geomspace(a, t1) can end at
        # t1·(1 + ε)) are the ends.
        slack = 8 * np.spacing(np.maximum(abs(t0), abs(t1)))
        if ts.ndim == 1 and ts.size and t0 - slack <= ts[0] and ts[-1] <= t1 + slack:
            ts = np.clip(ts, t0, t1)
        if np.any(np.diff(ts) < 0) or ts[0] < t0 or ts[-1] > t1:
            raise ValueError(
                f"`saveat` times must be non-decreasing and lie in [t0, t1] = [{t0}, {t1}]."
            )
        return ts


def default_save_times(t0: float, t1: float, n_save: int) -> np.ndarray:
    """Save times resolving both plateaus and drops: half geometric in t − t0 over six decades
    (early dynamics, escape times of order log(1/α) or α^{−(L−2)}), half uniform on [t0, t1]
    (late drops), merged and sorted, always including t0 and t1."""
    if n_save < 4:
        raise ValueError(f"`n_save` must be at least 4, got {n_save}.")
    span = t1 - t0
    geo = t0 + np.geomspace(span * 1e-6, span, n_save // 2)
    uni = np.linspace(t0, t1, n_save - n_save // 2)
    # t0 + (t1 − t0) can round past t1 (t0 = −7.9, t1 = 1): the grid's end is t1.
    return np.clip(np.sort(np.concatenate([geo, uni])), t0, t1)


def check_t1(t0: float, t1) -> float:
    """`t1` as a float greater than `t0` by a finite span whose save grid does not underflow,
    or a ValueError."""
    try:
        t1 = float(t1)
    except (TypeError, ValueError):
        raise ValueError(f"`t1` must be a number, got {t1!r}.") from None
    if not np.isfinite(t1) or not t1 > t0:
        raise ValueError(f"`t1` must be finite and greater than `t0` = {t0}, got {t1}.")
    span = t1 - t0
    if not np.isfinite(span):
        raise ValueError(
            f"`t1` − `t0` = {t1:g} − {t0:g} overflows: choose `t0` and `t1` less than "
            f"{np.finfo(float).max:.3g} apart."
        )
    if span * 1e-6 == 0:
        raise ValueError(
            f"`t1` − `t0` = {span:g} is too small: the default save grid, which starts at "
            "10⁻⁶·(t1 − t0), underflows to 0; choose a `t1` with t1 − t0 ≥ 1e-317."
        )
    return t1
