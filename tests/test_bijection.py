"""The bijection Ψ of Jacot et al. Thm 5 / Thm 22 and the connection to simulations (Thm 2)
(SPEC §7, §8), on deep linear networks with small widths."""

import diffrax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj

PROBLEM = sj.matrix_completion_problem(jr.key(0), n=4, rank=2, observed=0.75)
G = sj.matrix_cost_gradient_at_zero(PROBLEM)
H = sj.dln_taylor_term(G)  # one object for all tests: one compilation per (depth, loss pair)


def _x0(depth, index=0, radii=(1e-4, 0.5), n=401):
    widths = (4,) + (3,) * (depth - 1) + (4,)
    rho = sj.dln_escape_direction(G, widths, index=index)
    s = float(rho.speed)
    ts = sj.escape_times(s, depth, radii=radii, n=n)
    return sj.escape_path(rho.weights, s, depth, ts), s, float(sj.dln_optimal_speed(G, depth))


@pytest.fixture(scope="module")
def dln2_check():
    x0, s, s_star = _x0(2)
    return x0, sj.check_bijection(PROBLEM, x0, H, next_order=4, speed=s, optimal_speed=s_star,
                                  forward=False)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_round_trip_rate_and_speed(depth, dln2_check):
    """Ψ⁻¹(Ψ(x₀)) = x₀; ‖x₀ − Ψ(x₀)‖ decays at the theorem's rate — 3s* for L = 2 (e^{3st}),
    (L+1)/(L−2) for L > 2 ((T−t)^{−(L+1)/(L−2)}); Ψ(x₀) escapes at the speed of x₀; both maps
    contract (observed ratios < 1)."""
    if depth == 2:
        x0, c = dln2_check
    else:
        x0, s, s_star = _x0(depth)
        c = sj.check_bijection(PROBLEM, x0, H, next_order=2 * depth, speed=s,
                               optimal_speed=s_star,
                               forward=dict(solver=diffrax.Tsit5(), rtol=1e-10)
                               if depth == 3 else False)
        if depth == 3:
            # The engine's flow of C from x₀(t_min) (Tsit5, rtol 1e-10) agrees with Ψ(x₀) on the
            # geometric grid (measured 1.3e-7), and so does the round trip through Ψ⁻¹ of that
            # flow (1.3e-7): a check of the whole chain, not of one discrete identity.
            assert float(c.forward_integration_distance) < 1e-6
            assert float(c.round_trip_error_forward) < 1e-6
    assert bool(c.image.successful) and bool(c.preimage.successful)
    assert np.all(c.image.ratios() < 1) and np.all(c.preimage.ratios() < 1)
    # Both iterations stop at relative changes 1e-11: measured 1e-13.
    assert float(c.round_trip_error) < 1e-9
    # Measured relative deviations 6e-4 (L=2), 4e-4 (L=3), 2e-3 (L=4); the neighbouring wrong
    # exponents ((m−2)s, L/(L−2)) are 20-33 % away.
    assert abs(float(c.fitted_rate) / c.theory_rate - 1) < 0.01
    assert abs(float(c.fitted_speed) / c.speed - 1) < 1e-3  # measured 2e-5
    assert c.speed > c.threshold


def test_non_optimal_direction_keeps_its_speed():
    """L = 2, second singular direction (s = σ_2 = 0.67 s* > s*/3): Ψ(x₀) escapes at σ_2, not at
    the optimal speed, and its closeness rate is 3σ_2."""
    x0, s, s_star = _x0(2, index=1)
    c = sj.check_bijection(PROBLEM, x0, H, next_order=4, speed=s, optimal_speed=s_star,
                           forward=False)
    assert abs(s / s_star - 1) > 0.2
    assert abs(float(c.fitted_speed) / s - 1) < 1e-3
    assert abs(float(c.fitted_rate) / (3 * s) - 1) < 0.01


def test_below_threshold_the_iteration_is_reported_not_assumed():
    """L = 2, third singular direction: s = 0.054 < s*/3 = 0.27. The theorem does not apply; the
    measured ratios exceed 1 and the iteration is reported as failed (not returned as Ψ)."""
    x0, s, s_star = _x0(2, index=2, radii=(5e-3, 0.5), n=201)
    assert s < sj.speed_threshold(2, 4, s_star)
    sol = sj.psi(PROBLEM, x0, H, next_order=4, speed=s, throw=False, max_steps=40)
    assert not bool(sol.successful)
    assert np.nanmax(np.asarray(sol.contraction_ratios)) > 1.0
    with pytest.raises(RuntimeError, match="fixed-point iteration"):
        sj.psi(PROBLEM, x0, H, next_order=4, speed=s, max_steps=40)


def test_a_wrong_inverse_breaks_the_round_trip(dln2_check):
    """Ψ⁻¹ with the sign of H flipped (iterating +∫∇H) does not return x₀."""
    x0, c = dln2_check

    def flipped(p):
        return -H(p)

    bad = sj.psi_inverse(flipped, c.image.path, PROBLEM, next_order=4, speed=c.speed,
                         throw=False, max_steps=50)
    assert not float(sj.path_distance(bad.path, x0)) < 0.1


def test_procrustes_recovers_a_hidden_rotation(getkey):
    """Rotating the hidden layers of a path by random orthogonal matrices is undone by
    `procrustes_rotations` (to round-off); unaligned, the paths differ by O(1)."""
    widths = (3, 4, 4, 2)
    rng = np.random.default_rng(np.asarray(jr.key_data(getkey())))  # numpy: no per-shape compiles
    ws = [jnp.asarray(rng.normal(size=(5, o, i))) for i, o in zip(widths[:-1], widths[1:])]
    rots = [jnp.asarray(np.linalg.qr(rng.normal(size=(w, w)))[0]) for w in widths[1:-1]]
    rotated = sj.rotate_hidden(ws, rots)
    found = sj.procrustes_rotations(rotated, ws)
    back = sj.rotate_hidden(rotated, found)
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(back, ws))
    raw = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(rotated, ws))
    assert err < 1e-8 and raw > 0.1


def test_simulation_converges_to_the_psi_image(dln2_check):
    """Thm 2, L = 2: θ_α(t_α + t) approaches Ψ(x₀*)(t_Ψ + t) after a Procrustes rotation of the
    hidden layer, as α decreases; without the rotation it does not."""
    x0, c = dln2_check
    base = sj.dln_image_init((4, 3, 4), key=jr.key(1))
    kw = dict(radius=0.3, min_radius=0.01, optimal_speed=c.speed)
    sim = sj.simulation_distances(PROBLEM, c.image.path, base, [1e-2, 1e-3, 1e-4], **kw)
    d = sim.distances
    # Measured 0.66, 0.32, 0.15: ∝ α^{1−σ_2/σ_1} = α^{0.33}, the decay of the second singular
    # direction relative to the first.
    assert d[1] < 0.7 * d[0] and d[2] < 0.7 * d[1] and d[2] < 0.25
    raw = sj.simulation_distances(PROBLEM, c.image.path, base, [1e-4], align=False, **kw)
    assert raw.distances[0] > 2 * d[2]
