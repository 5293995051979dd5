"""The regime experiments of Jacot et al. (Figs. 2, 3, 5, 6; SPEC §1, §8, §11): their configs
validate every field, the presets load in both modes, the theory's time scales and the
measurements on ‖∇L‖ and rank curves behave as documented. The runs themselves are checked by
`notebooks/jacot_training_regimes.ipynb` (tests/test_notebooks.py)."""

import math

import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax.experiments import configure
from saddlejax.experiments._jacot_regimes import (
    CompletionGammaConfig,
    NoisyTeacherConfig,
    RegimesConfig,
    _completion_errors,
    _incremental,
    drop_time_exponent,
    grad_dips,
    grad_rebound,
    peak_width,
    regime,
    time_scale,
)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: RegimesConfig(gammas=(0.5, 1.0)), "gammas"),
        (lambda: RegimesConfig(widths=(10, 10)), "widths"),
        (lambda: RegimesConfig(widths=(1, 10)), "widths"),
        (lambda: RegimesConfig(depth=2), "depth"),
        (lambda: RegimesConfig(seeds=(0, 0)), "seeds"),
        (lambda: RegimesConfig(solver="euler-maruyama"), "solver"),
        (lambda: RegimesConfig(t1_factor=-1.0), "t1_factor"),
        (lambda: RegimesConfig(distance_widths=(10, 10**5)), "distance_widths"),
        (lambda: RegimesConfig(widths=(1000,), gammas=(60.0,)), "widths"),
        (lambda: CompletionGammaConfig(observed=1.5), "observed"),
        (lambda: CompletionGammaConfig(rank=31), "rank"),
        (lambda: CompletionGammaConfig(gammas=()), "gammas"),
        (lambda: CompletionGammaConfig(rtol=1e-16), "rtol"),
        (lambda: NoisyTeacherConfig(widths=(50,)), "depths"),
        (lambda: NoisyTeacherConfig(gammas=(0.5, 2.0)), "gammas"),
        (lambda: NoisyTeacherConfig(depths=(2, 2)), "depths"),
        (lambda: NoisyTeacherConfig(rank=10), "rank"),
        (lambda: NoisyTeacherConfig(n_train=5), "n_train"),
        (lambda: NoisyTeacherConfig(rank_tol=0.0), "rank_tol"),
    ],
)
def test_config_errors_name_the_field(make, field):
    """A bad value raises a one-line ValueError naming the field in backquotes."""
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert f"`{field}`" in message and "\n" not in message


@pytest.mark.parametrize("name", ["jacot-fig2", "jacot-fig3", "jacot-fig6"])
def test_presets_load_and_quick_is_smaller(name):
    """Each preset validates in full and quick mode, and the quick mode runs fewer or smaller
    flows (the CI budget) with the same experiment."""
    (full,), (quick,) = configure(name), configure(name, quick=True)
    assert full.experiment is quick.experiment
    assert len(quick.config.seeds) <= len(full.config.seeds)
    assert max(quick.config.widths) <= max(full.config.widths)


def test_regime_presets_follow_the_paper():
    """The full modes use the paper's settings where a CPU allows (SPEC §11): L = 4 and 10
    seeds (Fig. 2), 30×30 rank 1 with 20 % observed and 7 seeds (Fig. 3), L = 2 with w = 50 and
    σ = w^−2, L = 4 with w = 100 and σ = w^−1, horizons 100 and 1500 (Fig. 6)."""
    fig2 = configure("jacot-fig2")[0].config
    assert fig2.depth == 4 and len(fig2.seeds) == 10 and fig2.widths[:2] == (10, 100)
    assert [regime(g) for g in fig2.gammas] == ["NTK", "mean-field", "saddle-to-saddle"]
    fig3 = configure("jacot-fig3")[0].config
    assert (fig3.n, fig3.rank, fig3.observed, len(fig3.seeds)) == (30, 1, 0.2, 7)
    fig6 = configure("jacot-fig6")[0].config
    assert fig6.networks() == [(2, 50, 4.0, 100.0), (4, 100, 2.0, 1500.0)]
    assert fig6.rank_tol == 1e-4


def test_time_scale_matches_the_escape_exponents():
    """time_scale is 1 at γ = 1, grows like w^((γ−1)(L−2)/2) for L > 2 (the exponent
    `drop_time_exponent` gives for γ ≥ 1) and like log w for L = 2."""
    for depth in (3, 4, 6):
        for gamma in (1.0, 1.5, 2.0, 3.0):
            ratio = time_scale(gamma, 1000, depth) / time_scale(gamma, 10, depth)
            assert math.log10(ratio) / 2 == pytest.approx(drop_time_exponent(gamma, depth))
        assert time_scale(1.0, 123, depth) == pytest.approx(1.0)
    assert time_scale(4.0, 50, 2) == pytest.approx(1 + 3 * math.log(50))
    assert time_scale(0.5, 50, 2) == 1.0
    assert drop_time_exponent(0.75, 4) == pytest.approx(-0.75)


def test_grad_dips_and_rebound():
    """A monotone decrease has no dip and no rebound; a dip by 100× and back counts once with
    a rebound of ≈ 99; a dip by 3× is below the 10× prominence; wiggles below 10⁻⁶ of the
    largest value (round-off near a minimum) are ignored."""
    t = np.geomspace(1e-3, 1e3, 400)
    monotone = 1.0 / (1.0 + t)
    assert grad_dips(monotone) == 0 and grad_rebound(monotone) == 0.0
    dip = np.exp(-np.log(100.0) * np.exp(-np.log(t) ** 2))  # 1 → 0.01 at t = 1 → 1
    assert grad_dips(dip) == 1
    assert grad_rebound(dip) == pytest.approx(99.0, rel=0.02)  # the grid misses t = 1
    shallow = np.exp(-np.log(3.0) * np.exp(-np.log(t) ** 2))
    assert grad_dips(shallow) == 0
    noisy_tail = np.concatenate([monotone, 1e-9 * (1.5 + np.sin(np.arange(50)))])
    assert grad_dips(noisy_tail) == 0 and grad_rebound(noisy_tail) == 0.0


def test_peak_width_of_a_known_bump():
    """The FWHM in decades of a bump exp(−(log10 t − 1)²/(2s²)) is 2√(2 ln 2)·s."""
    t = np.concatenate([[0.0], np.geomspace(1e-3, 1e5, 4001)])
    s = 0.3
    bump = 1e-3 + np.exp(-((np.log10(np.maximum(t, 1e-300)) - 1) ** 2) / (2 * s**2))
    assert peak_width(t, bump) == pytest.approx(2 * math.sqrt(2 * math.log(2)) * s, abs=0.01)
    assert math.isnan(peak_width(t, 1.0 / (1.0 + t)))  # no interior peak


def test_incremental_ranks():
    """One direction per saddle: a rank sequence is incremental when it never decreases and
    grows by at most one between save points."""
    ranks = np.array([[0, 0, 1, 2, 2, 3], [0, 1, 3, 3, 3, 3], [0, 1, 2, 1, 2, 3]])
    assert _incremental(ranks).tolist() == [True, False, False]


def test_completion_errors_are_relative_to_the_zero_predictor():
    """The test error of Fig. 3 is 1 for the zero matrix, 0 for A*, and ignores the observed
    entries."""
    problem = sj.matrix_completion_problem(jr.key(3), 8, 1, 0.3)
    target, mask = np.asarray(problem.target), np.asarray(problem.mask)
    assert _completion_errors(problem, np.zeros((8, 8))) == pytest.approx(1.0)
    assert _completion_errors(problem, target) == pytest.approx(0.0)
    assert _completion_errors(problem, target + 5.0 * mask) == pytest.approx(0.0)
    stacked = np.stack([np.zeros((8, 8)), target])
    assert _completion_errors(problem, stacked) == pytest.approx([1.0, 0.0])
