"""Networks (SPEC §2), initialisation scales (SPEC §1) and frozen layers."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax import init
from saddlejax.nn import DeepLinear, DeepReLU, SquaredReLU, TwoLayer
from saddlejax.nn._layers import leaky_relu, smoothed_leaky_relu

# Homogeneity is an algebraic identity: only rounding separates the two sides (~1e-15 relative
# per multiplication), so 1e-12 leaves three decades of margin while catching any bias term or
# non-homogeneous activation (which would be wrong at O(1)).
HOMOGENEITY_RTOL = 1e-12
# A trainable layer moves by more than this in `test_freeze_flow` (2.8× below the least move).
MOVED = 1e-3


def test_shapes(getkey):
    """Every network maps one input of size n_0 to one output of size n_L, with weight W_ℓ of
    shape (n_ℓ, n_{ℓ−1}) (SPEC §2), and batches with vmap."""
    x = jr.normal(getkey(), (7, 3))
    dln = DeepLinear((3, 5, 6, 2), key=getkey())
    assert [w.shape for w in dln.weights] == [(5, 3), (6, 5), (2, 6)]
    assert dln.widths == (3, 5, 6, 2) and dln.depth == 3
    relu = DeepReLU((3, 5, 6, 2), 0.1, key=getkey())
    assert [w.shape for w in relu.weights] == [(5, 3), (6, 5), (2, 6)]
    two = TwoLayer(3, 8, 2, "tanh", key=getkey())
    assert two.w.shape == (8, 3) and two.a.shape == (2, 8)
    sq = SquaredReLU(3, 8, key=getkey())
    assert sq.w.shape == (8, 3)
    for net, out in ((dln, 2), (relu, 2), (two, 2), (sq, 1)):
        assert net(x[0]).shape == (out,)
        assert jax.vmap(net)(x).shape == (7, out)
    assert sq.neurons(x[0]).shape == (8,)
    np.testing.assert_allclose(sq.neurons(x[0]).sum(), sq(x[0])[0], rtol=1e-14)


def _homogeneity_cases(key):
    k = jr.split(key, 4)
    return [
        (DeepLinear((3, 5, 4, 2), key=k[0]), 3),
        (DeepLinear((3, 5, 5, 5, 2), key=k[0]), 4),
        (DeepReLU((3, 6, 6, 2), key=k[1]), 3),
        (DeepReLU((3, 6, 6, 6, 2), 0.2, key=k[1]), 4),
        # A wide band (ε = 0.3), so that most units sit inside it and use the softplus.
        (DeepReLU((3, 6, 6, 2), 0.1, key=k[1], smoothing=0.3), 3),
        (SquaredReLU(3, 7, key=k[2], std=1.0), 2),
        (TwoLayer(3, 7, 2, "relu", key=k[3]), 2),
    ]


@pytest.mark.parametrize("case", range(7))
@pytest.mark.parametrize("lam", [0.3, 2.7])
def test_homogeneity(getkey, case, lam):
    """f(λθ) = λ^L f(θ) for λ > 0: DeepLinear/DeepReLU (kink smoothed or not) are
    L-homogeneous (L = depth), SquaredReLU and the two-layer ReLU net 2-homogeneous (SPEC §2)."""
    net, degree = _homogeneity_cases(getkey())[case]
    x = jr.normal(getkey(), (5, 3))
    f = jax.vmap(net)(x)
    f_scaled = jax.vmap(init.scale(net, lam))(x)
    # Relative to the output scale as well, for entries that are near-cancelling sums.
    atol = HOMOGENEITY_RTOL * lam**degree * float(jnp.max(jnp.abs(f)))
    np.testing.assert_allclose(f_scaled, lam**degree * f, rtol=HOMOGENEITY_RTOL, atol=atol)


def test_smoothed_relu_band(getkey):
    """`smoothing=ε` changes σ(zⱼ) only where |zⱼ| < 40·ε·sⱼ, sⱼ = ‖wⱼ ⊙ h‖ at the net's input
    (the floor of later layers: the next test), and there by at most the softplus's excess at
    the kink, log 2·ε·sⱼ; it keeps the per-neuron rescaling symmetry of a ReLU net; and its
    gradient is finite where a row wⱼ or the input vanishes."""
    eps, slope = 0.01, 0.1
    w, h = jr.normal(getkey(), (400, 4)), jr.normal(getkey(), (4,))
    z, s = w @ h, jnp.linalg.norm(w * h[None, :], axis=1)
    outside = jnp.abs(z) >= 40 * eps * s
    assert bool(outside.any()) and bool((~outside).any())
    for a in (0.0, slope):
        smooth, z_out = smoothed_leaky_relu(w, h, a, eps)
        np.testing.assert_array_equal(z_out, z)
        exact = leaky_relu(z, a)
        np.testing.assert_array_equal(smooth[outside], exact[outside])
        bound = (1 - a) * math.log(2) * eps * s * (1 + 1e-12)
        assert bool(jnp.all(jnp.abs(smooth - exact) <= bound))
    # Per-neuron rescaling: row j of W₁ times c, column j of W₂ divided by c.
    net = DeepReLU((3, 6, 6, 2), key=getkey(), smoothing=0.5)
    c = jnp.exp(jr.normal(getkey(), (6,)))
    moved = eqx.tree_at(
        lambda m: m.weights[:2], net, (net.weights[0] * c[:, None], net.weights[1] / c[None, :])
    )
    x = jr.normal(getkey(), (9, 3))
    np.testing.assert_allclose(jax.vmap(moved)(x), jax.vmap(net)(x), rtol=1e-12, atol=1e-14)
    # The two-layer ReLU net smooths the same way, and only a ReLU.
    two = TwoLayer(3, 6, 2, "relu", key=getkey(), smoothing=0.5)
    deep = DeepReLU((3, 6, 2), key=getkey(), smoothing=0.5)
    deep = eqx.tree_at(lambda m: m.weights, deep, (two.w, two.a))
    np.testing.assert_array_equal(jax.vmap(two)(x), jax.vmap(deep)(x))
    with pytest.raises(ValueError, match="smoothing"):
        TwoLayer(3, 6, 2, "tanh", key=getkey(), smoothing=0.5)
    # A zero row and a zero input.
    grads = jax.grad(lambda w, h: jnp.sum(smoothed_leaky_relu(w, h, slope, eps)[0]), (0, 1))
    for args in ((w.at[0].set(0.0), h), (w, jnp.zeros_like(h))):
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads(*args))


def test_with_smoothing_keeps_the_weights_and_sets_only_the_smoothing():
    """`nn.with_smoothing`: the same weights (the same arrays), the new ε, the original
    untouched; the smoothed net differs from the exact one by at most log 2·ε·sⱼ per unit
    (`smoothed_leaky_relu`), and a net without a ReLU kink is refused."""
    net = sj.nn.DeepReLU((3, 5, 2), key=jr.key(0))
    smooth = sj.nn.with_smoothing(net, 0.5)  # wide: exact only where |zⱼ| ≥ 40·ε·sⱼ
    assert net.smoothing == 0.0 and smooth.smoothing == 0.5
    assert all(a is b for a, b in zip(net.weights, smooth.weights))
    x = jr.normal(jr.key(1), (3,))
    gap = float(jnp.max(jnp.abs(smooth(x) - net(x))))
    assert 0.0 < gap < 1.0
    assert sj.nn.with_smoothing(smooth, 0.0)(x).tolist() == net(x).tolist()
    two = sj.nn.TwoLayer(3, 4, 1, "relu", key=jr.key(2))
    assert sj.nn.with_smoothing(two, 1e-4).smoothing == 1e-4
    with pytest.raises(ValueError, match="activation is 'tanh'"):
        sj.nn.with_smoothing(sj.nn.TwoLayer(3, 4, 1, "tanh", key=jr.key(2)), 1e-4)
    with pytest.raises(ValueError, match="got a DeepLinear"):
        sj.nn.with_smoothing(sj.nn.DeepLinear((2, 2), key=jr.key(0)), 1e-4)
    with pytest.raises(ValueError, match="`smoothing`"):
        sj.nn.with_smoothing(net, -1.0)


def test_smoothed_relu_with_one_live_input():
    """A sample that reaches unit j through one live input k (the other inputs dead, hₖ' = 0
    with pre-activations zₖ' < 0): as wⱼₖ changes sign, zⱼ = wⱼₖhₖ crosses 0. Measured by
    ‖wⱼ ⊙ h‖ = |zⱼ| alone the band would never contain zⱼ (|zⱼ|/bⱼ = 1/ε) and this kink would
    stay exact (AD: σ' = 1 at 0); the dead inputs' pre-activations, weighted by ε and the live
    fraction ρ̄ = meanₖ hₖ²/(hₖ² + zₖ²) = 1/6, keep the band open, so σ(zⱼ(t)) is smooth in
    t = wⱼₖ, with slope hₖ·sigmoid(0) = hₖ/2 at 0. Where every input is dead σ stays exactly 0,
    and so does its gradient."""
    eps = 1e-4
    h, z_in = jnp.array([0.7, 0.0, 0.0]), jnp.array([0.7, -1.0, -2.0])

    def unit(t, h=h):
        w = jnp.array([[t, 0.5, -0.3]])
        return smoothed_leaky_relu(w, h, 0.0, eps, z_in)[0][0]

    np.testing.assert_allclose(jax.grad(unit)(0.0), 0.35, rtol=1e-12)
    width = eps * math.sqrt(eps * (0.5**2 * 1.0 + 0.3**2 * 4.0) / 6)
    np.testing.assert_allclose(unit(0.0), width * math.log(2), rtol=1e-12)
    # Far from the band (|zⱼ| ≥ 40·bⱼ) the unit is the exact ReLU.
    assert float(unit(-1e-2)) == 0.0 and float(unit(1e-2)) == 1e-2 * 0.7
    dead = jnp.zeros(3)
    assert float(unit(0.3, dead)) == 0.0 and float(jax.grad(unit)(0.3, dead)) == 0.0


def _sliding_draw():
    """A draw whose exact ReLU flow reaches a kink it slides along before t = 5."""
    k_net, k_x, k_y = jr.split(jr.key(2), 3)
    net = init.scale(DeepReLU((3, 6, 6, 6, 2), key=k_net), 0.5)
    return net, sj.SquareLoss(jr.normal(k_x, (12, 3)), jr.normal(k_y, (12, 2)))


def test_smoothed_relu_flow_passes_a_sliding_kink():
    """Where the exact ReLU flow slides along a kink its steps collapse (`max_steps_reached`);
    with `smoothing=1e−4` the flow finishes near the sliding (Filippov) flow, here gradient
    descent on the exact net at η = 1e−4 (within 2.1e−6 of η = 1e−5 on this draw). Measured at
    t = 5: 8.9e−6 (from η = 1e−5: 1.8e−3, 1.7e−4, 1.0e−5, 8e−7 for ε = 1e−2 … 1e−5, the
    convergence `bench_relu_kinks.py` measures over 20 draws); the bound leaves ≈ 3×, and a
    flow that missed the kink's sliding would be off by the kink's effect, O(1e−3) and more."""
    net, loss = _sliding_draw()
    kwargs = dict(n_save=4, rtol=1e-8, max_steps=2_000, throw=False)
    exact = sj.gradient_flow(loss, net, 5.0, **kwargs)
    assert exact.result == sj.RESULTS.max_steps_reached

    gd = sj.gradient_descent(loss, net, learning_rate=1e-4, steps=50_000).final_params
    smoothed = eqx.tree_at(
        lambda m: m.weights, DeepReLU((3, 6, 6, 6, 2), key=jr.key(0), smoothing=1e-4),
        net.weights,
    )
    sol = sj.gradient_flow(loss, smoothed, 5.0, **kwargs)
    assert sol.result == sj.RESULTS.successful, sj.RESULTS[sol.result]
    w = sol.final_params.weights
    dist = float(jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(w, gd.weights))))
    assert dist <= 3e-5, dist


def test_deep_linear_matrix(getkey):
    """DeepLinear.matrix() is the composed map W_L ⋯ W_1: it equals a numpy product of the
    weights and reproduces the network on inputs (SPEC §2)."""
    net = DeepLinear((4, 6, 5, 3), key=getkey())
    w1, w2, w3 = (np.asarray(w) for w in net.weights)
    expected = w3 @ w2 @ w1
    # Three float64 matmuls of O(1) entries: rounding ~1e-15.
    np.testing.assert_allclose(net.matrix(), expected, rtol=1e-12, atol=1e-14)
    x = jr.normal(getkey(), (4,))
    np.testing.assert_allclose(net(x), expected @ np.asarray(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        sj.nn.end_to_end_matrix(list(net.weights)), expected, rtol=1e-12, atol=1e-14
    )


def test_init_conversions():
    """α = w^{−γ/2}/σ̃ and γ = −2 log(ασ̃)/log w are inverse; α_CL maps to m^{−α_CL}/σ̃ (SPEC §1)."""
    for width, gamma, base in [(100, 1.5, 0.1), (30, 0.5, 1.0), (1000, 2.0, 0.03)]:
        alpha = init.alpha_from_gamma(width, gamma, base)
        assert math.isclose(alpha, width ** (-gamma / 2) / base, rel_tol=1e-14)
        assert math.isclose(init.gamma_from_alpha(width, alpha, base), gamma, rel_tol=1e-12)
        assert math.isclose(init.gamma_std(width, gamma) ** 2, width ** (-gamma), rel_tol=1e-14)
    assert math.isclose(init.alpha_from_clw(400, 0.75, 0.05) * 0.05, 400**-0.75, rel_tol=1e-14)
    assert math.isclose(init.clw_std(400, 0.75), 400**-0.75, rel_tol=1e-14)


def test_init_empirical_std(getkey):
    """A draw scaled by α = alpha_from_gamma(w, γ, σ̃) has empirical entry std w^{−γ/2}, and the
    default DeepLinear draw has std w^{−1/2} (SPEC §1)."""
    widths = (40, 200, 200, 40)
    width, gamma = 200, 1.6
    base = DeepLinear(widths, key=getkey())
    n = sum(w.size for w in base.weights)  # 56,000 entries
    # The sample std of n Gaussian entries has relative standard error 1/√(2n) ≈ 0.3 %;
    # 6 standard errors (≈ 1.8 %) make a false failure essentially impossible, while a wrong
    # convention (e.g. σ = w^{−γ} instead of w^{−γ/2}) is off by a factor ≥ 1.5.
    tol = 6 / math.sqrt(2 * n)
    sigma_base = float(np.std(np.concatenate([np.ravel(w) for w in base.weights])))
    assert abs(sigma_base / width**-0.5 - 1) < tol
    alpha = init.alpha_from_gamma(width, gamma, width**-0.5)
    scaled = init.scale(base, alpha)
    sigma = float(np.std(np.concatenate([np.ravel(w) for w in scaled.weights])))
    assert abs(sigma / width ** (-gamma / 2) - 1) < tol
    assert abs(float(init.entry_std(scaled)) / width ** (-gamma / 2) - 1) < tol
    explicit = DeepLinear(widths, key=getkey(), std=init.gamma_std(width, gamma))
    sigma_explicit = float(np.std(np.concatenate([np.ravel(w) for w in explicit.weights])))
    assert abs(sigma_explicit / width ** (-gamma / 2) - 1) < tol


def test_freeze_flow(getkey):
    """With `freeze`, frozen layers do not move under gradient_flow, the solution's state holds
    only the trainable layers, and the net is 2-homogeneous in those two layers (SPEC §2)."""
    # `smoothing` lets the flow pass kinks it slides along (most draws reach one before t = 5,
    # where the exact net's steps collapse; `test_smoothed_relu_flow_passes_a_sliding_kink`).
    # Over 40 draws at t = 1 every flow succeeded in ≤ 131 steps and each trainable layer moved
    # by ≥ 2.8e−3.
    net = init.scale(DeepReLU((3, 6, 6, 6, 2), key=getkey(), smoothing=1e-4), 0.5)
    x = jr.normal(getkey(), (12, 3))
    loss = sj.SquareLoss(x, jr.normal(getkey(), (12, 2)))
    spec = sj.freeze(net, lambda m: m.weights[1:-1])
    assert spec.weights == (True, False, False, True)
    sol = sj.gradient_flow(loss, net, 1.0, trainable=spec, n_save=8, rtol=1e-8, throw=False)
    assert sol.result == sj.RESULTS.successful, sj.RESULTS[sol.result]
    assert sol.params.weights[1] is None and sol.params.weights[2] is None
    assert sol.params.weights[0].shape == (8, 6, 3)
    final = sol.final_params
    for i in (1, 2):
        np.testing.assert_array_equal(final.weights[i], net.weights[i])
    for i in (0, 3):
        assert float(jnp.linalg.norm(final.weights[i] - net.weights[i])) > MOVED
    assert float(sol.loss[-1]) < float(sol.loss[0])
    # 2-homogeneity in the trainable part only.
    state, static = eqx.partition(final, spec)
    lam = 1.7
    f = jax.vmap(final)(x)
    f_scaled = jax.vmap(eqx.combine(init.scale(state, lam), static))(x)
    # Relative to the output scale: an entry that is a near-cancelling sum of products (here
    # 1e−9 against outputs of 3e−3) carries rounding of the size of its terms, not of itself
    # (a random draw gave 3e−10 relative on such an entry, 4e−19 absolute).
    scale = float(jnp.max(jnp.abs(f)))
    np.testing.assert_allclose(
        f_scaled, lam**2 * f, rtol=HOMOGENEITY_RTOL, atol=HOMOGENEITY_RTOL * lam**2 * scale
    )
    # gradient_descent honours the same spec.
    gd = sj.gradient_descent(loss, net, learning_rate=1e-2, steps=20, trainable=spec)
    np.testing.assert_array_equal(gd.final_params.weights[2], net.weights[2])
