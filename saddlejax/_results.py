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
        "The parameters or the loss became NaN or infinite. For gradient descent, lower "
        "`learning_rate` below 2/λ_max(∇²L); for the flow, check the objective is finite at "
        "`params0`."
    )
    stiff_solver_failed = (
        "The ODE solver failed: an implicit (Newton/Krylov) solve did not converge or the step "
        "size collapsed. Loosen `rtol`/`atol`, or try an explicit solver (`diffrax.Tsit5()`)."
    )
    origin_not_left = (
        "The flow of the leading Taylor term at the origin did not reach the handoff defect "
        "before `max_time` (`origin_handoff`): θ₀ may lie in the stable set of the origin. "
        "Integrate L directly (no `origin_defect`) or raise `max_time`."
    )
    origin_handoff_after_t1 = (
        "The origin handoff (`origin_defect`) lies after `t1`: raise `t1` or lower `origin_defect`."
    )
    escape_not_converged = (
        "No restart reached the KKT tolerance `kkt_rtol`: increase `max_steps` or `n_polish`, "
        "or loosen `kkt_rtol` (a non-smooth H, e.g. a ReLU net whose optimum has a kink, may "
        "not allow a tight residual)."
    )
    stage_not_converged = (
        "A stage of the greedy algorithm reached its time horizon before a critical point "
        "(‖∇L‖ ≤ `grad_tol`) or the loss floor: raise `horizon_factor` or loosen `grad_tol`."
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


def from_diffrax(result) -> RESULTS:
    """A diffrax solve's result as a saddlejax one: an event that fired counts as success."""
    result = RESULTS.promote(result)
    return RESULTS.where(result == RESULTS.event_occurred, RESULTS.successful, result)


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
    messages = sorted({message for _, message in failures})
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
