"""The Chen–Luo–Wang experiments' own logic (presets `chen-luo-wang-fig1/2/3`; the presets
themselves run in `notebooks/chen_luo_wang_multistage.ipynb`): config validation, the horizons,
Eq. (42) without a loss plateau, and the stage times and checks on constructed trajectories."""

import math

import numpy as np
import pytest

import saddlejax as sj
import saddlejax.experiments as ex
from saddlejax.experiments._chen_luo_wang import (
    DescentTimeConfig,
    StagesConfig,
    TargetsConfig,
    _descent_claims,
    _Draw,
    _Observe,
    _stage_claims,
    _stage_rows,
    _target_claims,
    _target_rows,
    descent_time,
)


@pytest.mark.parametrize(
    "config, field, value, words",
    [
        (StagesConfig, "alpha", 0.5, "`alpha`"),
        (StagesConfig, "target", "cos", "`target`"),
        (StagesConfig, "width", 1, "`width`"),
        (StagesConfig, "alpha", 10.5, "`alpha`"),
        (StagesConfig, "beta", 1.0, "`beta`"),
        (StagesConfig, "solver", "euler", "`solver`"),
        (StagesConfig, "seeds", (), "`seeds`"),
        (StagesConfig, "horizon", 0.0, "`horizon`"),
        (DescentTimeConfig, "widths", (1000,), "at least two"),
        (DescentTimeConfig, "alphas", (0.75, 0.4), "`alphas`"),
        (DescentTimeConfig, "width_alpha", 0.5, "`width_alpha`"),
        (DescentTimeConfig, "horizon_factor", 0.5, "`horizon_factor`"),
        (TargetsConfig, "targets", ("sin", "sin"), "`targets`"),
        (TargetsConfig, "targets", ("sine",), "`targets`"),
        (TargetsConfig, "n_save", 3, "`n_save`"),
    ],
)
def test_bad_settings_name_the_field(config, field, value, words):
    """Every field is validated in `__post_init__` with a one-line message naming it."""
    with pytest.raises(ValueError, match=words) as info:
        config(**{field: value})
    assert "\n" not in str(info.value)


def test_descent_horizons_reach_the_secondary_plateau():
    """In both modes of `chen-luo-wang-fig2` every flow runs past Theorem 2's T_d plus the O(1)
    offset measured on these data (≈ 1, bounded by `offset_max`) by at least 2 in t·rate, so
    `clw_milestones` sees the secondary plateau begin; widths and α are sorted."""
    for quick in (False, True):
        (job,) = ex.configure("chen-luo-wang-fig2", quick=quick)
        c = job.config
        assert list(c.widths) == sorted(c.widths) and list(c.alphas) == sorted(c.alphas)
        runs = [(c.alpha_width, a) for a in c.alphas] + [(m, c.width_alpha) for m in c.widths]
        for m, a in runs:
            t_d = float(sj.clw_predicted_times(m, a).T_d)
            assert c.t1_rate(m, a) >= t_d + c.offset_max + 2.0


def test_compiled_solves_are_shared():
    """The draw and the observation are equal and hash equal for equal settings (static
    fields), so sweeps of one width reuse one compiled solve across the three presets."""
    assert _Draw(1000) == _Draw(1000) and hash(_Draw(1000)) == hash(_Draw(1000))
    assert _Draw(1000) != _Draw(2000)
    assert hash(_Observe((1.0,))) == hash(_Observe((1.0,)))


def _logistic_run(ts, k_star=0.25, c=1e-4, drop_at=50.0):
    """K(t) = K*·Ce^{2t}/(1 + Ce^{2t}) (their Eq. 20 in rate units), loss R₀ − K + K²/(2K*)
    (Eq. 37) and a second, slow drop to 0.8× the secondary level from t = `drop_at` on; the
    layers' amplitude distributions merge in the descent and drift apart after it."""
    growth = c * np.exp(2 * ts)
    K = k_star * growth / (1 + growth)
    loss = 1.0 - K + K**2 / (2 * k_star)
    level = 1.0 - k_star / 2
    loss = loss - 0.2 * level * np.clip((ts - drop_at) / drop_at, 0, 1) ** 2
    W = 0.05 / (1 + growth) + 1e-3 + 1e-2 * np.clip(ts - 10, 0, None)
    ratio = 1 + 0.05 / (1 + growth) + 2e-3 * np.clip(ts - 10, 0, None)
    return {
        "ts": ts, "loss": loss, "K": K, "K_prime": 2 * K * (1 + 1e-4),
        "wasserstein": W, "norm_a": ratio, "norm_w": np.ones_like(ts),
    }


def _stacked(run, n_seed=2):
    return {k: np.broadcast_to(v, (1, n_seed, v.size)).copy() for k, v in run.items()}


class _Scales:
    rate, k_star = 1.0, 0.25


def test_descent_time_is_eq42_and_agrees_with_clw_milestones():
    """On the logistic K of Eq. (20), Eq. (42) gives T_d = ½ log((1 − β)/(βC)); `descent_time`
    finds it from t = 0 and equals `clw_milestones`' crossing after T_p; NaN if K never gets
    there."""
    ts = np.concatenate([[0.0], np.geomspace(1e-3, 100.0, 3000)])
    run = _logistic_run(ts)
    beta = 0.05
    expected = 0.5 * math.log((1 - beta) / (beta * 1e-4))
    t_d = descent_time(ts, run["K"], 0.25, beta)
    assert t_d == pytest.approx(expected, abs=2e-3)
    stages = sj.clw_milestones(ts, run["loss"], K=run["K"], k_star=0.25, beta=beta)
    assert stages.T_d == pytest.approx(t_d, rel=1e-12)
    assert math.isnan(descent_time(ts, 0.5 * run["K"], 0.25, beta))


def test_stage_rows_and_checks_on_a_constructed_run():
    """The three stages of the constructed run are found in order, every check of Fig. 1
    passes on it, and a run whose loss keeps falling on the "secondary plateau" as fast as in
    the descent, or whose W₂ does not fall, fails exactly the checks that say so."""
    ts = np.concatenate([[0.0], np.geomspace(1e-3, 100.0, 3000)])
    # T_d = ½ log(19·10⁴) ≈ 6.08 here, Theorem 2's ½ log m = 5.76 for m = 10⁵.
    config = StagesConfig(width=10**5)
    predicted = sj.clw_predicted_times(config.width, config.alpha)
    rows = _stage_rows(config, _stacked(_logistic_run(ts)), _Scales(), predicted)
    r = rows[0]
    assert r["T_p"] < r["T_d"] < r["T_sp"] < 100.0
    level = 1.0 - 0.25 / 2
    checks = _stage_claims(config, rows, level)
    assert all(c.passed for c in checks), ex.checks_table(checks)

    flat = _logistic_run(ts)
    flat["wasserstein"] = np.full_like(ts, 0.05)
    failed = [
        c.quantity
        for c in _stage_claims(
            config, _stage_rows(config, _stacked(flat), _Scales(), predicted), level
        )
        if not c.passed
    ]
    assert len(failed) == 1 and "W_2" in failed[0], failed


def test_target_checks_can_fail():
    """Fig. 3's checks pass on the constructed run (merge, ratio 1 at the merge, drift apart
    afterwards) and fail when the norms never drift apart."""
    ts = np.concatenate([[0.0], np.geomspace(1e-3, 100.0, 3000)])
    config = TargetsConfig(targets=("tanh",))
    rows = _target_rows(config, "tanh", _stacked(_logistic_run(ts)), _Scales())
    checks = _target_claims(config, rows)
    assert all(c.passed for c in checks), ex.checks_table(checks)
    stuck = _logistic_run(ts)
    stuck["norm_a"] = np.ones_like(ts)
    rows = _target_rows(config, "tanh", _stacked(stuck), _Scales())
    failed = [c.quantity for c in _target_claims(config, rows) if not c.passed]
    assert len(failed) == 1 and "|‖a‖/‖w‖ − 1|" in failed[0], failed


def test_descent_claims_can_fail():
    """Theorem 2's slopes pass when measured as predicted and fail when T_d grows like
    Theorem 1's T_p ((2α − 1)/4·log m: half the slope)."""
    config = DescentTimeConfig()
    values = {
        "alpha_slope": math.log(config.alpha_width), "alpha_slope_predicted":
        math.log(config.alpha_width), "log_width_slope": 0.55,
        "log_width_slope_predicted": 0.5, "offsets_alpha": [1.0], "offsets_width": [0.9],
    }
    assert all(c.passed for c in _descent_claims(config, values))
    values.update(alpha_slope=values["alpha_slope"] / 2, log_width_slope=0.25)
    assert [c.passed for c in _descent_claims(config, values)] == [False, False, True]
