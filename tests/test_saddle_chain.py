"""`saddle_chain`: the α → 0 chain of saddles against the greedy low-rank algorithm (DLN closed
chain), against small-α flows (plateau levels and drop times), and the k = 2 closed form at the
origin of a two-layer tanh net (SPEC §4, §5, §8; Jacot et al. Conj. 3)."""

import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy.special import expi

import saddlejax as sj
from saddlejax.analysis._crossings import crossing_times
from saddlejax.experiments._saddle_chain import plateau_middles, save_times


def _crossings(sol, levels):
    """Times where the flow's loss first falls half-way between consecutive levels."""
    out = crossing_times(sol.ts, sol.loss, 0.5 * (levels[:-1] + levels[1:]), sol.grad_norm)
    assert np.all(np.isfinite(out)), "the flow never crossed a half-way level"
    return out


@pytest.fixture(scope="module")
def dln():
    prob = sj.matrix_completion_problem(jr.key(1), n=6, rank=3, observed=0.6)
    net = sj.nn.DeepLinear((6, 8, 8, 6), key=jr.key(2))
    return prob, net, sj.saddle_chain(prob, net, key=jr.key(0), carry_alphas=(1e-2, 1e-3))


def test_dln_chain_is_the_greedy_chain(dln):
    """Depth 3: the chain's saddles are the greedy algorithm's (same losses to 1e−5: both
    converge to the same critical points to ‖∇L‖ ≤ 1e−8; the last point, where both cross the
    loss floor 1e−4·L(0), to 1e−4: a crossing located to ~1e−5), of rank 0, 1, 2, 3; the origin's
    term has k = L = 3, m = 2L; later saddles are left through the Hessian's null space with
    k = 3 (Jacot et al. Remark 6), and the DLN speed at the origin is s* = L^{−(L−2)/2}σ_1(G)."""
    prob, net, ch = dln
    greedy = sj.greedy_low_rank(prob, 3)
    np.testing.assert_allclose(ch.losses[:-1], greedy.losses[:-1], rtol=1e-5)
    np.testing.assert_allclose(ch.losses[-1], greedy.losses[-1], rtol=1e-4)
    assert list(ch.ranks) == [0, 1, 2, 3]
    assert ch.stop_reason == "loss_floor"
    first, *later = ch.saddles[:-1]
    assert (first.order, first.next_order, first.restricted) == (3, 6, False)
    assert all(s.order == 3 and s.restricted and s.hessian_index == 0 for s in later)
    assert all(s.n_positive > 0 and s.null_dim > 0 for s in later)
    g = sj.matrix_cost_gradient_at_zero(prob)
    s_star = 3 ** -0.5 * float(jnp.linalg.svd(g, compute_uv=False)[0])
    np.testing.assert_allclose(first.speed, s_star, rtol=1e-6)
    # Modulo the rotations of the hidden units the optimal direction is unique.
    assert first.multiplicity == 1 and not first.degenerate
    assert all(s.kink is None for s in ch.saddles)  # a smooth loss has no kink to descend


def test_dln_chain_predicts_small_alpha_flows(dln):
    """Plateau levels within 1 % of the chain's saddle losses, and the predicted drop times
    (α^{−(L−2)}·T per plateau, T the blow-up time of the carried part's H-flow, the part handed
    over at each α) against the flows'. Measured (drops 1, 2, 3; both curves interpolated with
    dL/dt = −‖∇L‖², saved densely near the predicted drops): 2.4e−4, 9e−6, 7.5e−3 at
    α = 1e−2; 2.5e−5, 1.1e−5, 1.5e−4 at 1e−3. The part carried as the H-flow's transverse
    part at (1 − η)T, untransported, was off by 31 % and 4.0 % at the third drop."""
    prob, net, ch = dln
    assert [len(s.blowups) for s in ch.saddles[:-1]] == [0, 2, 2]
    errors = []
    for alpha in (1e-2, 1e-3):
        predicted = ch.drop_times(alpha)
        t1 = 3 * predicted[-1]
        middles = plateau_middles(predicted, t1)
        # Saves dense near each predicted drop, so that the crossings are the flow's, not the
        # interpolation's (4,000 saves spread over [0, t1] move drop 1 by 0.2 %).
        saveat = save_times(predicted, middles, t1, 2000, 300)
        sol = sj.gradient_flow(prob, sj.init.scale(net, alpha), t1, saveat=saveat)
        simulated = _crossings(sol, ch.losses)
        errors.append(np.abs(predicted / simulated - 1))
        mids = np.concatenate([[0.5 * simulated[0]], 0.5 * (simulated[:-1] + simulated[1:])])
        levels = np.interp(mids, np.asarray(sol.ts), np.asarray(sol.loss))
        np.testing.assert_allclose(levels, ch.losses[:-1], rtol=1e-2)
    print(errors)
    assert np.all(errors[0] < 2e-2) and np.all(errors[1] < 5e-4), errors
    assert np.max(errors[1]) < np.max(errors[0]), errors


def test_later_plateaus_on_a_random_deep_net():
    """Depth 4 (k = 4 at every saddle), a draw on which the part carried untransported (the
    H-flow's transverse part at (1 − η)T) puts the second and third drops 8.7 % and 34 % late
    at α = 1e−3: handed over at α through each path and compared with the next saddle modulo
    the hidden units' rotations, they are within 1.6e−4 and 7.6e−4 of the flow."""
    prob = sj.matrix_completion_problem(jr.key(0), n=6, rank=3, observed=0.6)
    net = sj.nn.DeepLinear((6, 6, 6, 6, 6), key=jr.key(12))
    alpha = 1e-3
    ch = sj.saddle_chain(prob, net, key=jr.key(0), carry_alphas=(alpha,))
    assert list(ch.ranks) == [0, 1, 2, 3] and ch.orders[:3] == [4, 4, 4]
    predicted = ch.drop_times(alpha)
    t1 = 1.5 * predicted[-1]
    sol = sj.gradient_flow(
        prob, sj.init.scale(net, alpha), t1, rtol=alpha / 100,
        saveat=save_times(predicted, plateau_middles(predicted, t1), t1, 2000, 300),
    )
    errors = np.abs(predicted / _crossings(sol, ch.losses) - 1)
    print(errors)
    assert np.all(errors < 3e-3), errors


def test_tiny_alpha_times(dln):
    """α → 0 at no cost: α^{L−2}·t_j is the sum of the plateaus' blow-up times T (Lemma 13 per
    plateau) at α = 1e−60, where t ≈ 1e61, and the log-space times (which go past float64's
    range) agree with the linear ones."""
    prob, net, ch = dln
    T = np.array([s.plateau[2] for s in ch.saddles[:-1]])
    np.testing.assert_allclose(1e-60 * ch.escape_times(1e-60), np.cumsum(T), rtol=1e-12)
    np.testing.assert_allclose(
        ch.log10_escape_times(1e-3), np.log10(ch.escape_times(1e-3)), rtol=1e-12
    )
    np.testing.assert_allclose(ch.log10_escape_times(1e-300), 300 + np.log10(np.cumsum(T)),
                               rtol=1e-12)


@pytest.fixture(scope="module")
def tanh():
    kx, ky, kn = jr.split(jr.key(0), 3)
    x = jr.normal(kx, (20, 3))
    teacher = sj.nn.TwoLayer(3, 3, 1, "tanh", key=ky, std=(1.0, 1.0))
    prob = sj.SquareLoss(x, jax.vmap(teacher)(x))
    net = sj.nn.TwoLayer(3, 8, 1, "tanh", key=kn, std=1.0)
    return prob, net, sj.saddle_chain(prob, net, key=jr.key(0), max_saddles=1)


def test_two_layer_tanh_origin_is_a_strict_saddle(tanh):
    """tanh'(0) = 1: the origin is a strict saddle (k = 2), s* = −λ_min(∇²L(0)) = ‖m‖ with
    m = −∂L/∂f-weighted inputs, one escape direction per neuron (multiplicity = width)."""
    prob, net, ch = tanh
    origin = ch.saddles[0]
    assert (origin.order, origin.kind) == (2, "saddle")
    assert origin.hessian_index == net.width and origin.multiplicity == net.width
    assert origin.degenerate
    hess = jax.hessian(lambda p: prob(p))(jax.tree.map(jnp.zeros_like, net))
    flat = np.block([[np.asarray(hess.w.w).reshape(24, 24), np.asarray(hess.w.a).reshape(24, 8)],
                     [np.asarray(hess.a.w).reshape(8, 24), np.asarray(hess.a.a).reshape(8, 8)]])
    np.testing.assert_allclose(origin.speed, -np.linalg.eigvalsh(flat)[0], rtol=1e-10)


def test_two_layer_tanh_first_drop(tanh):
    """k = 2: the first drop at (log(1/α) − log|c|)/s + τ_half, c the projection of θ̃ on the
    bottom eigenspace: measured 0.033 % (α = 1e−2), 0.006 % (1e−3), 0.0045 % (1e−4)."""
    prob, net, ch = tanh
    errors = []
    for alpha in (1e-2, 1e-3):
        predicted = ch.drop_times(alpha)[:1]
        sol = sj.gradient_flow(prob, sj.init.scale(net, alpha), 3 * predicted[0], n_save=4000)
        errors.append(abs(predicted[0] / _crossings(sol, ch.losses[:2])[0] - 1))
    print(errors)
    assert errors[1] < 5e-4 and errors[1] < errors[0], errors


def test_frozen_leaves_stay_frozen_along_the_paths(tanh):
    """`trainable`: the paths train only the trainable leaves. With the output weights frozen
    at θ̃'s (|a| ~ 1) the first-layer chain leaves the origin (k = 2) and its path reaches the
    loss floor (a path that trains the frozen leaves too ends elsewhere: read back with them
    restored, at L = 0.0417, "not_followed")."""
    prob, net, _ = tanh
    trainable = sj.freeze(net, lambda m: m.a)
    ch = sj.saddle_chain(prob, net, key=jr.key(0), max_saddles=1, trainable=trainable)
    assert ch.stop_reason == "loss_floor", ch.stop_reason
    assert ch.losses[-1] <= 1e-4 * ch.losses[0] * (1 + 1e-4)
    for saddle in ch.saddles:
        np.testing.assert_array_equal(saddle.params.a, net.a)
    np.testing.assert_allclose(float(prob(ch.saddles[-1].params)), ch.losses[-1], rtol=1e-12)


@pytest.fixture(scope="module")
def tanh3():
    """Three outputs, width 12 (more neurons than `n_eig` = 8 bottom pairs)."""
    kx, ky = jr.split(jr.key(0))
    x = jr.normal(kx, (32, 3))
    teacher = sj.nn.TwoLayer(3, 3, 3, "tanh", key=ky, std=(1.0, 1.0))
    y = jax.vmap(teacher)(x)
    prob = sj.SquareLoss(x, y)
    net = sj.nn.TwoLayer(3, 12, 3, "tanh", key=jr.key(0), std=1.0)
    sigma = np.linalg.svd(2 * np.asarray(y).T @ np.asarray(x) / 32, compute_uv=False)
    return prob, net, sigma, sj.saddle_chain(prob, net, key=jr.key(0), max_saddles=1)


def test_two_layer_tanh_flows_approach_the_chain_at_the_gap_rate(tanh3):
    """At the origin ∇²L has eigenvalues ±σᵢ(2Σyxᵀ/n), one copy per neuron: the bottom
    eigenspace (12 > `n_eig`) is taken whole, and gap = 1 − σ₂/σ₁ (0.233). The flow from α·θ̃
    leaves the origin with a part c·α^gap along the σ₂ directions (`path_deviations`), so the
    drop-time error falls at that rate: measured 1.4e−3 at α = 1e−12, 2.4e−6 at 1e−24, rate
    0.232, each 0.9 × the deviation. Between the path's saves the staircase is the Hermite
    cubic on dL/dτ = −‖∇L‖²: within 1.5e−4 of the α = 1e−24 flow's loss across the drop (a
    line between the saves: 4.5e−3). Bounds: the rate within 20 % of gap (measured 0.4 %; the
    next correction is of order α^{2·gap}), the error under 2× the deviation (0.9×), the
    staircase within 1e−3 (between the two interpolants' errors)."""
    prob, net, sigma, ch = tanh3
    origin = ch.saddles[0]
    assert origin.multiplicity == net.width
    np.testing.assert_allclose(origin.speed, sigma[0], rtol=1e-10)
    np.testing.assert_allclose(origin.gap, 1 - sigma[1] / sigma[0], rtol=1e-8)
    errors, deviations, loss = [], [], None
    taus = np.linspace(-3.0, 12.0, 600)
    for alpha in (1e-12, 1e-24):
        predicted = ch.drop_times(alpha)[:1]
        ts = np.sort(np.concatenate([np.linspace(0, predicted[0] + 12, 3000),
                                     predicted[0] + taus]))
        with warnings.catch_warnings():  # the precision warning: about later escapes, none here
            warnings.simplefilter("ignore", sj.NumericalWarning)
            sol = sj.gradient_flow(prob, sj.init.scale(net, alpha), ts[-1], saveat=ts,
                                   rtol=1e-10)
        errors.append(abs(predicted[0] / _crossings(sol, ch.losses[:2])[0] - 1))
        deviations.append(ch.path_deviations(alpha)[0])
        loss = np.interp(predicted[0] + taus, np.asarray(sol.ts), np.asarray(sol.loss))
    print(errors, deviations)
    rate = np.log(errors[0] / errors[1]) / np.log(1e12)
    assert 0.8 * origin.gap < rate < 1.25 * origin.gap, (rate, origin.gap)
    assert np.all(np.array(errors) < 2 * np.array(deviations)), (errors, deviations)
    staircase = ch.staircase(1e-24, ch.drop_times(1e-24)[0] + taus)
    assert np.max(np.abs(staircase - loss)) < 1e-3, np.max(np.abs(staircase - loss))


def test_relu_point_beside_a_kink_rests_only_the_smallest_alpha_flows():
    """The `chain-deep-relu` problem: the chain's rank-1 point ϑ¹ is a critical point of its own
    smooth piece, and `kink` finds, under 1e−5 from it, a kink past which L falls at first
    order: no nearer than the nearest sample to a first-layer unit's hyperplane
    (min |zⱼᵢ|/‖xᵢ‖, the distance that flips one unit on one sample). A flow at α = 1e−5
    arrives farther off ϑ¹ and passes it (measured: 2.5e−4 below L(ϑ¹) within 1.02× the first
    drop time, before the kinks stop it at its step limit); one at α = 1e−7 rests there
    (|L − L(ϑ¹)| = 3e−16 at 1.25× that time; the kink lies 4e−7 … 7e−7 off ϑ¹, by probe). The
    origin's kinks are in its one-sided Taylor term and are not probed."""
    from saddlejax.experiments._saddle_chain import SaddleChainConfig, deep_relu_problem

    prob, net = deep_relu_problem(SaddleChainConfig(problem="deep-relu", width=8))
    ch = sj.saddle_chain(prob, net, key=jr.key(0), max_saddles=1)
    origin, point = ch.saddles
    assert origin.kink is None and point.kind == "not_followed" and point.rank == 1
    kink = point.kink
    assert kink is not None and 0 < kink.distance < 1e-5 and kink.slope > 0
    w0 = np.asarray(point.params.weights[0])
    x = np.asarray(prob.x)
    live = np.linalg.norm(w0, axis=1) > 1e-8
    flip = np.min(np.abs(w0[live] @ x.T) / np.linalg.norm(x, axis=1))
    assert kink.distance >= flip, (kink.distance, flip)
    flat, unravel = jax.flatten_util.ravel_pytree(point.params)
    beyond = float(prob(unravel(flat + 4 * kink.distance * kink.direction)))
    assert beyond < point.loss - 0.5 * kink.slope * kink.distance
    t_drop = ch.drop_times(1e-7)[0] * 1e-7  # the first drop at α: this / α
    fast = sj.gradient_flow(prob, sj.init.scale(net, 1e-5), 1.02 * t_drop / 1e-5,
                            saveat=np.linspace(0.999, 1.02, 400) * t_drop / 1e-5,
                            max_steps=20_000, throw=False)
    loss = np.asarray(fast.loss)  # saves after a failure are inf: the kinks stop it
    assert np.min(loss[np.isfinite(loss)]) < point.loss - 1e-4
    near = np.linspace(0.9999, 1.0001, 201) * ch.drop_times(1e-7)[0]
    with warnings.catch_warnings():  # the precision warning concerns later escapes: none here
        warnings.simplefilter("ignore", sj.NumericalWarning)
        slow = sj.gradient_flow(prob, sj.init.scale(net, 1e-7), 1.25 * t_drop / 1e-7,
                                saveat=np.r_[near, 1.25 * t_drop / 1e-7], max_steps=25_000,
                                rtol=1e-9)
    assert abs(float(slow.loss[-1]) - point.loss) < 1e-9 * point.loss
    # The first plateau's T is the exact (sliding) H-flow's blow-up: the flow's drop agrees to
    # 5e−7 at rtol = α/100 (Dopri8 at 1e−5 along the kinks had T 2.4e−5 late; at rtol 1e−8
    # the flow's own error is 6e−5).
    mid = 0.5 * (ch.losses[0] + ch.losses[1])
    crossing = crossing_times(near, np.asarray(slow.loss)[:-1], [mid],
                              np.asarray(slow.grad_norm)[:-1])[0]
    assert abs(crossing / ch.drop_times(1e-7)[0] - 1) < 5e-6


@pytest.mark.parametrize("seed", [2, 6, 11])
def test_kinked_blowup_time_matches_dopri8_where_no_kink_is_slid_along(seed):
    """The blow-up of the H-flow of a deep ReLU net's origin term, H(θ) = −mean ⟨f_θ(x), y⟩
    (k = 3), by the sliding flow in t plus the tail r^{−(k−2)}/((k−2)s) (`kinked_blowup_time`),
    against `blowup_time`'s Dopri8 on the sphere at 1e−11, exact where the flow only crosses
    kinks (seeds 2, 6, 11 of 0–11; on 1, 5, 8, 9 it slides and Dopri8 reaches its step
    limit; on 0, 7, 10 both fail): T to 1e−7 (measured ≤ 1.4e−10 here, 1.7e−8 on seed 4), the
    directions to 1e−6 (measured ≤ 3.4e−8; the sliding flow stops at ‖θ‖ = 1e8·‖θ̃‖), the
    speeds to 1e−9."""
    from jax.flatten_util import ravel_pytree

    from saddlejax.analysis._kinked_h_flow import kinked_blowup_time

    kx, ky, kn = jr.split(jr.key(seed), 3)
    x = jr.normal(kx, (6, 2))
    y = jr.normal(ky, (6, 1))
    net = sj.nn.DeepReLU((2, 3, 3, 1), key=kn, std=1.0)
    theta, unravel = ravel_pytree(net)

    def H(t):
        return -jnp.mean(jax.vmap(unravel(t))(x) * y)

    ref = sj.theory.blowup_time(H, theta, order=3)
    out = kinked_blowup_time(H, theta, 3, 1.0)
    assert out.result == sj.RESULTS.successful
    np.testing.assert_allclose(float(out.time), float(ref.time), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(out.direction), np.asarray(ref.direction), atol=1e-6)
    np.testing.assert_allclose(float(out.speed), float(ref.speed), rtol=1e-9)


def test_a_path_held_on_a_kink_ends_the_chain_as_on_kinks():
    """One ReLU neuron a·relu(w·x) on x_A = (1, 1), y_A = 1 and x_B = (1, 0), y_B = −1: a
    single sign of a fits one sample; the escape from the origin fits it, and the other
    sample's residual pushes its pre-activation down from the active side while the fit pulls
    it up from the dead one, so the path ends held on that sample's kink (f = 0 there, loss
    L(0)/2). That point is Clarke-critical, not a critical point of a smooth piece: the chain
    stops there as "on_kinks" and does not classify it. Tolerance 1e−6: the arrival's sliding
    velocity is ~1e−8 (`grad_rtol`)."""
    x = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    y = jnp.array([[1.0], [-1.0]])
    prob = sj.SquareLoss(x, y)
    for seed in (0, 1):
        net = sj.nn.TwoLayer(2, 1, 1, "relu", key=jr.key(seed), std=1.0)
        ch = sj.saddle_chain(prob, net, key=jr.key(seed), max_saddles=3)
        assert ch.stop_reason.startswith("on_kinks"), ch.stop_reason
        assert [s.kind for s in ch.saddles] == ["saddle", "on_kinks"]
        assert ch.paths[0].kinks_at_arrival == 1 and ch.saddles[0].order == 2
        end = ch.saddles[-1]
        assert end.order is None and end.hessian_index == -1
        z = np.asarray(x) @ np.asarray(end.params.w)[0]
        f = float(np.asarray(end.params.a)[0, 0]) * np.maximum(z, 0.0)
        held = int(np.argmin(np.abs(z) / np.linalg.norm(np.asarray(x), axis=1)))
        assert abs(z[held]) < 1e-6 and f[held] == 0.0
        assert abs(f[1 - held] - float(y[1 - held, 0])) < 1e-6
        np.testing.assert_allclose(end.loss, 0.5 * ch.saddles[0].loss, rtol=1e-6)


def test_an_h_flow_without_blow_up_is_reported(monkeypatch):
    """Where the carried part's H-flow cannot be integrated to its blow-up (a ReLU term that
    slides along kinks; here forced), the chain warns, the plateau's length is NaN, and the
    predictions raise naming the saddle, instead of an overflow or a silent NaN time."""
    import equinox as eqx

    import saddlejax.analysis._saddle_chain as chain_module

    real = chain_module.blowup_time

    def failing(*args, **kwargs):
        out = real(*args, **kwargs)
        return eqx.tree_at(lambda b: b.result, out, sj.RESULTS.max_steps_reached)

    monkeypatch.setattr(chain_module, "blowup_time", failing)
    prob = sj.matrix_completion_problem(jr.key(1), n=6, rank=3, observed=0.6)
    net = sj.nn.DeepLinear((6, 8, 8, 6), key=jr.key(2))
    with pytest.warns(sj.NumericalWarning, match="did not reach its blow-up"):
        ch = sj.saddle_chain(prob, net, key=jr.key(0), max_saddles=1)
    assert np.isnan(ch.plateau_lengths(1e-3)[0])
    with pytest.raises(ValueError, match="plateau at saddle 0 has no predicted length"):
        ch.drop_times(1e-3)


def test_branches_of_a_degenerate_saddle():
    """Depth 2: the origin's bottom eigenspace is one copy per hidden unit, and −ρ escapes too;
    both branches reach a saddle of the same loss (the symmetry θ ↦ −θ of a DLN with L = 2)."""
    prob = sj.matrix_completion_problem(jr.key(1), n=5, rank=2, observed=0.8)
    net = sj.nn.DeepLinear((5, 6, 5), key=jr.key(3))
    ch = sj.saddle_chain(prob, net, key=jr.key(0), max_saddles=1, max_branches=2)
    origin = ch.saddles[0]
    assert origin.order == 2 and origin.multiplicity == 6 and origin.degenerate
    branches = ch.branches[0]
    assert len(branches) == 2
    for b in branches:
        assert b.path.result == sj.RESULTS.successful
        np.testing.assert_allclose(b.loss, ch.saddles[1].loss, rtol=1e-6)
        assert b.rank == ch.saddles[1].rank == 1


def test_a_path_that_drifts_to_infinity_is_reported():
    """L(a, b) = 1 + e^{−ab}: the origin is a strict saddle (k = 2, s = 1) whose escape path
    a = b = r, ṙ = r·e^{−r²}, has no critical point at its end: Ei(r²) = 2τ + O(1), so r ≈
    √(log 2τ) → ∞ while L → 1 = its infimum. The chain stops there as `path_diverged` (not as
    a minimum, not as a time out) and says so; at the horizon Ei(‖θ‖²/2) = 2τ to 1e−3 (the
    start on the H-path shifts τ by O(1), and τ ≈ 10⁴ there)."""

    def objective(p):
        return 1 + jnp.exp(-p["a"] * p["b"])

    init = {"a": jnp.array(0.3), "b": jnp.array(0.4)}
    ch = sj.saddle_chain(objective, init, key=jr.key(0), horizon_factor=1e3)
    assert ch.stop_reason.startswith("path_diverged"), ch.stop_reason
    assert [s.kind for s in ch.saddles] == ["saddle", "diverging"]
    assert ch.saddles[0].order == 2 and ch.saddles[0].hessian_index == 1
    path = ch.paths[0]
    assert path.result == sj.RESULTS.path_diverged
    # The drop into the drift is predicted like any other: the flow from α·θ̃ crosses L = 1.5.
    assert ch.n_arrived == 1
    errors = []
    for alpha in (1e-3, 1e-6):
        flow = sj.gradient_flow(objective, jax.tree.map(lambda v: alpha * v, init), 40.0,
                                n_save=4000, rtol=1e-10, atol=1e-12)
        simulated = _crossings(flow, np.array([2.0, 1.0]))
        errors.append(abs(ch.drop_times(alpha)[0] - simulated[0]))
    # Measured 1.5e−4 at both α (t ≈ 8 and 15): the flows' own save spacing, 0.01.
    assert max(errors) < 1e-3, errors
    np.testing.assert_allclose(expi(path.norm[-1] ** 2 / 2), 2 * path.ts[-1], rtol=1e-3)
    assert path.loss[-1] - 1 < 1e-3


@pytest.mark.slow
def test_a_slowdown_is_not_a_saddle():
    """A random instance of the default problem family (31 % observed, depth 4, width 20) whose
    path from the rank-1 saddle slows at L ≈ 0.0102 (‖∇L‖ dips a hundred-fold and rises again)
    with no critical point there (Newton's method from it stalls at ‖∇L‖ ≈ 7e−4): the chain
    passes it and reaches the loss floor at rank 2, as greedy and the small-α flows do (they
    drop from 0.428 straight to 2.5e−5)."""
    prob = sj.matrix_completion_problem(jr.key(161576974), 10, 3, 0.3122920571808584)
    net = sj.nn.DeepLinear((10, 20, 20, 20, 10), key=jr.key(35492826))
    ch = sj.saddle_chain(prob, net, key=jr.key(0))
    assert [s.kind for s in ch.saddles] == ["saddle", "saddle", "loss_floor"], ch.losses
    assert ch.ranks.tolist() == [0, 1, 2]
    # greedy_low_rank(prob, 4).losses[1] = 0.42815245812; both polished to ‖∇L‖ ≤ 1e−8.
    assert abs(ch.losses[1] / 0.42815245812 - 1) < 1e-9


def test_converging_paths_are_not_drifts(dln):
    """An arrived path's ‖θ‖ settles: the drift test, run on the arrived paths of the depth-3
    chain, calls none of them a drift."""
    from saddlejax.analysis._saddle_chain import _drifting

    _, _, ch = dln
    for p in ch.paths:
        assert not _drifting(p.ts, p.norm, p.loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(radius=0.0), "`radius`"),
        (dict(radius=2.0), "`radius`"),
        (dict(max_saddles=0), "`max_saddles`"),
        (dict(max_branches=-1), "`max_branches`"),
        (dict(grad_rtol=0.0), "`grad_rtol`"),
        (dict(carry_eta=0.0), "`carry_eta`"),
        (dict(carry_eta=1.0), "`carry_eta`"),
        (dict(carry_alphas=()), "`carry_alphas`"),
        (dict(carry_alphas=(1e-3, 1.5)), "`carry_alphas`"),
        (dict(carry_alphas=1e-3), "`carry_alphas`"),
        (dict(continue_smoothing=0.0), "`continue_smoothing`"),
    ],
)
def test_bad_arguments(kwargs, match):
    prob = sj.matrix_completion_problem(jr.key(1), n=4, rank=1)
    net = sj.nn.DeepLinear((4, 4, 4), key=jr.key(0))
    with pytest.raises(ValueError, match=match):
        sj.saddle_chain(prob, net, **kwargs)


def test_zero_init_is_refused():
    prob = sj.matrix_completion_problem(jr.key(1), n=4, rank=1)
    net = jax.tree.map(jnp.zeros_like, sj.nn.DeepLinear((4, 4, 4), key=jr.key(0)))
    with pytest.raises(ValueError, match="`init` is 0"):
        sj.saddle_chain(prob, net)


def test_unconverged_matrix_free_hessian_warns():
    """Above `dense_max` the chain reads the index and null space from LOBPCG; eigenpairs that
    ran out of iterations are named in a NumericalWarning, not used silently."""
    from saddlejax.analysis._saddle_chain import _converged

    net = sj.nn.DeepLinear((3, 4, 3), key=jr.key(0), std=0.7)
    loss = lambda m: 0.5 * jnp.sum((m.matrix() - jnp.eye(3)) ** 2)  # noqa: E731
    spec = sj.hessian_spectrum(loss, net, k=1, key=jr.key(1), max_steps=2)
    with pytest.warns(sj.NumericalWarning, match="did not converge"):
        _converged(spec)
    spec = sj.hessian_spectrum(loss, net, k=1, key=jr.key(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _converged(spec)
