"""The Kumar–Haupt experiment's own logic (preset `kumar-haupt-fig1`; the preset itself runs in
`notebooks/kumar_haupt_directional_convergence.ipynb`): config validation, the preset's
settings inside the theorem's regime, the displaced objective near the saddle, and the summary
and checks on constructed trajectories."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
import saddlejax.experiments as ex
from saddlejax.experiments._kumar_haupt import (
    KumarHauptConfig,
    _claims,
    _Displaced,
    _Draw,
    _regime_values,
    _with_weights,
)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("init_stds", (1e-4,), "at least two"),
        ("init_stds", (1e-4, 2.0), "`init_stds`"),
        ("saddle_stds", (1e-8, 1e-8), "twice"),
        ("saddle_atol", 1e-9, "`saddle_atol`"),
        ("horizon", -1.0, "`horizon`"),
        ("width", 0, "`width`"),
        ("seeds", (1, 1), "`seeds`"),
        ("solver", "euler", "`solver`"),
        ("rtol", 1e-16, "`rtol`"),
        ("n_save", 2, "`n_save`"),
        ("min_relative_norm", 1.0, "`min_relative_norm`"),
    ],
)
def test_bad_settings_name_the_field(field, value, words):
    """Every field is validated in `__post_init__` with a one-line message naming it."""
    with pytest.raises(ValueError, match=words) as info:
        KumarHauptConfig(**{field: value})
    assert "\n" not in str(info.value)


def test_stds_are_sorted_and_the_preset_is_in_the_theorem_regime():
    """The scales are sorted from large to small (the checks use the last two), and in both
    modes of the preset the smallest δ leaves the weights small at the horizon: the largest
    neuron norm is at most δ·max|θ̃_j|·e^{λT} ≲ δ·4·e^{horizon} ≤ 1e−2 (the loss's terms beyond
    the NCF are then O(1e−4) relative), near the origin and near the saddle."""
    config = KumarHauptConfig(init_stds=(1e-18, 1e-4, 1e-12), saddle_stds=(1e-10, 1e-8))
    assert config.init_stds == (1e-4, 1e-12, 1e-18)
    assert config.saddle_stds == (1e-8, 1e-10)
    for quick in (False, True):
        (job,) = ex.configure("kumar-haupt-fig1", quick=quick)
        c = job.config
        assert c.init_stds[-1] * 4 * math.exp(c.horizon) <= 1e-2
        assert c.saddle_stds[-1] * 4 * math.exp(c.saddle_horizon) <= 1e-2
        assert c.saddle_atol <= 1e-2 * c.saddle_stds[-1]


def test_displaced_objective_is_the_loss_at_the_saddle_plus_delta(getkey):
    """L_s(δ) = L(θ_s + δ) and ∇L_s(δ) = ∇L(θ_s + δ); at δ = 0 the zero neurons of a
    squared-ReLU saddle have exactly zero gradient (max(0, ·)² has zero derivative at 0)."""
    problem = sj.squared_relu_toy_problem(jr.key(0))
    w = jnp.zeros((4, 2)).at[0].set(jnp.array([2.0, 1.0]))
    saddle = _with_weights(w)
    delta = _Draw(4)(getkey())
    shifted = _Displaced(problem, saddle)
    moved = _with_weights(saddle.w + delta.w)
    assert float(shifted(delta)) == pytest.approx(float(problem(moved)), rel=1e-14)
    g_shift = jax.grad(shifted)(delta).w
    g_full = jax.grad(problem)(moved).w
    np.testing.assert_allclose(g_shift, g_full, rtol=1e-13)
    at_saddle = jax.grad(shifted)(jax.tree_util.tree_map(jnp.zeros_like, delta)).w
    assert np.all(np.asarray(at_saddle[1:]) == 0.0)


def _data(stds, n_seed=3, n_time=5, distance_final=1e-3):
    """Trajectories of the scale-free regime: loss change ∝ δ², norm ∝ δ, directions and KKT
    distances independent of δ."""
    stds = np.asarray(stds)
    t = np.linspace(0, 1, n_time)
    change = stds[:, None, None] ** 2 * np.ones((1, n_seed, 1)) * t
    loss = 10.0 * (1 - change)
    norm = stds[:, None, None] * np.exp(5 * t) * np.ones((1, n_seed, 1))
    dist = np.broadcast_to(np.geomspace(1.0, distance_final, n_time), norm.shape).copy()
    angles = np.linspace(0, 1, 4)
    u = np.stack([np.cos(angles), np.sin(angles)], -1)
    directions = np.broadcast_to(u, (*norm.shape, 4, 2)).copy()
    return {"loss": loss, "norm": norm, "max_distance": dist, "directions": directions}


def test_regime_values_and_checks_on_constructed_trajectories():
    """On trajectories with ΔL ∝ δ², δ-independent directions and a final KKT distance of 1e−3
    the summary reads slope 2, direction change 0 and norm growth e^5, and every check passes;
    with a final distance of 0.1, or directions that depend on δ, the corresponding checks
    fail (the checks can fail)."""
    config = KumarHauptConfig()
    stds = (1e-2, 1e-3, 1e-4)  # (ΔL/L = δ² must stay above float64's resolution here)
    origin = _regime_values(stds, _data(stds), 5.5)
    assert origin["loss_change_slope"] == pytest.approx(2.0, rel=1e-6)
    assert origin["direction_change"] == 0.0
    assert origin["rows"][-1]["norm_growth"] == pytest.approx(math.exp(5.0))
    assert origin["rows"][-1]["loss_change"] == pytest.approx(stds[-1] ** 2)
    saddle = _regime_values(stds, _data(stds), 5.5)
    values = {"origin": origin, "saddle": saddle, "saddle_grad_norm": 1e-14}
    checks = _claims(config, values)
    assert all(c.passed for c in checks), ex.checks_table(checks)

    far = _data(stds, distance_final=0.1)
    bent = _data(stds)
    bent["directions"][-1] = bent["directions"][-1][..., ::-1]
    for data, words in ((far, "KKT distance of a counted neuron"), (bent, "change of a direction")):
        values["origin"] = _regime_values(stds, data, 5.5)
        failed = [c.quantity for c in _claims(config, values) if not c.passed]
        assert len(failed) == 1 and words in failed[0], failed
