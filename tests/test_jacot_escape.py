"""The jacot-fig4 and jacot-escape experiments' own logic (Jacot et al. Fig. 4, Thm 2, Thm 5;
SPEC §7, §8): config validation, the escape-time law and the contraction bound. The presets'
quick modes run in tests/test_notebooks.py (notebooks/jacot_escape_paths.ipynb)."""

import dataclasses

import numpy as np
import pytest

import saddlejax as sj
from saddlejax.experiments import configure
from saddlejax.experiments._jacot_escape import (
    JacotEscapeConfig,
    JacotFig4Config,
    contraction_bound,
    loglog_slope,
    scaling_checks,
)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(alphas=(0.1, 0.01)), "alphas"),
        (dict(alphas=(0.1, 0.05, 1.5)), "alphas"),
        (dict(lazy_alpha=0.05), "lazy_alpha"),
        (dict(tau_min=1.0), "tau_min"),
        (dict(tau_max=-1.0), "tau_max"),
        (dict(n_tau=2), "n_tau"),
        (dict(escape_radius=50.0), "escape_radius"),
        (dict(observed=1.5), "observed"),
        (dict(solver="rk4"), "solver"),
        (dict(distance_ratio_max=1.5), "distance_ratio_max"),
        (dict(seed=-1), "seed"),
    ],
)
def test_fig4_config_names_the_bad_field(change, field):
    """A bad value raises a one-line ValueError naming the field in backquotes, before any
    work (the fields shared with the main job through `MatrixCompletionConfig`)."""
    with pytest.raises(ValueError, match=f"`{field}`") as info:
        JacotFig4Config(**change)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(depths=(5,)), "depths"),
        (dict(depths=(2, 2)), "depths"),
        (dict(depths=()), "depths"),
        (dict(n_alphas=1), "n_alphas"),
        (dict(n=10), "n"),
        (dict(r_min=1e-9), "r_min"),
        (dict(fig1_depths=(1,)), "fig1_depths"),
        (dict(restarts=0), "restarts"),
        (dict(rate_rtol=-1.0), "rate_rtol"),
    ],
)
def test_escape_config_names_the_bad_field(change, field):
    """The escape-path fields are validated by `EscapePathConfig` per depth (same names)."""
    with pytest.raises(ValueError, match=f"`{field}`"):
        JacotEscapeConfig(**change)


def test_presets_resolve_and_quick_is_smaller():
    """Both presets load, validate, and their quick modes are smaller than the full ones."""
    full, quick = configure("jacot-fig4")[0].config, configure("jacot-fig4", quick=True)[0].config
    assert isinstance(full, JacotFig4Config) and full.width == 100 and quick.width < full.width
    assert full.alphas == tuple(sorted(full.alphas, reverse=True))
    full = configure("jacot-escape")[0].config
    quick = configure("jacot-escape", quick=True)[0].config
    assert full.depths == (2, 3, 4) and len(quick.depths) < len(full.depths)
    assert quick.fig1_depths == ()
    # each depth's escape-path config is the preset with the overrides
    pc = quick.path_config(quick.depths[0])
    assert (pc.n, pc.r_min) == (quick.n, quick.r_min) and len(pc.alphas) == quick.n_alphas
    assert dataclasses.replace(quick, n_alphas=0).path_config(3).alphas == ()


def test_contraction_bound_matches_the_theorem():
    """Lemma 24/26 with the default exponents at s = s*: s*/(0.9·3s*) = 0.370 (L = 2),
    2/3.6 = 0.556 (L = 3), 3/(2.25·2) = 0.667 (L = 4), independent of s*."""
    for depth, expected in ((2, 1 / 2.7), (3, 2 / 3.6), (4, 3 / 4.5)):
        s = 0.37
        exponent = float(sj.default_exponent(depth, 2 * depth, s))
        assert contraction_bound(depth, s, s, exponent) == pytest.approx(expected, rel=1e-12)
    # a slower path (s < s*) contracts worse: the bound grows like s*/s for k > 2
    assert contraction_bound(3, 0.5, 1.0, 3.6) == pytest.approx(2 * contraction_bound(3, 1, 1, 3.6))


def _times(alphas, depth, theory, b, c=0.0):
    a = np.asarray(alphas)
    if depth == 2:
        return theory * np.log(1 / a) + b + c * a
    p = depth - 2
    return theory / a**p + b + c * a**p


@pytest.mark.parametrize("depth", [3, 4])
def test_escape_law_passes_on_the_law_and_fails_off_it(depth):
    """t_α = T/α^{L−2} + b + c·α^{L−2} passes every check against T; the same times against
    T·1.01 fail the extrapolation; t_α ∝ α^{−(L−1)} fails the slope; and the log-log slope
    between the two smallest α is −(L − 2) up to the O(α^{L−2}) correction."""
    alphas = (0.1, 0.03, 0.01)
    t = _times(alphas, depth, 2.0, 3.0, 5.0)
    checks, fit = scaling_checks("", alphas, t, depth, 2.0, 1e-3, 0.03)
    assert len(checks) == 3 and all(c.passed for c in checks), checks
    assert float(fit.coefficients[0]) == pytest.approx(2.0, rel=1e-3)
    assert loglog_slope(alphas, t) == pytest.approx(-(depth - 2), rel=0.03)
    bad, _ = scaling_checks("", alphas, t, depth, 2.02, 1e-3, 0.03)
    assert not bad[0].passed
    steep = 2.0 / np.asarray(alphas) ** (depth - 1)
    bad, _ = scaling_checks("", alphas, steep, depth, 2.0, 1e-3, 0.03)
    assert not bad[1].passed


def test_escape_law_depth_two():
    """L = 2: the slope of t_α against log(1/α) is the coefficient, checked against 1/s*."""
    alphas = (1e-2, 1e-3, 1e-4)
    t = _times(alphas, 2, 1.25, 0.7, 3.0)
    checks, _ = scaling_checks("", alphas, t, 2, 1.25, 1e-3, 0.03)
    assert len(checks) == 1 and checks[0].passed
    checks, _ = scaling_checks("", alphas, t, 2, 1.0, 1e-3, 0.03)
    assert not checks[0].passed
