"""Paths on SPEC §7 grids and the closed-form escape paths of H (SPEC §5; Jacot et al. App. C.1)."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj


def _dln(depth):
    problem = sj.matrix_completion_problem(jr.key(0), n=4, rank=2, observed=0.75)
    g = sj.matrix_cost_gradient_at_zero(problem)
    widths = (4,) + (3,) * (depth - 1) + (4,)
    return g, widths


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_closed_form_escape_path_is_a_flow_path_of_h(depth):
    """ρe^{st} (L = 2) and ρ((L−2)s(T−t))^{−1/(L−2)} (L > 2) along the closed-form DLN escape
    direction solve ẋ = −∇H(x); the same path at a 10 % wrong speed does not."""
    g, widths = _dln(depth)
    rho = sj.dln_escape_direction(g, widths)
    h = sj.dln_taylor_term(g)
    s = float(rho.speed)
    ts = sj.escape_times(s, depth, radii=(1e-4, 0.5), n=801)
    good = sj.escape_path(rho.weights, s, depth, ts)
    bad = sj.escape_path(rho.weights, 1.1 * s, depth, ts)
    # Second-order finite differences on 801 points: measured 4e-5 (L=2) to 6e-4 (L=4); a 10 %
    # speed error gives a relative residual of 0.1 (ẋ = −1.1∇H(x) along the ray).
    assert float(sj.ode_residual(h, good)) < 2e-3
    assert float(sj.ode_residual(h, bad)) > 0.05


@pytest.mark.parametrize("order", [2, 3, 4])
def test_grid_steps_multiply_the_norm_by_a_constant_factor(order):
    """`escape_times` is uniform in t (k = 2) or geometric in T − t (k > 2), ends where the
    closed-form path has norms r_min and r_max, and every step multiplies ‖x‖ by one factor."""
    s, horizon = 0.7, 2.0
    ts = sj.escape_times(s, order, radii=(1e-3, 0.4), n=101, horizon=horizon)
    d = np.asarray(sj.escape_scale(s, order, ts, horizon=horizon))
    np.testing.assert_allclose([d[0], d[-1]], [1e-3, 0.4], rtol=1e-12)
    ratios = d[1:] / d[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-10)
    if order == 2:
        np.testing.assert_allclose(np.diff(ts), np.diff(ts)[0], rtol=1e-9)
    else:
        gaps = horizon - ts
        np.testing.assert_allclose(gaps[1:] / gaps[:-1], gaps[1] / gaps[0], rtol=1e-10)


def test_interpolation_is_exact_on_the_grid_and_linear_between():
    """`Path.evaluate` returns the stored value at grid times, the average at midpoints, and
    clamps outside the grid."""
    ts = jnp.linspace(0.0, 1.0, 6)
    xs = (jnp.stack([jnp.full((2, 2), t**2) for t in ts]),)
    p = sj.Path(ts, xs, order=2)
    np.testing.assert_allclose(p.evaluate(ts[3])[0], xs[0][3], rtol=0, atol=1e-15)
    mid = 0.5 * (ts[2] + ts[3])
    np.testing.assert_allclose(p.evaluate(mid)[0], 0.5 * (xs[0][2] + xs[0][3]), atol=1e-15)
    np.testing.assert_allclose(p.evaluate(5.0)[0], xs[0][-1], atol=1e-15)


def test_errors_name_the_argument():
    """Wrong inputs raise ValueError naming the argument: order < 2, a leaf without the time
    axis, a grid past the blow-up time, a non-unit direction, a non-positive speed."""
    ts = jnp.linspace(-2.0, -1.0, 5)
    with pytest.raises(ValueError, match="order"):
        sj.Path(ts, (jnp.zeros((5, 2)),), order=1)
    with pytest.raises(ValueError, match="leading time axis"):
        sj.Path(ts, (jnp.zeros((4, 2)),), order=2)
    with pytest.raises(ValueError, match="horizon"):
        sj.Path(ts, (jnp.zeros((5, 2)),), order=3, horizon=-1.5)
    with pytest.raises(ValueError, match="unit sphere"):
        sj.escape_path((jnp.ones(3),), 1.0, 2, ts)
    with pytest.raises(ValueError, match="speed"):
        sj.escape_path((jnp.ones(1),), -1.0, 2, ts)
