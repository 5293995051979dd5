"""Plateaus of a loss curve on log-log axes, with the drops between them (SPEC §8, Conjecture 3)."""

import warnings

import equinox as eqx
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._results import NumericalWarning
from .._validate import check_int, check_real, describe


class LossStaircase(eqx.Module):
    """The plateaus of a loss curve in time order and the drops between them.

    Plateau k lies on [`starts[k]`, `ends[k]`] at loss `levels[k]`; drop k separates plateaus k
    and k + 1. A drop is `resolved` when it holds one level change; an unresolved drop holds
    `changes[k]` > 1 level changes with no save point on a plateau between them (the save grid,
    or the separation of the saddles, is too coarse to show the intermediate plateau).

    **Fields:**

    - `starts`, `ends`, `levels`: per plateau, its first and last save time and the median loss
        over its save points.
    - `saddle_times`: per plateau, the save time of least ‖∇L‖ on it, NaN without `grad_norm`.
    - `changes`: per drop, the number of level changes seen in it (peaks of |d log L/d log t|).
    - `resolved`: per drop, `changes == 1`.
    - `saddle_indices`: per plateau, the largest Hessian saddle index (number of negative
        eigenvalues) over its save points, NaN without `saddle_index`.
    """

    starts: Float[np.ndarray, " k"]
    ends: Float[np.ndarray, " k"]
    levels: Float[np.ndarray, " k"]
    saddle_times: Float[np.ndarray, " k"]
    changes: Int[np.ndarray, " k-1"]
    resolved: Bool[np.ndarray, " k-1"]
    saddle_indices: Float[np.ndarray, " k"]

    @property
    def n_plateaus(self) -> int:
        return len(self.levels)


def _secants(x: np.ndarray, window: float) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the indices (lo, hi) of the secant across [x − window/2, x + window/2],
    widened to at least the neighbouring points."""
    n = x.size
    idx = np.arange(n)
    lo = np.searchsorted(x, x - window / 2, side="right") - 1
    hi = np.searchsorted(x, x + window / 2, side="left")
    lo = np.clip(np.minimum(lo, idx - 1), 0, n - 1)
    hi = np.clip(np.maximum(hi, idx + 1), 0, n - 1)
    return lo, hi


def _log_slope(x: np.ndarray, y: np.ndarray, secants: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """dy/dx at each point as its secant (`_secants`): a fixed window in log t keeps the noise
    of the estimate the same on the geometric and the uniform halves of the save grid."""
    lo, hi = secants
    return (y[hi] - y[lo]) / (x[hi] - x[lo])


def _level_changes(slope: np.ndarray, lo: np.ndarray, hi: np.ndarray, prominence: float) -> int:
    """Level changes in one drop: peaks of |slope| of at least `prominence` × its highest,
    where two peaks whose secants share a save interval count once. Such peaks are one change
    seen through windows of different widths (a drop sharper than the grid's spacing, on the
    uneven part of the save grid), not two changes the window resolves."""
    from scipy.signal import find_peaks  # scipy's modules are imported where used (start-up)

    peaks, _ = find_peaks(slope, prominence=prominence * slope.max())
    changes, last_hi = 0, -1
    for p in peaks:
        if lo[p] >= last_hi:
            changes += 1
        last_hi = max(last_hi, hi[p])
    return max(1, changes)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [i, j] (inclusive) of True in `mask`."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def _refine(x, y, loss, merged, window, threshold, min_points, merge_rtol):
    """Plateaus shorter than the slope window, looked for between the plateaus found: with the
    window / `refine` secant, a run of at least `refine_points` flat points whose level differs
    from both neighbours by more than `merge_rtol` is a plateau too. For L > 2 the saddles
    after the first are visited for a time of order α^{−(L−2)}, like the escape itself, so on
    log t a plateau can be as short as the window (Jacot et al. Fig. 1)."""
    fine = np.abs(_log_slope(x, y, _secants(x, window)))
    out = [merged[0]]
    for (_, j0), (i1, j1) in zip(merged[:-1], merged[1:]):
        hi, lo = np.median(loss[out[-1][0] : j0 + 1]), np.median(loss[i1 : j1 + 1])
        for a, b in _runs(fine[j0 + 1 : i1] < threshold):
            a, b = a + j0 + 1, b + j0 + 1
            level = np.median(loss[a : b + 1])
            distinct = min(abs(level - hi) / hi, abs(level - lo) / level) > merge_rtol
            if b - a + 1 >= min_points and distinct:
                out.append((a, b))
        out.append((i1, j1))
    return out


def detect_plateaus(
    ts: Float[Array, " n"],
    loss: Float[Array, " n"],
    *,
    grad_norm: Float[Array, " n"] | None = None,
    saddle_index: Float[Array, " n"] | None = None,
    slope_threshold: float = 0.05,
    window: float = 0.1,
    min_points: int = 2,
    merge_rtol: float = 0.02,
    peak_prominence: float = 0.2,
    floor: float = 1e-8,
    refine: float = 5.0,
    refine_points: int = 5,
) -> LossStaircase:
    """Plateaus of a loss curve: maximal stretches where |d log L / d log t| < `slope_threshold`.

    Saddle-to-saddle dynamics (Jacot et al. §5, Conjecture 3; SPEC §8) show as a staircase on
    log-log axes: a plateau at each saddle visited, at a level that does not depend on α, separated
    by drops that sharpen in log t as α → 0. On log t the default save grid (half geometric, half
    uniform) resolves both the early and the late plateaus, and the log-log slope of a plateau is
    scale-free, so one threshold serves every α.

    Save points with t ≤ 0 (the initial point), non-finite values or L ≤ 0 are ignored. The slope
    at a save point is the secant of (log t, log L) across a log-time `window` (at least the
    neighbouring points), which averages multiplicative noise ξ to ~ √2 ξ / `window`. Runs of fewer
    than `min_points` flat points are not plateaus; neighbouring runs whose median levels agree
    within `merge_rtol` are one plateau cut by a spike; runs below `floor` × the highest level
    are the approach to a minimum (or round-off), not saddles. Between two plateaus, each peak of
    |slope| of prominence at least `peak_prominence` × the drop's highest slope is one level change
    (two peaks whose secants overlap are one change: the window does not resolve them).

    **Arguments:**

    - `ts`, `loss`: one trajectory's save times and losses (`sol.ts`, `sol.loss`).
    - `grad_norm`: ‖∇L‖ at the save times (optional), to locate the saddle visits.
    - `saddle_index`: the Hessian's saddle index at the save times (optional), e.g.
        `sol.params["saddle_index"]` of a flow observed with `spectrum_observable`, or
        `trajectory_spectra(...).saddle_index`. A plateau followed by a drop is a saddle visit
        (SPEC §8); if no save point on it has a negative Hessian eigenvalue (index 0), a
        `NumericalWarning` says that the point visited is, to second order, a local minimum
        or degenerate (see **Warns**). Nothing is computed here: pass what was recorded.
    - `refine`, `refine_points`: between the plateaus found, look again with the window divided
        by `refine` for plateaus of at least `refine_points` save points (shorter than the
        window; `refine=1` turns this off).
    - `slope_threshold`, `window` (in units of log t), `min_points`, `merge_rtol`,
        `peak_prominence`, `floor`: as above. The defaults resolve the plateaus of the library's
        default save grids (256 points, six decades) for DLNs at α ≤ 1e−2.

    **Returns:** a `LossStaircase`. Runs outside `jit` (the number of plateaus is data).

    **Warns:** `NumericalWarning`, with `saddle_index`, for a plateau followed by a drop whose
    save points all have saddle index 0. A strict saddle has a negative eigenvalue (k = 2 in
    SPEC §4), so the point is either degenerate — a saddle of order k > 2, e.g. the origin of
    a network of depth ≥ 3 at small α, whose escape directions have zero curvature — or its
    negative eigenvalues are below `index_tol` or unconverged, or the plateau is not a saddle
    (a local minimum left only through noise, or a plateau that the grid cut in two). Check
    the leading Taylor term there (`taylor_term`, `optimal_escape`).

    **Raises:** `ValueError` for an argument of the wrong type or out of range, naming it.

    **Example:**

    ```python
    sol = saddlejax.gradient_flow(objective, net, t1, observe=...)
    stairs = saddlejax.detect_plateaus(sol.ts, sol.loss)
    stairs.levels  # the losses of the saddles visited
    ```
    """
    slope_threshold = check_real("slope_threshold", slope_threshold, low=0.0, low_open=True)
    window = check_real("window", window, low=0.0, low_open=True)
    min_points = check_int("min_points", min_points)
    merge_rtol = check_real("merge_rtol", merge_rtol, low=0.0)
    peak_prominence = check_real("peak_prominence", peak_prominence, low=0.0, high=1.0)
    floor = check_real("floor", floor, low=0.0)
    refine = check_real("refine", refine, low=1.0)
    refine_points = check_int("refine_points", refine_points)
    ts = _series("ts", ts)
    loss = _series("loss", loss)
    gn = None if grad_norm is None else _series("grad_norm", grad_norm)
    index = None if saddle_index is None else _series("saddle_index", saddle_index)
    for name, x in (("loss", loss), ("grad_norm", gn), ("saddle_index", index)):
        if x is not None and x.shape != ts.shape:
            raise ValueError(
                f"`{name}` must have the length of `ts` ({ts.size}), got shape {x.shape}."
            )
    keep = np.isfinite(ts) & np.isfinite(loss) & (ts > 0) & (loss > 0)
    order = np.argsort(ts[keep], kind="stable")
    ts, loss = ts[keep][order], loss[keep][order]
    gn = None if gn is None else gn[keep][order]
    index = None if index is None else index[keep][order]
    empty = LossStaircase(*(np.zeros(0),) * 4, np.zeros(0, int), np.zeros(0, bool), np.zeros(0))
    if ts.size < 3:
        return empty
    x, y = np.log(ts), np.log(loss)
    lo, hi = _secants(x, window)
    slope = np.abs(_log_slope(x, y, (lo, hi)))

    runs = [(i, j) for i, j in _runs(slope < slope_threshold) if j - i + 1 >= min_points]
    merged: list[tuple[int, int]] = []
    for i, j in runs:
        if merged:
            pi, pj = merged[-1]
            a, b = np.median(loss[pi : pj + 1]), np.median(loss[i : j + 1])
            if abs(a - b) <= merge_rtol * max(a, b):
                merged[-1] = (pi, j)
                continue
        merged.append((i, j))
    levels = np.array([np.median(loss[i : j + 1]) for i, j in merged])
    if levels.size:
        merged = [r for r, lv in zip(merged, levels) if lv >= floor * levels.max()]
        levels = levels[levels >= floor * levels.max()]
    if not merged:
        return empty

    if refine > 1:
        merged = _refine(
            x, y, loss, merged, window / refine, slope_threshold, refine_points, merge_rtol
        )
        levels = np.array([np.median(loss[i : j + 1]) for i, j in merged])

    changes = np.array(
        [
            _level_changes(slope[j0 : i1 + 1], lo[j0 : i1 + 1], hi[j0 : i1 + 1], peak_prominence)
            for (_, j0), (i1, _) in zip(merged[:-1], merged[1:])
        ],
        dtype=int,
    )
    if gn is None:
        saddle_times = np.full(len(merged), np.nan)
    else:
        saddle_times = np.array([ts[i + np.argmin(gn[i : j + 1])] for i, j in merged])
    saddle_indices = np.full(len(merged), np.nan)
    if index is not None:
        for k, (i, j) in enumerate(merged):
            seen = index[i : j + 1][np.isfinite(index[i : j + 1])]
            saddle_indices[k] = seen.max() if seen.size else np.nan
        _warn_minimum_saddles(merged, ts, levels, saddle_indices)
    return LossStaircase(
        starts=np.array([ts[i] for i, _ in merged]),
        ends=np.array([ts[j] for _, j in merged]),
        levels=levels,
        saddle_times=saddle_times,
        changes=changes,
        resolved=changes == 1,
        saddle_indices=saddle_indices,
    )


def _series(name: str, values) -> np.ndarray:
    """`values` as a 1-D float array, or a ValueError naming the argument."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a 1-D array of real numbers, got {describe(values)}."
        ) from None
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array, got shape {array.shape}.")
    return array


def _warn_minimum_saddles(plateaus, ts, levels, indices) -> None:
    """`NumericalWarning` for every plateau followed by a drop whose saddle index is 0."""
    for k, ((i, j), level, index) in enumerate(zip(plateaus[:-1], levels[:-1], indices[:-1])):
        if index == 0:
            warnings.warn(
                f"plateau {k} (t ∈ [{ts[i]:.3g}, {ts[j]:.3g}], L ≈ {level:.3g}) is followed by "
                "a drop, but the Hessian has no negative eigenvalue at any of its save points "
                "(`saddle_index` 0): the point visited is, to second order, a local minimum or "
                "degenerate — a saddle of order k > 2 (e.g. the origin of a network of depth "
                "≥ 3), negative eigenvalues below `index_tol` or not converged, or not a saddle "
                "at all. Check its leading Taylor term (`taylor_term`, `optimal_escape`).",
                NumericalWarning,
                stacklevel=3,
            )
