"""Plateau detection on log-log loss curves (SPEC §8)."""

import warnings

import numpy as np
import pytest

import saddlejax as sj
from saddlejax.flow._options import default_save_times

_WIDTH = 0.05  # logistic width of each drop, in log t
_THRESHOLD = 0.05  # detect_plateaus' default slope threshold


def _staircase(levels, centres, ts, noise, seed):
    """log L = log l_K + Σ_k log(l_{k−1}/l_k) σ((c_k − log t)/s), times (1 + noise·N(0, 1))."""
    with np.errstate(divide="ignore"):  # t = 0 sits on the first plateau (log t = −∞)
        x = np.log(ts)
    y = np.full_like(x, np.log(levels[-1]))
    for c, hi, lo in zip(centres, levels[:-1], levels[1:]):
        y += np.log(hi / lo) / (1 + np.exp(-(c - x) / _WIDTH))
    return np.exp(y) * (1 + noise * np.random.default_rng(seed).standard_normal(x.size))


def _flat_edges(levels, centres):
    """The exact plateau boundaries: where |d log L/d log t| of the noise-free curve crosses the
    threshold, from a fine grid (independent of the save grid and of the estimator)."""
    x = np.linspace(-3, 12, 300_001)
    slope = np.zeros_like(x)
    for c, hi, lo in zip(centres, levels[:-1], levels[1:]):
        sig = 1 / (1 + np.exp(-(c - x) / _WIDTH))
        slope += np.log(hi / lo) * sig * (1 - sig) / _WIDTH
    flat = slope < _THRESHOLD
    edges = np.flatnonzero(np.diff(flat.astype(int)))
    return np.exp(x[edges])


@pytest.mark.parametrize("n_plateaus", [1, 2, 3, 4, 5])
def test_staircase_counts_levels_and_edges(n_plateaus):
    """On the default save grid (256 times to t1 = 1e5) with multiplicative noise 1e−3, a
    staircase of `n_plateaus` levels (drops at log t spread over [1, 10.5]) is found with the
    right count, levels within 1 %, every drop resolved, and interior plateau edges within a
    factor 1.3 in t of the exact threshold crossings."""
    ts = default_save_times(0.0, 1e5, 256)
    levels = 3.0 * np.exp(-np.cumsum(np.r_[0.0, np.linspace(1.0, 2.5, n_plateaus - 1)]))
    centres = np.linspace(1.0, 10.5, n_plateaus + 1)[1:-1] if n_plateaus > 1 else []
    loss = _staircase(levels, centres, ts, 1e-3, n_plateaus)
    stairs = sj.detect_plateaus(ts, loss)
    assert stairs.n_plateaus == n_plateaus
    np.testing.assert_allclose(stairs.levels, levels, rtol=1e-2)
    assert stairs.resolved.all()
    edges = _flat_edges(levels, centres)  # end_0, start_1, end_1, start_2, ...
    assert edges.size == 2 * (n_plateaus - 1)
    np.testing.assert_allclose(np.log(stairs.ends[:-1]), np.log(edges[0::2]), atol=np.log(1.3))
    np.testing.assert_allclose(np.log(stairs.starts[1:]), np.log(edges[1::2]), atol=np.log(1.3))
    assert stairs.starts[0] == ts[1] and stairs.ends[-1] == ts[-1]


def test_close_drops_are_unresolved():
    """Two drops 8 widths apart (log t = 10.6 and 11.0) keep |slope| above the threshold between
    them: no plateau there, and the one drop between the plateaus holds two level changes."""
    ts = default_save_times(0.0, 1e5, 256)
    levels = np.array([3.0, 1.0, 0.2, 0.05])
    stairs = sj.detect_plateaus(ts, _staircase(levels, [5.0, 10.6, 11.0], ts, 1e-3, 0))
    assert stairs.n_plateaus == 3
    np.testing.assert_allclose(stairs.levels, levels[[0, 1, 3]], rtol=1e-2)
    np.testing.assert_array_equal(stairs.changes, [1, 2])
    np.testing.assert_array_equal(stairs.resolved, [True, False])


def test_drop_sharper_than_the_grid_is_one_change():
    """A drop that falls between two save points (as the escapes of an L = 3 DLN at α = 1e−4 do,
    in t ~ 1/α) is one level change wherever it falls on the default save grid; on the uneven
    part of the grid the windowed slope across it has several peaks (windows of different
    widths), which must not read as an unresolved drop."""
    ts = default_save_times(0.0, 2e6, 1024)
    for jump in range(5, 995):  # 118 of these read as two changes without the secant rule
        loss = np.where(np.arange(ts.size) <= jump, 0.068, 0.0056)
        stairs = sj.detect_plateaus(ts, loss)
        assert stairs.n_plateaus == 2, jump
        np.testing.assert_array_equal(stairs.changes, [1], err_msg=f"jump after point {jump}")


def test_saddle_time_is_argmin_of_grad_norm():
    """With `grad_norm`, each plateau's saddle time is the save time of least ‖∇L‖ on it."""
    ts = default_save_times(0.0, 1e5, 256)
    levels = np.array([3.0, 0.5])
    loss = _staircase(levels, [6.0], ts, 1e-3, 1)
    x = np.log(ts[1:])
    grad_norm = np.r_[1.0, np.minimum(np.abs(x - 2.0), np.abs(x - 9.0)) + 1e-3]
    stairs = sj.detect_plateaus(ts, loss, grad_norm=grad_norm)
    expect = [ts[1:][np.argmin(np.abs(x - 2.0))], ts[1:][np.argmin(np.abs(x - 9.0))]]
    np.testing.assert_allclose(stairs.saddle_times, expect)


@pytest.mark.parametrize("depth", [2, 3])
def test_dln_flow_drops_equal_target_rank(depth, getkey):
    """On a DLN flow from small α the staircase has rank(A*) drops (Conjecture 3; Saxe et al.
    for L = 2): full observation of a 4×4 rank-3 target with well-separated singular values
    (3, 1, 0.3; the saddles are its truncated SVDs), α = 1e−4; the plateau levels are the
    truncated-SVD losses (1/N)Σ_{i>k}σ_i², within 2 % (each plateau's median level; the flow
    passes within O(α) of each saddle)."""
    q1 = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))[0]
    q2 = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))[0]
    sv = np.array([3.0, 1.0, 0.3, 0.0])
    problem = sj.MatrixCompletion(q1 @ np.diag(sv) @ q2.T, np.ones((4, 4)))
    alpha = 1e-4
    net = sj.init.scale(sj.nn.DeepLinear((4,) + (4,) * (depth - 1) + (4,), key=getkey()), alpha)
    # Each drop k takes ~log(1/α)/s_k (L = 2) or ~α^{−(L−2)}/s_k (L = 3), s_k ∝ σ_k.
    t1 = 60 * (np.log(1 / alpha) if depth == 2 else 1 / alpha) / sv[2]
    sol = sj.gradient_flow(problem, net, t1, n_save=1024)
    stairs = sj.detect_plateaus(np.asarray(sol.ts), np.asarray(sol.loss), floor=1e-6)
    expected = np.array([np.sum(sv[k:] ** 2) for k in range(3)]) / 16
    assert stairs.n_plateaus == 3, stairs.levels
    assert len(stairs.changes) == 2 and np.all(np.asarray(stairs.resolved))
    np.testing.assert_allclose(stairs.levels, expected, rtol=2e-2)


def test_plateau_shorter_than_the_window_is_found():
    """A plateau flat for 0.07 in log t (shorter than the 0.1 slope window) between two sharp
    drops — how the rank-1 saddle of an L = 4 DLN can look (Jacot et al. Fig. 1: the saddles
    after the first are visited for times of order α^{−(L−2)}, like the escape) — is found by
    the refinement with its level, and each drop counts one change; without refinement the two
    drops merge into one "resolved" drop, a wrong staircase. Flow losses have no noise; 1e−5
    here (the refined slope's noise is √2·1e−5/0.02 ≈ 7e−4, far below the threshold)."""
    ts = default_save_times(0.0, 6e6, 1024)
    x = np.log(np.maximum(ts, 1e-300))
    levels = np.array([3.35, 1.08, 0.05])
    y = np.full_like(x, np.log(levels[-1]))
    for c, hi, lo in zip(np.log([1.9e6, 2.3e6]), levels[:-1], levels[1:]):
        y += np.log(hi / lo) / (1 + np.exp(-(c - x) / 0.008))
    loss = np.exp(y) * (1 + 1e-5 * np.random.default_rng(0).standard_normal(x.size))
    stairs = sj.detect_plateaus(ts, loss)
    np.testing.assert_allclose(stairs.levels, levels, rtol=1e-2)
    np.testing.assert_array_equal(stairs.changes, [1, 1])
    coarse = sj.detect_plateaus(ts, loss, refine=1)
    assert coarse.n_plateaus == 2  # what the refinement adds


def _plateau_indices(ts, stairs, per_plateau, elsewhere=np.inf):
    """A `saddle_index` series: `per_plateau[k]` on plateau k, `elsewhere` off the plateaus."""
    index = np.full(ts.shape, elsewhere)
    for start, end, value in zip(stairs.starts, stairs.ends, per_plateau):
        index[(ts >= start) & (ts <= end)] = value
    return index


def test_saddle_with_index_zero_warns():
    """With `saddle_index` (the Hessian index recorded at the save times), each plateau gets
    the largest index seen on it. A plateau followed by a drop is a saddle visit (SPEC §8); one
    whose save points all have index 0 has no direction of negative curvature, so it is a
    minimum or degenerate to second order: a `NumericalWarning` names it. The last plateau (the
    minimum the flow ends in) and plateaus with a negative eigenvalue do not warn; non-finite
    index entries (save times after a stop) are ignored."""
    ts = default_save_times(0.0, 1e5, 256)
    levels = np.array([3.0, 1.0, 0.2])
    loss = _staircase(levels, [3.0, 7.0], ts, 1e-3, 2)
    plain = sj.detect_plateaus(ts, loss)
    assert plain.n_plateaus == 3 and np.all(np.isnan(plain.saddle_indices))

    normal = _plateau_indices(ts, plain, [2.0, 1.0, 0.0])
    normal[-1] = np.nan  # an unrecorded point on the last plateau
    with warnings.catch_warnings():
        warnings.simplefilter("error", sj.NumericalWarning)
        stairs = sj.detect_plateaus(ts, loss, saddle_index=normal)
    np.testing.assert_array_equal(stairs.saddle_indices, [2.0, 1.0, 0.0])
    np.testing.assert_array_equal(stairs.levels, plain.levels)

    degenerate = _plateau_indices(ts, plain, [2.0, 0.0, 0.0], elsewhere=1.0)
    with pytest.warns(sj.NumericalWarning, match=r"plateau 1 .*`saddle_index` 0") as record:
        stairs = sj.detect_plateaus(ts, loss, saddle_index=degenerate)
    assert len(record) == 1
    np.testing.assert_array_equal(stairs.saddle_indices, [2.0, 0.0, 0.0])


def test_plateau_arguments_are_named():
    """Arguments of the wrong type or out of range raise a ValueError naming them."""
    ts = default_save_times(0.0, 1e5, 64)
    loss = _staircase(np.array([3.0, 1.0]), [5.0], ts, 0.0, 0)
    for name, value in (
        ("slope_threshold", "0.1"),
        ("window", -1.0),
        ("min_points", 2.5),
        ("merge_rtol", np.nan),
        ("peak_prominence", 2.0),
        ("floor", None),
        ("refine", 0.5),
        ("refine_points", 0),
        ("saddle_index", np.ones(3)),
        ("grad_norm", "abc"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            sj.detect_plateaus(ts, loss, **{name: value})
    with pytest.raises(ValueError, match="`ts`"):
        sj.detect_plateaus([1 + 2j, 3.0], loss[:2])
