"""Plateaus of a loss curve on log-log axes, with the drops between them (SPEC §8, Conjecture 3)."""

import equinox as eqx
import numpy as np
import scipy.signal
from jaxtyping import Array, Bool, Float, Int


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
    """

    starts: Float[np.ndarray, " k"]
    ends: Float[np.ndarray, " k"]
    levels: Float[np.ndarray, " k"]
    saddle_times: Float[np.ndarray, " k"]
    changes: Int[np.ndarray, " k-1"]
    resolved: Bool[np.ndarray, " k-1"]

    @property
    def n_plateaus(self) -> int:
        return len(self.levels)


def _log_slope(x: np.ndarray, y: np.ndarray, window: float) -> np.ndarray:
    """dy/dx at each point as the secant across [x − window/2, x + window/2], widened to at
    least the neighbouring points: a fixed window in log t keeps the noise of the estimate the
    same on the geometric and the uniform halves of the save grid."""
    n = x.size
    idx = np.arange(n)
    lo = np.searchsorted(x, x - window / 2, side="right") - 1
    hi = np.searchsorted(x, x + window / 2, side="left")
    lo = np.clip(np.minimum(lo, idx - 1), 0, n - 1)
    hi = np.clip(np.maximum(hi, idx + 1), 0, n - 1)
    return (y[hi] - y[lo]) / (x[hi] - x[lo])


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
    fine = np.abs(_log_slope(x, y, window))
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
    |slope| of prominence at least `peak_prominence` × the drop's highest slope is one level change.

    **Arguments:**

    - `ts`, `loss`: one trajectory's save times and losses (`sol.ts`, `sol.loss`).
    - `grad_norm`: ‖∇L‖ at the save times (optional), to locate the saddle visits.
    - `refine`, `refine_points`: between the plateaus found, look again with the window divided
        by `refine` for plateaus of at least `refine_points` save points (shorter than the
        window; `refine=1` turns this off).
    - `slope_threshold`, `window` (in units of log t), `min_points`, `merge_rtol`,
        `peak_prominence`, `floor`: as above. The defaults resolve the plateaus of the library's
        default save grids (256 points, six decades) for DLNs at α ≤ 1e−2.

    **Returns:** a `LossStaircase`. Runs outside `jit` (the number of plateaus is data).

    **Example:**

    ```python
    sol = saddlejax.gradient_flow(objective, net, t1, observe=...)
    stairs = saddlejax.detect_plateaus(sol.ts, sol.loss)
    stairs.levels  # the losses of the saddles visited
    ```
    """
    if not slope_threshold > 0 or not window > 0 or not merge_rtol >= 0 or not floor >= 0:
        raise ValueError(
            "`slope_threshold` and `window` must be positive, `merge_rtol` and `floor` "
            f"non-negative; got {slope_threshold}, {window}, {merge_rtol}, {floor}."
        )
    if not (isinstance(min_points, int) and min_points >= 1):
        raise ValueError(f"`min_points` must be an int ≥ 1, got {min_points!r}.")
    ts = np.asarray(ts, dtype=float)
    loss = np.asarray(loss, dtype=float)
    gn = None if grad_norm is None else np.asarray(grad_norm, dtype=float)
    if ts.ndim != 1 or loss.shape != ts.shape or (gn is not None and gn.shape != ts.shape):
        raise ValueError(
            "`ts`, `loss` (and `grad_norm`) must be 1-D of one length; got shapes "
            f"{ts.shape}, {loss.shape}" + ("" if gn is None else f", {gn.shape}") + "."
        )
    keep = np.isfinite(ts) & np.isfinite(loss) & (ts > 0) & (loss > 0)
    ts, loss = ts[keep], loss[keep]
    gn = None if gn is None else gn[keep]
    order = np.argsort(ts, kind="stable")
    ts, loss = ts[order], loss[order]
    gn = None if gn is None else gn[order]
    empty = LossStaircase(*(np.zeros(0),) * 4, np.zeros(0, int), np.zeros(0, bool))
    if ts.size < 3:
        return empty
    x, y = np.log(ts), np.log(loss)
    slope = np.abs(_log_slope(x, y, window))

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
        merged = _refine(x, y, loss, merged, window / refine, slope_threshold, refine_points,
                         merge_rtol)
        levels = np.array([np.median(loss[i : j + 1]) for i, j in merged])

    changes = []
    for (_, j0), (i1, _) in zip(merged[:-1], merged[1:]):
        segment = slope[j0 : i1 + 1]
        peaks, _ = scipy.signal.find_peaks(segment, prominence=peak_prominence * segment.max())
        changes.append(max(1, peaks.size))
    changes = np.asarray(changes, dtype=int)
    if gn is None:
        saddle_times = np.full(len(merged), np.nan)
    else:
        saddle_times = np.array([ts[i + np.argmin(gn[i : j + 1])] for i, j in merged])
    return LossStaircase(
        starts=np.array([ts[i] for i, _ in merged]),
        ends=np.array([ts[j] for _, j in merged]),
        levels=levels,
        saddle_times=saddle_times,
        changes=changes,
        resolved=changes == 1,
    )
