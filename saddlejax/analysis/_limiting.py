"""Limiting paths across α: θ_α(t_α + τ) on a common τ window, aligned modulo the rotation
symmetry, and the distances between consecutive α (Jacot et al. Thm 2; SPEC §8).

Thm 2: if σ_1(∇C(0)) is simple, θ_α(t_α + τ) → R I^{(1→w)} θ̲¹(τ) as α → 0, with t_α the escape
time at a fixed radius r and R a rotation of the hidden layers (SPEC §2). The limit is a fixed
path up to R, so after aligning every θ_α to the smallest α's path the distances between
consecutive α must shrink. Unlike `simulation_distances` (which integrates each α again and
compares with the Ψ-image of the optimal H-path), this works on trajectories already computed,
e.g. by one `sweep`: the saved states are interpolated in t.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..flow._solution import FlowSolution
from ..flow._sweep import SweepResult
from ..nn import DeepLinear
from ._alignment import procrustes_rotations, rotate_hidden


class LimitingPaths(eqx.Module):
    """θ_α(t_α + τ) for several α on one τ grid, aligned to the smallest α (see
    `limiting_paths`).

    **Fields:**

    - `alphas` (n_alpha,), decreasing; `taus` (n_tau,); `escape_times` t_α (n_alpha,).
    - `paths`: the weights (W_1, …, W_L) with leading axes (n_alpha, n_tau) — θ_α(t_α + τ)
        rotated by its Procrustes rotation onto the reference (the last α), or the leaves of
        the saved pytree unchanged when `aligned` is False.
    - `reference_norms`: ‖θ_ref(t_ref + τ)‖ on the grid.
    - `distances` (n_alpha − 1,): between consecutive α (α_i, α_{i+1}), relative to the
        reference path's size (see `norm`); Thm 2: → 0 as α → 0.
    - `reference_distances` (n_alpha,): each α against the reference (0 for itself).
    - `norm`: "sup" (max_τ‖Δ(τ)‖ / max_τ‖θ_ref(τ)‖) or "rms" (root-mean-square of ‖Δ(τ)‖ over
        the grid / that of ‖θ_ref(τ)‖). `aligned`: whether rotations were applied.
    """

    alphas: Float[np.ndarray, " n_alpha"]
    taus: Float[np.ndarray, " n_tau"]
    escape_times: Float[np.ndarray, " n_alpha"]
    paths: tuple[Array, ...]
    reference_norms: Float[np.ndarray, " n_tau"]
    distances: Float[np.ndarray, " n_alpha-1"]
    reference_distances: Float[np.ndarray, " n_alpha"]
    norm: str = eqx.field(static=True)
    aligned: bool = eqx.field(static=True)


def _trajectories(solutions, alphas, seed):
    """[(α, ts, saved params, t_α)] per α, from a sweep (one seed), a FlowSolution with a
    leading α axis, or a sequence of FlowSolutions."""
    if isinstance(solutions, SweepResult):
        if alphas is not None:
            raise ValueError("`alphas` is read from the `SweepResult`; do not pass it.")
        n_seed = len(solutions.seeds)
        if isinstance(seed, bool) or not isinstance(seed, int) or not -n_seed <= seed < n_seed:
            raise ValueError(
                f"`seed` must be an index into the sweep's {n_seed} seeds, got {seed!r}."
            )
        sol = solutions.solution
        alphas = np.asarray(solutions.alphas, dtype=float)
        sols = [
            jax.tree_util.tree_map(
                lambda x, i=i: np.asarray(x)[i, seed], (sol.ts, sol.params, sol.event_time)
            )
            for i in range(alphas.size)
        ]
        return alphas, [(ts, params, float(event)) for ts, params, event in sols]
    if alphas is None:
        raise ValueError(
            "`alphas` is needed with FlowSolutions (one α per trajectory); a `SweepResult` "
            "carries its own."
        )
    alphas = np.asarray(alphas, dtype=float).reshape(-1)
    if isinstance(solutions, FlowSolution):
        if np.ndim(solutions.ts) != 2:
            raise ValueError(
                "a single `FlowSolution` must have a leading α axis (ts of shape (n_alpha, "
                f"n_save)), got ts of shape {np.shape(solutions.ts)}; pass a list instead."
            )
        stacked = (solutions.ts, solutions.params, solutions.event_time)
        solutions = [
            jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
            for i in range(np.shape(solutions.ts)[0])
        ]
    else:
        solutions = [(s.ts, s.params, s.event_time) for s in solutions]
    if len(solutions) != alphas.size:
        raise ValueError(f"got {len(solutions)} trajectories but {alphas.size} `alphas`.")
    sols = []
    for ts, params, event in solutions:
        if np.ndim(ts) != 1:
            raise ValueError(f"each trajectory needs ts of shape (n_save,), got {np.shape(ts)}.")
        sols.append((np.asarray(ts), jax.tree_util.tree_map(np.asarray, params), float(event)))
    return alphas, sols


def _layers(params, align: bool) -> list[np.ndarray]:
    if isinstance(params, DeepLinear):
        return list(params.weights)
    leaves = jax.tree_util.tree_leaves(params)
    if align and not (isinstance(params, list | tuple) and all(np.ndim(w) == 3 for w in params)):
        raise ValueError(
            "`align=True` needs the saved states to be deep-linear weights (a `DeepLinear`, or "
            f"a tuple (W_1, …, W_L)), got {type(params).__name__}. Pass `align=False` to "
            "compare other saved quantities (e.g. the end-to-end matrix of `observe=`)."
        )
    return leaves


def _resample(alpha, ts, layers, t_alpha, taus) -> list[np.ndarray]:
    """The layers at t_α + τ by a cubic spline through the saved states (finite rows, distinct
    times): error O(h⁴) in the save spacing h."""
    if not np.isfinite(t_alpha):
        raise ValueError(
            f"α = {alpha:g}: the escape event did not fire (event_time = {t_alpha}); run the "
            "flow with `event=EscapeRadius(r)` and a `t1` past the escape."
        )
    flat = np.concatenate([x.reshape(x.shape[0], -1) for x in layers], axis=1)
    good = np.isfinite(ts) & np.all(np.isfinite(flat), axis=1)
    ts, idx = np.unique(ts[good], return_index=True)
    flat = flat[good][idx]
    want = t_alpha + taus
    if ts.size < 4 or want[0] < ts[0] or want[-1] > ts[-1]:
        covered = (ts[0] - t_alpha, ts[-1] - t_alpha) if ts.size else (np.nan, np.nan)
        raise ValueError(
            f"α = {alpha:g}: the saved states cover τ ∈ [{covered[0]:.4g}, {covered[1]:.4g}] "
            f"around t_α = {t_alpha:.6g}, not the requested [{taus[0]:.4g}, {taus[-1]:.4g}]. "
            "Narrow `taus`, or save past the escape (`stop_at_event=False`, a larger `t1`)."
        )
    from scipy.interpolate import CubicSpline  # scipy's modules are imported where used (start-up)

    values = CubicSpline(ts, flat, axis=0)(want)
    out, start = [], 0
    for x in layers:
        size = int(np.prod(x.shape[1:]))
        out.append(values[:, start : start + size].reshape((taus.size,) + x.shape[1:]))
        start += size
    return out


def _path_norms(path) -> np.ndarray:
    return np.sqrt(sum(np.sum(np.asarray(w) ** 2, axis=tuple(range(1, w.ndim))) for w in path))


def _distance(a, b, ref_norms, norm) -> float:
    diff = _path_norms([x - y for x, y in zip(a, b)])
    if norm == "sup":
        return float(np.max(diff) / np.max(ref_norms))
    return float(np.sqrt(np.mean(diff**2) / np.mean(ref_norms**2)))


def limiting_paths(
    solutions: SweepResult | FlowSolution | Sequence[FlowSolution],
    taus: Float[ArrayLike, " n_tau"],
    *,
    alphas: Float[ArrayLike, " n_alpha"] | None = None,
    seed: int = 0,
    align: bool = True,
    norm: str = "sup",
) -> LimitingPaths:
    """Shift trajectories θ_α by their escape times onto a common τ grid, align them modulo
    rotations, and measure how far consecutive α are apart (Jacot et al. Thm 2; SPEC §8).

    For each α: θ_α(t_α + τ) at the `taus`, with t_α the trajectory's `event_time` (the escape
    time of `EscapeRadius(r)`), by a cubic spline through the saved states; every path is then
    rotated onto the reference — the smallest α — by `procrustes_rotations` (one orthogonal O_ℓ
    per hidden layer, fitted over the whole τ grid); finally the distance between consecutive
    α (and to the reference) in the sup or RMS norm over the grid, relative to the reference
    path's size. Thm 2 says the distances go to 0 as α → 0 when σ_1(∇C(0)) is simple.

    Choose the τ window inside the first escape: θ_α approaches the rank-1 saddle ϑ¹ and leaves
    it again after a time that grows as α → 0 (Conjecture 3), so past that plateau the paths
    of different α separate again. τ < 0 down to where the reference has a small fraction of
    the radius is the escape itself.

    Save densely enough that the spline is accurate: the default save grid of `n_save` points
    has half of them uniform on [0, t1], spacing 2·t1/n_save; the spline's relative error is
    about (s·h)⁴/384 for a path growing like e^{st} (e.g. 10⁻⁷ at s·h = 0.1).

    **Arguments:**

    - `solutions`: a `SweepResult` with an `EscapeRadius` event (`stop_at_event=False` to
        look past the escape, else τ < 0 only; states saved, i.e. no `observe=`, for
        `align=True`), a `FlowSolution` with a leading α axis, or a sequence of
        `FlowSolution`s, one per α.
    - `taus`: the increasing τ grid, inside every trajectory's saved range minus its t_α.
    - `alphas`: the scales of FlowSolution input (a `SweepResult` carries its own).
    - `seed`: for a `SweepResult`, the index of the seed to use.
    - `align`: Procrustes-align deep-linear weights (default). False compares the saved
        leaves as they are (e.g. end-to-end matrices from `observe=`, which are invariant).
    - `norm`: "sup" or "rms".

    **Returns:** a `LimitingPaths`.

    **Example:**

    ```python
    res = saddlejax.sweep(problem, draw, t1, alphas=[1e-1, 1e-2, 1e-3], seeds=[0],
                          event=saddlejax.EscapeRadius(1.0), stop_at_event=False, n_save=1024)
    paths = limiting_paths(res, np.linspace(-3.0, 1.0, 81))
    paths.distances  # decreasing
    ```
    """
    if norm not in ("sup", "rms"):
        raise ValueError(f"`norm` must be 'sup' or 'rms', got {norm!r}.")
    taus = np.asarray(taus, dtype=float)
    if taus.ndim != 1 or taus.size < 2 or np.any(np.diff(taus) <= 0):
        raise ValueError(f"`taus` must be an increasing 1-D grid of ≥ 2 times, got {taus!r}.")
    alphas, sols = _trajectories(solutions, alphas, seed)
    if alphas.size < 2 or np.unique(alphas).size != alphas.size or np.any(~(alphas > 0)):
        raise ValueError(f"`alphas` must be ≥ 2 distinct positive scales, got {alphas.tolist()}.")
    order = np.argsort(-alphas)
    alphas = alphas[order]
    sols = [sols[i] for i in order]
    paths = [
        _resample(a, ts, _layers(params, align), t_alpha, taus)
        for a, (ts, params, t_alpha) in zip(alphas, sols)
    ]
    reference = paths[-1]
    if align:
        target = tuple(jnp.asarray(w) for w in reference)
        paths = [
            [np.asarray(w) for w in rotate_hidden(p, procrustes_rotations(p, target))]
            for p in paths
        ]
        reference = paths[-1]
    ref = reference
    ref_norms = _path_norms(ref)
    dist = [_distance(paths[i], paths[i + 1], ref_norms, norm) for i in range(alphas.size - 1)]
    to_ref = [_distance(p, reference, ref_norms, norm) for p in paths]
    return LimitingPaths(
        alphas=alphas,
        taus=taus,
        escape_times=np.asarray([s[2] for s in sols]),
        paths=tuple(jnp.stack([jnp.asarray(p[ell]) for p in paths]) for ell in range(len(ref))),
        reference_norms=ref_norms,
        distances=np.asarray(dist),
        reference_distances=np.asarray(to_ref),
        norm=norm,
        aligned=align,
    )
