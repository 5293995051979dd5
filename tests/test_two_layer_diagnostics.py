"""Chen–Luo–Wang's diagnostics and stage times, and Kumar–Haupt's directional convergence
(SPEC §6, §10): closed forms on hand-made networks and synthetic loss curves, then one small
real run of each paper's setting."""

import itertools
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax
from saddlejax.analysis import (
    clw_diagnostics,
    clw_milestones,
    clw_predicted_times,
    clw_scales,
    directional_convergence,
    kkt_distance,
    neuron_directions,
    neuron_kkt_points,
    wasserstein_1d,
)
from saddlejax.nn import SquaredReLU, TwoLayer
from saddlejax.problems import SquareLoss, clw_problem, squared_relu_toy_problem
from saddlejax.theory import squared_relu_neuron


def _two_layer(a, w, activation="tanh"):
    """A `TwoLayer` holding the given arrays: a (out, m), w (m, d) (leading axes allowed)."""
    a, w = jnp.asarray(a, dtype=float), jnp.asarray(w, dtype=float)
    # The structure only (no draw to compile); the arrays are ours.
    net = eqx.filter_eval_shape(
        TwoLayer, w.shape[-1], w.shape[-2], a.shape[-2], activation, key=jr.key(0)
    )
    return eqx.tree_at(lambda n: (n.a, n.w), net, (a, w))


def _rng(getkey):
    """A NumPy generator seeded from the fixture's key (cheaper than compiling JAX draws for
    small hand-checked arrays)."""
    return np.random.default_rng(np.asarray(jr.key_data(getkey())))


def _zeroed(net):
    return eqx.tree_at(lambda n: n.w, net, jnp.zeros_like(net.w))


def _squared_relu(w):
    w = jnp.asarray(w, dtype=float)
    net = eqx.filter_eval_shape(SquaredReLU, w.shape[-1], w.shape[-2], key=jr.key(0))
    return eqx.tree_at(lambda n: n.w, net, w)


# ---------------------------------------------------------------------------------------------
# Chen–Luo–Wang: K, K′, q_max, relative W_2
# ---------------------------------------------------------------------------------------------


def test_clw_diagnostics_hand_made_network():
    """K = Σ a_k w_k¹, K′ = Σ (a_k² + (w_k¹)²), q_max = max(|a_k|, |w_k^i|) and the relative W_2
    of sorted |a| against sorted ‖w_k‖, worked out by hand for m = 3, d = 2."""
    a = [[1.0, -2.0, 3.0]]
    w = [[1.0, 0.0], [2.0, 1.0], [-1.0, 2.0]]
    diag = clw_diagnostics(_two_layer(a, w))
    assert diag.K == pytest.approx(1 * 1 - 2 * 2 + 3 * -1)
    assert diag.K_prime == pytest.approx((1 + 4 + 9) + (1 + 4 + 1))
    assert diag.q_max == pytest.approx(3.0)
    # sorted |a| = (1, 2, 3), sorted ‖w_k‖ = (1, √5, √5); W_2² = mean of squared gaps.
    s5 = math.sqrt(5)
    w2 = math.sqrt(((1 - 1) ** 2 + (2 - s5) ** 2 + (3 - s5) ** 2) / 3)
    assert diag.wasserstein == pytest.approx(w2 / math.sqrt(14 / 3), rel=1e-12)
    assert diag.norm_a == pytest.approx(math.sqrt(14))
    assert diag.norm_w == pytest.approx(math.sqrt(1 + 5 + 5))
    # Along e = e_2 instead: w_k¹ → (0, 1, 2).
    other = clw_diagnostics(_two_layer(a, w), direction=jnp.array([0.0, 3.0]))
    assert other.K == pytest.approx(0 - 2 * 1 + 3 * 2)
    assert other.K_prime == pytest.approx(14 + 0 + 1 + 4)
    assert other.q_max == diag.q_max and other.wasserstein == diag.wasserstein


def test_wasserstein_1d_is_the_optimal_coupling(getkey):
    """Sorted matching attains the minimum over all couplings of two uniform m-point measures
    (for m = 6 the optimal coupling is a permutation: Birkhoff), checked by brute force."""
    p, q = _rng(getkey).normal(size=(2, 6))
    best = min(
        np.mean((np.asarray(p) - np.asarray(q)[list(perm)]) ** 2)
        for perm in itertools.permutations(range(6))
    )
    assert wasserstein_1d(p, q) == pytest.approx(math.sqrt(best), rel=1e-12)
    with pytest.raises(ValueError, match="one size m"):
        wasserstein_1d(p, q[:5])


def test_relative_wasserstein_of_equal_and_scaled_distributions(getkey):
    """W_2 is zero when |a| is a permutation of (‖w_k‖) (any signs), although the neuron-wise
    gaps are not; for |a_k| = c‖w_k‖ it is |c − 1|·RMS(‖w‖), relative |1 − 1/c|."""
    m, d = 50, 3
    rng = _rng(getkey)
    w = rng.normal(size=(m, d))
    norms = np.linalg.norm(w, axis=1)
    a = rng.choice([-1.0, 1.0], size=m) * rng.permutation(norms)
    diag = clw_diagnostics(_two_layer(a[None, :], w))
    assert float(diag.wasserstein) == pytest.approx(0.0, abs=1e-14)
    assert np.max(np.abs(np.abs(a) - norms)) > 0.1  # not a neuron-wise match
    for c in (0.5, 2.0, 3.0):
        scaled = clw_diagnostics(_two_layer((c * norms)[None, :], w))
        assert float(scaled.wasserstein) == pytest.approx(abs(1 - 1 / c), rel=1e-12)


def test_clw_diagnostics_on_a_trajectory_equal_a_loop(getkey):
    """Leading axes are batch axes: a stacked trajectory gives the per-time values; a layer
    without the time axis (frozen) is broadcast."""
    rng = _rng(getkey)
    a, w = rng.normal(size=(4, 1, 7)), rng.normal(size=(4, 7, 2))
    stacked = jax.tree_util.tree_map(np.asarray, clw_diagnostics(_two_layer(a, w)))
    for i in range(4):
        one = clw_diagnostics(_two_layer(a[i], w[i]))
        for field in ("K", "K_prime", "q_max", "wasserstein", "norm_a", "norm_w"):
            assert getattr(stacked, field)[i] == pytest.approx(float(getattr(one, field)))
    frozen = clw_diagnostics(_two_layer(a[0], w))
    assert frozen.K.shape == (4,)
    assert frozen.K[2] == pytest.approx(float(clw_diagnostics(_two_layer(a[0], w[2])).K))


def test_clw_diagnostics_at_the_origin():
    """At θ = 0: K = K′ = q_max = 0, the relative W_2 is undefined (NaN), and the derivative of
    ‖w‖ = (Σ_k ‖w_k‖²)^{1/2} there is zero, not NaN."""
    zero = _two_layer(jnp.zeros((1, 5)), jnp.zeros((5, 2)))
    diag = clw_diagnostics(zero)
    assert diag.K == 0 and diag.K_prime == 0 and diag.q_max == 0
    assert jnp.isnan(diag.wasserstein)
    grads = jax.grad(lambda n: clw_diagnostics(n).norm_w)(zero)
    assert jnp.all(jnp.isfinite(grads.w)) and jnp.all(grads.w == 0)


def test_clw_diagnostics_errors():
    """Wrong inputs raise `ValueError`s that name the argument."""
    with pytest.raises(ValueError, match="scalar outputs"):
        clw_diagnostics(_two_layer(jnp.ones((2, 3)), jnp.ones((3, 1))))
    with pytest.raises(ValueError, match="TwoLayer"):
        clw_diagnostics(_squared_relu(jnp.ones((3, 2))))
    with pytest.raises(ValueError, match="`direction`"):
        clw_diagnostics(_two_layer(jnp.ones((1, 3)), jnp.ones((3, 2))), direction=jnp.ones(3))
    with pytest.raises(ValueError, match="leading"):
        clw_diagnostics(_two_layer(jnp.ones((4, 1, 3)), jnp.ones((5, 3, 2))))


def test_clw_scales():
    """For `clw_problem` (d = 1, ½-mean loss) rate = mean(xy) and K* = mean(xy)/mean(x²); data in
    Chen–Luo–Wang's normalisation (∫x² = 1, ∫fx = 1) give rate 1, K* = 1; doubling the loss
    doubles the rate and leaves K* (a property of the data, not of the loss's scale)."""
    problem = clw_problem("tanh", n_samples=100)
    x, y = np.asarray(problem.x[:, 0]), np.asarray(problem.y[:, 0])
    scales = clw_scales(problem)
    assert scales.rate == pytest.approx(np.mean(x * y), rel=1e-12)
    assert scales.k_star == pytest.approx(np.mean(x * y) / np.mean(x**2), rel=1e-12)
    assert scales.direction == pytest.approx(np.array([1.0]))
    doubled = clw_scales(SquareLoss(problem.x, problem.y, normalization="mean"))
    assert doubled.rate == pytest.approx(2 * float(scales.rate), rel=1e-12)
    assert doubled.k_star == pytest.approx(float(scales.k_star), rel=1e-12)
    xs = jnp.array([[-1.0], [1.0]])
    unit = clw_scales(SquareLoss(xs, xs, normalization="half_mean"))
    assert unit.rate == pytest.approx(1.0) and unit.k_star == pytest.approx(1.0)
    # d = 2: the condensation direction is b/‖b‖ with b = mean(y x).
    x2 = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y2 = (3 * x2[:, 0] + 4 * x2[:, 1])[:, None]
    two = clw_scales(SquareLoss(x2, y2, normalization="half_mean"))
    assert two.direction == pytest.approx(np.array([0.6, 0.8]))
    assert two.rate == pytest.approx(5 / 2) and two.k_star == pytest.approx(5.0)
    with pytest.raises(ValueError, match="uncorrelated"):
        clw_scales(SquareLoss(xs, jnp.ones((2, 1)), normalization="half_mean"))


def test_clw_predicted_times():
    """Theorem 1's T_p in both regimes (continuous at α = 3/2), Theorem 2's T_d, Eq. (58)'s T_sp,
    and the time unit 1/rate."""
    m = math.exp(4.0)
    t = clw_predicted_times(m, 1.0)
    assert (t.T_p, t.T_d) == (pytest.approx(1.0), pytest.approx(2.0))
    assert np.isnan(t.T_sp)
    t = clw_predicted_times(m, 2.0)
    assert (t.T_p, t.T_d) == (pytest.approx(4.0), pytest.approx(6.0))
    below, above = clw_predicted_times(m, [1.5, 1.5 + 1e-9]).T_p
    assert below == pytest.approx(above, abs=1e-8)
    t = clw_predicted_times([m, m**2], 1.0, rate=2.0, beta=0.1)
    assert t.T_d == pytest.approx([1.0, 2.0])
    assert t.T_sp == pytest.approx([1.0 + 4 / 4 / 2, 2.0 + 8 / 4 / 2])
    with pytest.raises(ValueError, match="`alpha`"):
        clw_predicted_times(100, 0.5)
    with pytest.raises(ValueError, match="`m`"):
        clw_predicted_times(1, 1.0)
    with pytest.raises(ValueError, match="`rate`"):
        clw_predicted_times(100, 1.0, rate=0.0)


def _staircase_loss(ts, t_p, t_d, t_sp, t_2):
    """1 until t_p, a cosine drop to 0.1 by t_d, flat until t_sp, a drop to 0.01 by t_2."""

    def drop(t, t0, t1, hi, lo):
        s = np.clip((t - t0) / (t1 - t0), 0, 1)
        return lo + (hi - lo) * (1 + np.cos(np.pi * s)) / 2

    return np.where(ts < t_sp, drop(ts, t_p, t_d, 1.0, 0.1), drop(ts, t_sp, t_2, 0.1, 0.01))


def test_clw_milestones_on_a_synthetic_staircase():
    """On a loss curve plateau–drop–plateau–drop–plateau with known edges, T_p, T_d (start of the
    secondary plateau, without K) and T_sp are found to the resolution of the slope window
    (0.1 in log t, i.e. ±5 %)."""
    ts = np.concatenate([[0.0], np.geomspace(1e-3, 100.0, 2000)])
    stages = clw_milestones(ts, _staircase_loss(ts, 1.0, 2.0, 10.0, 15.0))
    assert stages.T_p == pytest.approx(1.0, rel=0.1)
    assert stages.T_d == pytest.approx(2.0, rel=0.1)
    assert stages.T_sp == pytest.approx(10.0, rel=0.1)
    assert stages.staircase.levels == pytest.approx([1.0, 0.1, 0.01], rel=1e-3)
    # Cut while still on the secondary plateau: T_sp is not seen.
    cut = ts <= 8.0
    stages = clw_milestones(ts[cut], _staircase_loss(ts[cut], 1.0, 2.0, 10.0, 15.0))
    assert stages.T_d == pytest.approx(2.0, rel=0.1) and np.isnan(stages.T_sp)
    # No initial plateau (a power law, straight on log-log axes): no T_p.
    with np.errstate(divide="ignore"):
        stages = clw_milestones(ts, ts**-0.5)
    assert np.isnan(stages.T_p)


def test_clw_milestones_eq42_on_the_logistic_K():
    """Eq. (42) on Eq. (20): K(t) = K*·Ce^{2t}/(1 + Ce^{2t}) reaches (1 − β)K* at
    T_d = ½ log((1 − β)/(βC)), recovered by interpolation between save times; the loss
    R = R₀ − K + K²/(2K*) (their Eq. 37 with K* in place of 1) gives T_p < T_d."""
    ts = np.linspace(0.0, 12.0, 1201)
    k_star, c, beta = 0.3, 1e-6, 0.05
    K = k_star * c * np.exp(2 * ts) / (1 + c * np.exp(2 * ts))
    loss = 1.0 - K + K**2 / (2 * k_star)
    stages = clw_milestones(ts, loss, K=K, k_star=k_star, beta=beta)
    expected = 0.5 * math.log((1 - beta) / (beta * c))
    assert stages.T_d == pytest.approx(expected, abs=1e-4)
    assert stages.T_p < stages.T_d
    assert np.isnan(stages.T_sp)  # still on the secondary plateau at t = 12
    with pytest.raises(ValueError, match="`K`"):
        clw_milestones(ts, loss, K=K[:-1])
    with pytest.raises(ValueError, match="`beta`"):
        clw_milestones(ts, loss, beta=1.0)
    with pytest.raises(ValueError, match="`k_star`"):
        clw_milestones(ts, loss, K=K, k_star=-1.0)


def test_clw_stages_of_a_tanh_net_scale_with_log_width(getkey):
    """Chen–Luo–Wang's three stages on their 1-D tanh regression (100 points on [−15, 15],
    target tanh, ½-mean loss), tanh nets of widths m = 100 and 800 at α = 1.5 (σ = m^{−α}),
    gradient flow to t = 6 (Tsit5, rtol 1e−7). Times are in the data's unit 1/rate,
    rate = mean(xy) ≈ 7.55 (`clw_scales`). Checked:

    - T_d (Eq. 42, β = 0.05) and the loss curve's T_p both grow from m = 100 to 800; the slope of
      T_d in log m is Theorem 2's (2α − 1)/(2·rate) within [0.75, 1.5]× (measured ≈ 1.1×), and
      T_d·rate/log m is within 25 % of (2α − 1)/2 = 1 (measured ≈ 1.09); the slope of the loss
      curve's T_p lies between Theorem 1's (2α − 1)/(4·rate) and T_d's (measured ≈ 0.7 of T_d's,
      as the plateau edge is where K reaches a fixed fraction of K*).
    - At T_d, K′ = 2K to 1 % (a_k ≈ w_k¹ after the condensation) and the relative W_2 is below
      0.01 for m = 800 and smaller than for m = 100 (Corollary 4's bound decreases with m).
    - For m = 800 the secondary plateau is seen at the loss of the best linear fit,
      L(0) − rate·K*/2, within 5 % (measured ≈ 2.6 %: tanh's cubic term), and it lasts longer
      than T_d (Theorem 3; measured T_sp ≈ 3.7–3.9 ≈ 4 T_d).

    Both widths run as a width-800 net whose surplus neurons are exactly zero: a zero neuron of a
    tanh net has zero gradient, so the flow is the width-m flow, and one compiled solve serves
    both widths.
    """
    problem = clw_problem("tanh", n_samples=100)
    scales = clw_scales(problem)
    rate, k_star = float(scales.rate), float(scales.k_star)
    alpha, widths, full = 1.5, (100, 800), 800
    ts = np.concatenate([[0.0], np.geomspace(1e-3, 6.0, 300)])
    stages, at_descent = {}, {}
    for m in widths:
        net = TwoLayer(1, full, 1, "tanh", key=getkey(), std=m**-alpha)
        keep = (jnp.arange(full) < m).astype(float)
        net = eqx.tree_at(lambda n: (n.a, n.w), net, (net.a * keep[None, :], net.w * keep[:, None]))
        sol = saddlejax.gradient_flow(
            problem, net, 6.0, solver=diffrax.Tsit5(), saveat=ts, rtol=1e-7
        )
        diag = clw_diagnostics(sol.params, direction=scales.direction)
        stages[m] = clw_milestones(sol.ts, sol.loss, K=diag.K, k_star=k_star)
        i = int(np.searchsorted(ts, stages[m].T_d))
        at_descent[m] = jax.tree_util.tree_map(lambda x: float(x[i]), diag)
        s, d = stages[m], at_descent[m]
        print(
            f"m={m}: T_p={s.T_p:.3f} T_d={s.T_d:.3f} T_sp={s.T_sp:.3f} levels={s.staircase.levels}"
            f"; at T_d: K={d.K:.4f} K'={d.K_prime:.4f} q_max={d.q_max:.4f} W={d.wasserstein:.4f}"
            f"; at 0: q_max={float(diag.q_max[0]):.2e} W={float(diag.wasserstein[0]):.4f}"
        )

    log_ratio = math.log(widths[1] / widths[0])
    slope_d = (stages[800].T_d - stages[100].T_d) / log_ratio
    slope_p = (stages[800].T_p - stages[100].T_p) / log_ratio
    theory_d = (2 * alpha - 1) / (2 * rate)
    assert 0.75 * theory_d < slope_d < 1.5 * theory_d
    assert 0.5 * theory_d < slope_p < slope_d
    for m in widths:
        assert stages[m].T_d * rate / math.log(m) == pytest.approx((2 * alpha - 1) / 2, rel=0.25)
        assert at_descent[m].K_prime / (2 * at_descent[m].K) == pytest.approx(1.0, abs=1e-2)
    assert at_descent[800].wasserstein < min(0.01, at_descent[100].wasserstein)
    assert at_descent[800].q_max < at_descent[100].q_max

    plateau_level = float(problem(lambda x: jnp.zeros(1))) - rate * k_star / 2
    assert stages[800].staircase.levels[1] == pytest.approx(plateau_level, rel=0.05)
    assert stages[800].T_sp - stages[800].T_d > stages[800].T_d


# ---------------------------------------------------------------------------------------------
# Kumar–Haupt: neuron directions and KKT points
# ---------------------------------------------------------------------------------------------


def test_neuron_directions_squared_relu():
    """Unit rows and their norms; a zero neuron has direction 0, norm 0 and finite (zero)
    derivatives; directions are invariant under positive scaling of the weights."""
    w = jnp.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    nd = neuron_directions(_squared_relu(w))
    assert nd.directions == pytest.approx(np.array([[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]]))
    assert nd.norms == pytest.approx(np.array([5.0, 0.0, 2.0]))
    scaled = neuron_directions(_squared_relu(1e-7 * w))
    assert scaled.directions == pytest.approx(np.asarray(nd.directions), abs=1e-15)
    grads = jax.grad(lambda n: jnp.sum(neuron_directions(n).directions))(_squared_relu(w))
    assert jnp.all(jnp.isfinite(grads.w)) and jnp.all(grads.w[1] == 0)


def test_neuron_directions_two_layer_layout(getkey):
    """For `TwoLayer` neuron k is (a_k, w_k) (output weights first); a stacked trajectory gives
    the per-time directions."""
    rng = _rng(getkey)
    a = rng.normal(size=(3, 2, 5))  # time, out, m
    w = rng.normal(size=(3, 5, 4))  # time, m, d
    nd = jax.tree_util.tree_map(np.asarray, neuron_directions(_two_layer(a, w)))
    assert nd.directions.shape == (3, 5, 6) and nd.norms.shape == (3, 5)
    for t in range(3):
        for k in range(5):
            theta = np.concatenate([a[t, :, k], w[t, k]])
            assert nd.norms[t, k] == pytest.approx(np.linalg.norm(theta))
            assert nd.directions[t, k] == pytest.approx(theta / np.linalg.norm(theta))
    with pytest.raises(ValueError, match="separable"):
        neuron_directions(jnp.ones((3, 2)))


def test_kkt_distance_constructed():
    """Directions equal to KKT points are at distance 0; a direction at angle φ from the nearest
    of several points is at chord distance 2 sin(φ/2); with no points the distance is +inf."""
    points = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    assert kkt_distance(points, points) == pytest.approx([0.0, 0.0], abs=0)
    phis = jnp.array([0.1, 0.3, -0.5, 2.0])  # angles from e_1; 2.0 rad is nearer e_2
    u = jnp.stack([jnp.cos(phis), jnp.sin(phis)], axis=-1)
    expected = 2 * np.sin(np.abs([0.1, 0.3, -0.5, 2.0 - np.pi / 2]) / 2)
    assert kkt_distance(u, points) == pytest.approx(expected, rel=1e-12)
    assert kkt_distance(u[None], points).shape == (1, 4)
    assert jnp.all(jnp.isinf(kkt_distance(u, jnp.zeros((0, 2)))))
    with pytest.raises(ValueError, match="last axis"):
        kkt_distance(u, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="n_points, p"):
        kkt_distance(u, jnp.ones(2))


_TOY_SAVES = 11


def _toy_flow(problem, net, t1):
    return saddlejax.gradient_flow(
        problem,
        net,
        t1,
        solver=diffrax.Tsit5(),
        saveat=np.linspace(0.0, t1, _TOY_SAVES),
        rtol=1e-8,
    )


@pytest.fixture(scope="module")
def toy():
    """Kumar & Haupt's toy data (fixed draw) and its neuron NCF's KKT points at the origin."""
    problem = squared_relu_toy_problem(jr.key(0))
    kkt = neuron_kkt_points(problem, squared_relu_neuron, 2, key=jr.key(1), n_restarts=8)
    return problem, kkt


def test_directional_convergence_near_the_origin(toy, getkey):
    """Kumar & Haupt, Corollary 5.4.1 on their toy (SquaredReLU, 10 neurons in R², 50 unit
    inputs, y = 5 relu(x₁)² + 4 relu(x₂)², ½-sum loss): from init std 1e−4·1e−13 the flow to
    T = 0.3 stays near the origin (largest neuron ~1e−3, loss change < 1e−3) while every
    non-negligible neuron (norm ≥ 1 % of the largest) ends within 1e−2 of a KKT point of the
    neuron NCF; at t = 0 the neurons are spread (largest distance > 0.5).

    Why these numbers: for k = 2 a neuron's direction follows the gradient flow of N on the
    circle on an O(1) time scale, independent of δ, and approaches the maximiser at the rate
    μ = −N''(θ*) ≈ 30 for this draw, so by T = 0.3 the error is ≈ e^{−μT} ≈ 1e−4 (plus the transit
    of neurons that start far away; measured 5e−4 to 1.5e−3), while the norms grow like
    e^{λT} ≤ e^{31.5} (λ = 2N(θ*) ≈ 105); δ = 1e−17 keeps them ≤ ~1e−3, where the loss's terms
    beyond the NCF change the direction field by O(‖w‖²) ~ 1e−6. The threshold 1e−2 leaves a
    ≥ 7× margin over the measured distances.
    """
    problem, kkt = toy
    # N has one maximum and one minimum (N > 0 there) on the circle for this draw: both are
    # non-negative KKT points (ncf_kkt_points returns every critical point with N ≥ 0).
    assert kkt.points.shape == (2, 2)
    net = SquaredReLU(2, 10, key=getkey(), std=1e-4 * 1e-13)
    sol = _toy_flow(problem, net, 0.3)
    conv = directional_convergence(sol, kkt)
    print("max distance over time:", conv.max_distance, "active at T:", conv.active[-1])
    assert float(jnp.max(conv.norms[-1])) < 1e-2
    assert float(sol.loss[0] - sol.loss[-1]) < 1e-3
    assert conv.max_distance[0] > 0.5
    assert conv.max_distance[-1] < 1e-2
    assert int(conv.active[-1].sum()) >= 2
    # The distances of the active neurons shrink along the run (checked on the save grid).
    assert conv.max_distance[-1] < conv.max_distance[_TOY_SAVES // 2] < conv.max_distance[0]


def test_directional_convergence_near_a_saddle(toy, getkey):
    """Kumar & Haupt, Theorem 5.5 on the toy: at the saddle θ_s with one neuron at the best
    single-neuron fit and nine at zero (their zero gradient makes it a critical point), nine
    small neurons started at std 1e−16 converge in direction to KKT points of the residual NCF
    N_r, r = y − f(X; θ_s) (two maxima on the circle for this draw), within 1e−2 by
    T = 31.5/λ_r, while the big neuron stays put (moves < 1e−3). The saddle is reached by the
    flow from a single non-zero neuron (loss gradient < 1e−4 at t = 9)."""
    problem, kkt = toy
    single = jnp.zeros((10, 2)).at[0].set(1e-3 * kkt.points[0])
    fit = _toy_flow(problem, _squared_relu(single), 9.0)
    assert float(fit.grad_norm[-1]) < 1e-4
    saddle = fit.final_params
    residual = neuron_kkt_points(
        problem, squared_relu_neuron, 2, key=jr.key(1), n_restarts=8, saddle=saddle
    )
    assert residual.points.shape[0] >= 1 and bool(jnp.all(residual.values > 0))
    noise = _rng(getkey).normal(size=(10, 2)) * 1e-16
    noise[0] = 0.0
    start = eqx.tree_at(lambda n: n.w, saddle, saddle.w + noise)
    t1 = 31.5 / float(jnp.max(residual.multipliers))
    sol = _toy_flow(problem, start, t1)
    conv = directional_convergence(sol, residual, neurons=jnp.arange(1, 10))
    print("residual KKT points:", residual.points, "max distance:", conv.max_distance)
    assert conv.distances.shape == (_TOY_SAVES, 9)
    assert conv.max_distance[-1] < 1e-2 < conv.max_distance[0]
    assert float(jnp.linalg.norm(sol.params.w[-1, 0] - saddle.w[0])) < 1e-3
    # At θ_s = 0 the residual is y itself: the KKT points are the origin's.
    at_zero = neuron_kkt_points(
        problem, squared_relu_neuron, 2, key=jr.key(1), n_restarts=8, saddle=_zeroed(saddle)
    )
    assert at_zero.points == pytest.approx(np.asarray(kkt.points), abs=1e-8)


def test_directional_convergence_errors(toy):
    """Inputs that cannot be a trajectory of a separable net raise `ValueError`s."""
    problem, kkt = toy
    with pytest.raises(ValueError, match="FlowSolution"):
        directional_convergence(_squared_relu(jnp.ones((3, 2))), kkt)
    sol = _toy_flow(problem, SquaredReLU(2, 10, key=jr.key(0), std=1e-6), 1e-3)
    with pytest.raises(ValueError, match="one entry per neuron"):
        directional_convergence(sol, kkt, neurons=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="`min_relative_norm`"):
        directional_convergence(sol, kkt, min_relative_norm=1.0)
    with pytest.raises(ValueError, match="`size`"):
        neuron_kkt_points(problem, squared_relu_neuron, 0, key=jr.key(0))
