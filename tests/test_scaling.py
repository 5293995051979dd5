"""Escape-time scaling across α and limiting paths (SPEC §4 Lemma 13, §5, §8; Jacot et al. Thm 2).

- `blowup_time`: T_H(θ̃) of a k > 2 H-flow, against the closed form on escape directions, Lemma
  13's rescaling, and an independent scipy DOP853 integration of θ in t.
- `escape_time_scaling`: synthetic escape times from the exact laws (parameters recovered), and
  real flows of small DLNs on matrix completion: the L = 2 slope against 1/s*, the L = 3 limit
  of α·t_α against `blowup_time`.
- `limiting_paths`: θ_α(t_α + τ) converges as α → 0, modulo rotations.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
from jax.flatten_util import ravel_pytree

import saddlejax as sj
from saddlejax.analysis import (
    escape_time_scaling,
    limiting_paths,
    procrustes_rotations,
    rotate_hidden,
)
from saddlejax.models import dln_escape_direction, dln_optimal_speed, dln_taylor_term
from saddlejax.problems import matrix_cost_gradient_at_zero
from saddlejax.theory import blowup_time

RADIUS = 1.0  # the escape radius r of t_α(r)


@pytest.fixture(scope="module")
def problem():
    return sj.matrix_completion_problem(jr.key(0), n=4, rank=2)


@pytest.fixture(scope="module")
def gradient(problem):
    return matrix_cost_gradient_at_zero(problem)


def _widths(depth):
    return (4,) + (8,) * (depth - 1) + (4,)


def _draw(depth):
    widths = _widths(depth)
    return lambda key: sj.nn.DeepLinear(widths, key=key)


# ---------------------------------------------------------------------------------------------
# blowup_time


@pytest.mark.parametrize("depth, index", [(3, 0), (3, 1), (4, 0)])
def test_blowup_time_on_an_escape_direction_is_the_closed_form(gradient, depth, index):
    """θ̃ = rρ with ρ an escape direction of speed s > 0 (SPEC §5): the flow is the escape path
    ρ((k−2)s(T − t))^{−1/(k−2)}, so T = r^{−(k−2)}/((k−2)s). For the optimal direction to 1e−10.
    A slower direction is an unstable critical point of the flow on the sphere: rounding errors
    grow like e^{(s*−s)σ} and take ŵ to ρ* once u = ‖θ‖^{−(k−2)} has decayed ~10⁷-fold, so
    there T is exact only to ~1e−7 (measured 2.2e−7), for any integrator."""
    rho = dln_escape_direction(gradient, _widths(depth), index=index, sign=-1)
    r = 0.7
    out = blowup_time(dln_taylor_term(gradient), tuple(r * w for w in rho.weights))
    k = depth
    expected = r ** (-(k - 2)) / ((k - 2) * float(rho.speed))
    rel = 1e-10 if index == 0 else 1e-6
    assert float(out.time) == pytest.approx(expected, rel=rel)
    assert out.result == sj.RESULTS.successful
    if index == 0:
        assert float(out.speed) == pytest.approx(float(rho.speed), rel=1e-10)


def test_blowup_time_obeys_lemma13_and_matches_an_independent_integration(gradient, getkey):
    """For a random draw θ̃ (L = 3): T_H(λθ̃) = λ^{−(k−2)}T_H(θ̃) (Lemma 13), the flow ends
    aligned with the optimal direction (speed s*), and T agrees with scipy's DOP853 on
    dθ/dt = −∇H(θ) up to ‖θ‖ = R = 10³ plus the escape-path remainder R^{−(k−2)}/((k−2)s*)
    (that remainder's own error, from the direction's misalignment at R, is ≪ 1e−7·T)."""
    H = dln_taylor_term(gradient)
    theta = sj.nn.DeepLinear(_widths(3), key=getkey()).weights
    out = blowup_time(H, theta)
    s_star = float(dln_optimal_speed(gradient, 3))
    assert float(out.speed) == pytest.approx(s_star, rel=1e-8)
    lam = 0.3
    scaled = blowup_time(H, tuple(lam * w for w in theta), order=3)
    assert float(scaled.time) == pytest.approx(float(out.time) / lam, rel=1e-9)

    flat, unravel = ravel_pytree(theta)
    grad = jax.jit(lambda x: jax.grad(lambda y: H(unravel(y)))(x))
    radius = 1e3

    def reached(t, x):
        return np.linalg.norm(x) - radius

    reached.terminal = True
    ref = scipy.integrate.solve_ivp(
        lambda t, x: -np.asarray(grad(jnp.asarray(x))),
        (0.0, 10.0 * float(out.time)),
        np.asarray(flat),
        method="DOP853",
        rtol=1e-12,
        atol=1e-14,
        events=reached,
    )
    t_ref = ref.t_events[0][0] + 1.0 / (radius * s_star)
    assert float(out.time) == pytest.approx(t_ref, rel=1e-7)


def test_blowup_time_reports_flows_that_do_not_blow_up(gradient):
    """H = ‖θ‖⁴ shrinks every θ to 0 and a critical θ̃ (∇H(θ̃) = 0) stays put: both are
    `RESULTS.no_blowup` with T = inf, and an error with `throw=True`; k = 2 and H(θ̃) = 0
    without `order` are refused up front."""
    theta = jnp.arange(1.0, 4.0)
    out = blowup_time(lambda th: jnp.sum(th**2) ** 2, theta, throw=False)
    assert out.result == sj.RESULTS.no_blowup
    assert not np.isfinite(float(out.time))
    with pytest.raises(RuntimeError, match="did not blow up"):
        blowup_time(lambda th: jnp.sum(th**2) ** 2, theta)

    w1 = jnp.ones((8, 4))
    critical = (w1, jnp.zeros((8, 8)), jnp.zeros((4, 8)))  # H = 0 and ∇H = 0 there
    H = dln_taylor_term(gradient)
    out = blowup_time(H, critical, order=3, throw=False, max_time=100.0)
    assert out.result == sj.RESULTS.no_blowup
    with pytest.raises(ValueError, match="order"):
        blowup_time(H, critical)
    with pytest.raises(ValueError, match="k > 2"):
        blowup_time(lambda th: jnp.sum(th**2), jnp.ones(3))


# ---------------------------------------------------------------------------------------------
# escape_time_scaling on synthetic times


def test_log_law_recovered_from_synthetic_times():
    """t_α = a·log(1/α) + b + c·α^{0.7} (a correction of the L = 2 kind, α^{1 − s₂/s*}) for four
    seeds of different b: the slope is a to within the correction's size, exactly a without it,
    and a seed whose event never fired is left out of the summary."""
    a, c = 0.8, 0.3
    alphas = np.array([1e-2, 1e-3, 1e-4, 1e-5])
    b = np.array([0.1, 0.5, -0.2, 0.3])
    exact = a * np.log(1 / alphas)[:, None] + b[None]
    fit = escape_time_scaling(alphas, exact, order=2, theory=a)
    np.testing.assert_allclose(fit.coefficients, a, rtol=1e-12)
    np.testing.assert_allclose(fit.intercepts, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit.relative_errors, 0.0, atol=1e-12)
    assert fit.std < 1e-12

    noisy = exact + c * alphas[:, None] ** 0.7
    noisy[0, 3] = np.inf  # seed 3 at α = 1e−2 never escaped
    fit = escape_time_scaling(alphas[::-1], noisy[::-1], order=2, theory=a)  # order-free
    np.testing.assert_array_equal(fit.valid, [True, True, True, False])
    assert np.isnan(fit.coefficients[3])
    assert abs(fit.mean - a) < c * 1e-2**0.7 / np.log(10)
    assert fit.coefficient_errors[0] > 0


@pytest.mark.parametrize("order, q", [(3, 1.0), (4, 2.0), (3, 0.5)])
def test_power_law_limit_and_correction_order_recovered(order, q):
    """α^{k−2}t_α = T + c·α^q: the fitted correction exponent is q (three points fix it
    exactly), and for q = k − 2 (Lemma 13's order) the two-parameter fit returns T exactly."""
    alphas = np.array([1e-1, 1e-2, 1e-3])
    T, c = np.array([1.3, 0.9]), np.array([-2.0, 5.0])
    scaled = T[None] + c[None] * alphas[:, None] ** q
    times = scaled / alphas[:, None] ** (order - 2)
    fit = escape_time_scaling(alphas, times, order=order, theory=T)
    np.testing.assert_allclose(fit.correction_exponents, q, rtol=1e-8)
    np.testing.assert_allclose(fit.scaled_times, scaled, rtol=1e-12)
    if q == order - 2:
        np.testing.assert_allclose(fit.coefficients, T, rtol=1e-12)
        np.testing.assert_allclose(fit.intercepts, c, rtol=1e-9)
        np.testing.assert_allclose(fit.coefficient_errors, 0.0, atol=1e-10)
    else:  # the wrong correction order leaves a bias of the size of the correction
        assert np.all(np.abs(fit.coefficients - T) < np.abs(c) * 1e-3**q * 10)
        assert np.all(np.abs(fit.coefficients - T) > 0)


def test_escape_time_scaling_rejects_bad_input():
    """Wrong shapes, k < 2, α ≥ 1 for the log law, a bad `n_fit` or `theory`: ValueErrors
    naming the argument."""
    alphas, times = np.array([1e-2, 1e-3]), np.ones((2, 3))
    with pytest.raises(ValueError, match="`order`"):
        escape_time_scaling(alphas, times, order=1)
    with pytest.raises(ValueError, match="`event_times`"):
        escape_time_scaling(alphas, np.ones((3, 3)), order=3)
    with pytest.raises(ValueError, match="α < 1"):
        escape_time_scaling([1.0, 0.1], times, order=2)
    with pytest.raises(ValueError, match="`n_fit`"):
        escape_time_scaling(alphas, times, order=3, n_fit=3)
    with pytest.raises(ValueError, match="`theory`"):
        escape_time_scaling(alphas, times, order=3, theory=[1.0, 2.0])
    with pytest.raises(ValueError, match="distinct"):
        escape_time_scaling([0.1, 0.1], times, order=3)


# ---------------------------------------------------------------------------------------------
# real flows


@pytest.fixture(scope="module")
def shallow_sweep(problem, gradient):
    """L = 2, widths (4, 8, 4): α ∈ {1e−1, …, 1e−4} × 3 seeds, stopped at the escape radius r = 1,
    saved densely up to there (one sweep for the slope and the limiting paths: compilation
    dominates their cost; `stop_at_event=False`, to look past the escape, would integrate on to
    t1 for nothing)."""
    s = float(dln_optimal_speed(gradient, 2))
    return sj.sweep(
        problem,
        _draw(2),
        lambda a: (np.log(1 / a) + 2.0) / s,  # t_α ≈ (log(1/α) + 0.6)/s* here
        alphas=[1e-1, 1e-2, 1e-3, 1e-4],
        seeds=[0, 1, 2],
        event=sj.EscapeRadius(RADIUS),
        n_save=1024,
        rtol=1e-9,
        solver=diffrax.Tsit5(),
        progress=False,
        throw=True,
    )


def test_shallow_escape_time_slope_is_one_over_the_optimal_speed(shallow_sweep, gradient):
    """L = 2 (SPEC §8): t_α = (1/s*) log(1/α) + O(1) with s* = σ_1(G). Fitted over
    α ∈ {1e−2, 1e−3, 1e−4} per seed, the slope is 1/s* to 3e−4 (measured); with α = 0.1 added
    the o(1) remainder biases it by ≈ 0.7 %."""
    inv_speed = 1.0 / float(dln_optimal_speed(gradient, 2))
    times = shallow_sweep.solution.event_time
    fit = escape_time_scaling(shallow_sweep.alphas, times, order=2, theory=inv_speed, n_fit=3)
    assert np.all(fit.valid)
    assert abs(fit.mean / inv_speed - 1) < 2e-3
    assert np.all(np.abs(fit.relative_errors) < 2e-3)
    with_large = escape_time_scaling(shallow_sweep.alphas, times, order=2, theory=inv_speed)
    assert np.all(np.abs(with_large.relative_errors) > np.abs(fit.relative_errors))


def test_deep_scaled_escape_time_tends_to_the_blowup_time(problem, gradient):
    """L = 3 (SPEC §8, Lemma 13): α·t_α(r) → T_H(θ̃) with an O(α) correction. From flows of L at
    α ∈ {1e−2, 1e−3, 1e−4}: the fitted correction exponent is 1 = k − 2, the extrapolated limit
    matches `blowup_time` of each seed's θ̃ to 1e−5 (measured 4e−7; α·t_α at α = 1e−4 is
    1.6e−4 off)."""
    depth, seeds = 3, [0, 1]
    s = float(dln_optimal_speed(gradient, depth))
    res = sj.sweep(
        problem,
        _draw(depth),
        lambda a: 10.0 / (a * s),
        alphas=[1e-2, 1e-3, 1e-4],
        seeds=seeds,
        event=sj.EscapeRadius(RADIUS),
        n_save=4,
        rtol=1e-9,
        solver=diffrax.Tsit5(),
        progress=False,
        throw=True,
    )
    H = dln_taylor_term(gradient)
    theory = [float(blowup_time(H, _draw(depth)(jr.key(seed)).weights).time) for seed in seeds]
    fit = escape_time_scaling(res.alphas, res.solution.event_time, order=depth, theory=theory)
    np.testing.assert_allclose(fit.correction_exponents, 1.0, atol=0.05)
    assert np.all(np.abs(fit.relative_errors) < 1e-5)
    raw = fit.scaled_times[-1] / np.asarray(theory) - 1  # α·t_α at α = 1e−4
    assert np.all(np.abs(fit.relative_errors) < np.abs(raw))


# ---------------------------------------------------------------------------------------------
# limiting paths


TAUS = np.linspace(-1.5, -0.05, 59)  # the escape from ‖θ‖ ≈ r/6 to r (saves stop at t_α)


def test_limiting_paths_converge_as_alpha_decreases(shallow_sweep):
    """Thm 2: θ_α(t_α + τ) converges as α → 0. For every seed the distance between consecutive
    α on the escape (sup or RMS norm over τ, relative) shrinks by a factor > 2 per decade of α
    (measured ≈ 6, cf. the rate α^{1 − s₂/s*} ≈ α^{0.72} of the slower directions)."""
    for seed in range(3):
        for norm in ("sup", "rms"):
            paths = limiting_paths(shallow_sweep, TAUS, seed=seed, norm=norm)
            d = paths.distances
            assert d.shape == (3,)
            assert np.all(d[1:] < 0.5 * d[:-1]), d
            assert d[-1] < 0.03
            np.testing.assert_allclose(paths.reference_distances[-1], 0.0, atol=1e-14)
    np.testing.assert_allclose(
        paths.escape_times, np.sort(np.asarray(shallow_sweep.solution.event_time)[:, 2])
    )


def test_limiting_path_is_unique_up_to_rotation(shallow_sweep):
    """Thm 2: the limit is one path up to a rotation R of the hidden layers, whatever θ̃. The
    smallest-α paths of two seeds differ by O(1) as saved, by ≲ the α-convergence error after
    the Procrustes rotation."""
    a = limiting_paths(shallow_sweep, TAUS, seed=0).paths
    b = limiting_paths(shallow_sweep, TAUS, seed=1).paths
    a, b = tuple(w[-1] for w in a), tuple(w[-1] for w in b)
    size = float(jnp.max(jnp.sqrt(sum(jnp.sum(w**2, axis=(1, 2)) for w in b))))

    def gap(x):
        sq = sum(jnp.sum((u - v) ** 2, axis=(1, 2)) for u, v in zip(x, b))
        return float(jnp.max(jnp.sqrt(sq)))

    aligned = rotate_hidden(a, procrustes_rotations(a, b))
    assert gap(a) / size > 0.3
    assert gap(aligned) / size < 0.02


def test_limiting_paths_inputs_and_errors(shallow_sweep):
    """A list of FlowSolutions with `alphas` gives the sweep's answer; a window outside the
    saved range, matrices with `align=True`, or missing `alphas` are ValueErrors."""
    sol = shallow_sweep.solution
    alphas = shallow_sweep.alphas
    per_alpha = [jax.tree_util.tree_map(lambda x, i=i: x[i, 0], sol) for i in range(len(alphas))]
    from_list = limiting_paths(per_alpha[::-1], TAUS, alphas=alphas[::-1])
    from_sweep = limiting_paths(shallow_sweep, TAUS)
    np.testing.assert_allclose(from_list.distances, from_sweep.distances, rtol=1e-12)
    with pytest.raises(ValueError, match="cover"):
        limiting_paths(shallow_sweep, np.linspace(-1.0, 0.5, 11))  # saves stop at t_α
    with pytest.raises(ValueError, match="`alphas`"):
        limiting_paths(per_alpha, TAUS)
    matrices = [eqx.tree_at(lambda s: s.params, s, s.params.matrix()) for s in per_alpha]
    with pytest.raises(ValueError, match="align=False"):
        limiting_paths(matrices, TAUS, alphas=alphas)
    unaligned = limiting_paths(matrices, TAUS, alphas=alphas, align=False)
    assert np.all(np.diff(unaligned.distances) < 0)
