"""One result enumeration for every solve in saddlejax, and the `throw` check built on it.

`RESULTS` extends diffrax's (which extends optimistix's and lineax's), so a diffrax, optimistix
or lineax outcome is promoted without translation (`RESULTS.promote(sol.result)`) and every
saddlejax result object — flows, sweeps, escape directions, fixed points of Φ, the origin
handoff — speaks the same codes. The values are the messages a user reads; `RESULTS[result]`
gives them (an array of messages for batched results).
"""

import diffrax
import jax
import numpy as np


class RESULTS(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Outcome of a saddlejax solve (diffrax's codes plus the ones below)."""

    successful = ""
    nonfinite_trajectory = (
        "The parameters, the loss or ∇L became NaN or infinite. For the flow (first seen at "
        "`sol.stats['nonfinite_time']`), check the objective is finite at `params0` and along "
        "the path (e.g. a log or a square root leaving its domain); for gradient descent, lower "
        "`learning_rate` below 2/λ_max(∇²L)."
    )
    finite_time_blowup = (
        "The flow blows up in finite time: L fell towards −∞ (and ‖θ‖ with it) and the solver's "
        "steps shrank to the float resolution of t at `sol.stop_time` (the loss is unbounded "
        "below along the flow, e.g. a cubic or a −‖θ‖⁴ term). The solution does not exist past "
        "that time: end earlier (`t1`, an `EscapeRadius` or `LossBelow` event) or bound the "
        "objective."
    )
    step_size_underflow = (
        "The step size fell to the float resolution of t (≈ 10 ulp(t)) at `sol.stop_time` while "
        "the state stayed bounded: the flow is too stiff there for the solver (use `AutoStiff()` "
        "or an implicit solver), ∇L is discontinuous or singular there (a kink, a division by "
        "zero; a ReLU net's flow sliding along a kink: `DeepReLU(..., smoothing=1e-4)`), or t "
        "is so large that float steps cannot resolve the dynamics (shift `t0`)."
    )
    stiff_solver_failed = (
        "The implicit (Newton/Krylov) solve inside the ODE solver did not converge, and the "
        "steps it rejected shrank the step size to the float resolution of t at "
        "`sol.stop_time`. Loosen `rtol`/`atol`, allow the solver's inner linear/nonlinear solve "
        "more iterations, or use an explicit solver where the flow is not stiff."
    )
    event_not_located = (
        "An event fired but its time could not be located: the root find on the solver's dense "
        "output did not converge (`sol.event_time` is +inf). Check that the event function is "
        "continuous in t near the crossing, or use a boolean condition."
    )
    event_not_fired = (
        "The flow reached `t1` without its event firing (`require_event=True`; "
        "`sol.event_time` is +inf): raise `t1`, or check the event's radius or level."
    )
    invalid_tolerance = (
        "`rtol` and `atol` must be positive and finite, but a traced tolerance was zero, "
        "negative, NaN or infinite: nothing was integrated."
    )
    max_kink_events = (
        "The sliding flow reached `max_events` kink events before `t1` (`sliding_flow`): the "
        "flow crosses or slides along kinks more often than allowed (raise `max_events`), or "
        "it is stuck switching at one kink (a Filippov weight on the boundary of (0, 1))."
    )
    kink_events_dense = (
        "The sliding flow switched between kinks so often (`sliding_flow`) that at the rate of "
        "its last `DENSE_WINDOW` kink events it would need more than `DENSE_FACTOR` times the "
        "`max_events` it had left to reach `t1`: it crosses kinks that meet back and forth (at "
        "small α, typically the kinks of a unit still of size ~α on several samples, whose "
        "Filippov weights are ill-conditioned), stopped at `sol.stop_time`. Stop the flow "
        "earlier, or integrate the smoothed net (`DeepReLU(..., smoothing=)`) past that point."
    )
    max_active_kinks = (
        "The sliding flow was held on `max_active` kinks at once (`sliding_flow`): raise "
        "`max_active`."
    )
    origin_not_left = (
        "The flow of the leading Taylor term at the origin did not reach the handoff defect "
        "before `max_time` (`origin_handoff`): θ₀ may lie in the stable set of the origin. "
        "Integrate L directly (no `origin_defect`) or raise `max_time`."
    )
    clock_restarts_exhausted = (
        "The flow after the origin handoff restarted its clock the most times allowed "
        "(`MAX_CLOCKS`) before `t1`: the save times after `sol.stop_time` are not reached. "
        "Continue from `sol.final_params`, or lower `t1`."
    )
    origin_handoff_after_t1 = (
        "The origin handoff (`origin_defect`) lies after `t1`: raise `t1` or lower `origin_defect`."
    )
    escape_not_converged = (
        "No restart reached the KKT tolerance `kkt_rtol`: increase `max_steps` or `n_polish`, "
        "or loosen `kkt_rtol` (a non-smooth H, e.g. a ReLU net whose optimum has a kink, may "
        "not allow a tight residual)."
    )
    no_escape_direction = (
        "H has no escape direction: min H ≥ 0 on the unit sphere, so s* = −k·min H ≤ 0 (the "
        "critical point is a local minimum of its leading Taylor term, or H vanishes). Nothing "
        "escapes along a direction of H; look at the next Taylor order or another saddle."
    )
    order_mismatch = (
        "H is not homogeneous of the given `order` at the direction found: H(2ρ) ≠ 2^k·H(ρ) "
        "(the measured order is in `stats['measured_order']`). Pass the order of the first "
        "non-vanishing Taylor term (`taylor_term(...).order`)."
    )
    stage_not_converged = (
        "A greedy-algorithm stage or a saddle-chain path reached its time horizon before a "
        "critical point (‖∇L‖ ≤ `grad_tol`) or the loss floor: raise `horizon_factor` or "
        "loosen `grad_tol`."
    )
    path_diverged = (
        "A saddle-chain path drifts to infinity: past its drop ‖θ‖ kept growing, not slowing, "
        "while L crept down and ‖∇L‖ fell without reaching `grad_tol`, so no critical point ends "
        "it (the loss's infimum along the path is at infinity, e.g. a rank-1 fit of a masked "
        "matrix with unbounded unobserved entries). The point reported is where it stood at "
        "the horizon; the flows from α·θ̃ drift there too, for as long as the next escape lets "
        "them."
    )
    fixed_point_not_converged = (
        "The fixed-point iteration of Φ did not converge within `max_steps`. Read "
        "`contraction_ratios`: ratios ≥ 1 mean Φ does not contract (e.g. a speed below the "
        "theorem's threshold, or a window ending too far from the saddle: lower the final radius)."
    )
    fixed_point_nonfinite = (
        "The fixed-point iteration produced NaN or infinite values: the iterates diverged. Lower "
        "the final radius of the window or check the loss is finite along the path."
    )
    no_blowup = (
        "The flow of H did not blow up (`blowup_time`): its direction settled where H ≥ 0, or it "
        "shrank towards the origin, or it was still on its way after `max_time`. θ̃ may lie in "
        "the stable set of the origin, or H has no escape direction; raise `max_time` if it "
        "was merely slow."
    )


class NumericalWarning(UserWarning):
    """A solve that runs but cannot resolve what it computes: a float32 state at an initial
    scale whose escape time float32 cannot resolve, an absolute tolerance comparable to the
    state, a relative tolerance at roundoff. Silence one kind with
    `warnings.filterwarnings("ignore", category=saddlejax.NumericalWarning, message=...)`."""


def from_diffrax(result) -> RESULTS:
    """A diffrax solve's result as a saddlejax one: an event that fired counts as success."""
    result = RESULTS.promote(result)
    return RESULTS.where(result == RESULTS.event_occurred, RESULTS.successful, result)


# Advice that `check` adds to the messages saddlejax inherits from diffrax, keyed by message.
_ADVICE = {
    RESULTS._index_to_message[int(RESULTS.max_steps_reached._value)]: (
        " A step count far above the usual is a flow the solver cannot resolve: a stiff one "
        "(use `AutoStiff()`), or a ReLU net's flow sliding along a kink (a preactivation held "
        "at 0 from both sides: use `DeepReLU(..., smoothing=1e-4)`). From a tiny initial "
        "scale, the kinks of a unit decaying far below it are still resolved to the default "
        "`atol` = rtol·RMS(θ₀): a larger `atol` passes them, at the cost of the accuracy of "
        "every entry below it (the seeds of later escapes)."
    ),
}


def check(container, *, throw: bool, what: str = "the solve"):
    """Raise if `container.result` is not successful (any entry, under `vmap` too), as diffrax's
    `result.error_if` does at the end of `diffeqsolve`; return `container` unchanged otherwise.

    Outside `jit` the error names the failures, how many and why, and the fix
    (`throw=False` to inspect them). Under a user's `jit`/`vmap` the check is attached to the
    returned container (`eqx.error_if`): use the returned value, or dead-code elimination
    removes the check.
    """
    if not throw:
        return container
    result = container.result
    if result.is_traced():
        return result.error_if(container, result != RESULTS.successful)
    failures = failure_messages(result)
    if not failures:
        return container
    messages = sorted({message + _ADVICE.get(message, "") for _, message in failures})
    raise RuntimeError(
        f"{what} failed for {len(failures)} of {np.size(result._value)}: "
        + " | ".join(messages)
        + " (pass `throw=False` to inspect `result` per entry)."
    )


def failure_messages(result) -> list[tuple[tuple[int, ...], str]]:
    """(index, message) for every entry of a (batched) result that is not successful."""
    codes = np.asarray(result._value)
    if codes.ndim == 0:
        code = int(codes)
        ok = code == RESULTS.successful._value
        return [] if ok else [((), RESULTS._index_to_message[code])]
    return [
        (tuple(int(i) for i in idx), RESULTS._index_to_message[int(codes[idx])])
        for idx in zip(*np.nonzero(codes != RESULTS.successful._value))
    ]


def is_successful(result) -> jax.Array:
    """Elementwise: `result == RESULTS.successful`."""
    return result == RESULTS.successful
