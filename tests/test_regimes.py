"""Regime diagnostics (Jacot et al. §3–4, Thm 1; SPEC §8): the empirical NTK against closed
forms and an explicit Jacobian, its expectation E[Θ] = L·w^{(1−γ)(L−1)} δδ, the lazy regime
(NTK nearly fixed) against the saddle-to-saddle regime, and the distance bounds of Thm 1."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import saddlejax as sj
from saddlejax.analysis import (
    distance_exponents,
    expected_dln_ntk,
    matrix_ntk,
    minimum_distance_bound,
    ntk,
    ntk_change,
    saddle_distance_bound,
)
from saddlejax.nn import DeepLinear, DeepReLU, TwoLayer

# Kernels are sums of a few hundred products: only rounding separates two ways of computing them.
EXACT = 1e-12


def test_ntk_two_layer_linear_closed_form(getkey):
    """For f(x) = W_2 W_1 x: Θ(x, x')_{ab} = (W_2W_2ᵀ)_{ab} xᵀx' + δ_ab (W_1x)ᵀ(W_1x') — the
    two terms are the gradients with respect to W_1 and W_2 (cross-kernel x ≠ x')."""
    net = DeepLinear((3, 5, 2), key=getkey(), std=0.7)
    w1, w2 = net.weights
    x, x2 = jr.normal(getkey(), (4, 3)), jr.normal(getkey(), (6, 3))
    k = ntk(net, x, x2)
    assert k.shape == (4, 2, 6, 2)
    expected = jnp.einsum("ab,ij->iajb", w2 @ w2.T, x @ x2.T) + jnp.einsum(
        "ab,ij->iajb", jnp.eye(2), (x @ w1.T) @ (x2 @ w1.T).T
    )
    np.testing.assert_allclose(k, expected, atol=EXACT * float(jnp.abs(expected).max()))


@eqx.filter_jit
def _flat_jacobian_gram(net, trainable, x):
    state, static = eqx.partition(net, trainable)
    flat, unravel = ravel_pytree(state)
    jac = jax.jacfwd(lambda p: jax.vmap(eqx.combine(unravel(p), static))(x).reshape(-1))(flat)
    return (jac @ jac.T).reshape(x.shape[0], -1, x.shape[0], jac.shape[0] // x.shape[0])


@pytest.mark.parametrize("case", ["relu", "tanh"])
def test_ntk_is_the_gram_of_the_flat_jacobian(getkey, case):
    """Θ = J Jᵀ with J the Jacobian of the stacked outputs (n·n_out rows) with respect to the
    flattened parameters (forward mode, an independent computation); with `trainable=` (a
    frozen middle layer of a leaky-ReLU net) only the trainable parameters' columns count."""
    x = jr.normal(getkey(), (5, 3))
    if case == "tanh":
        net = TwoLayer(3, 7, 2, "tanh", key=getkey())
        full = _flat_jacobian_gram(net, eqx.is_inexact_array, x)
        np.testing.assert_allclose(ntk(net, x), full, atol=EXACT * float(jnp.abs(full).max()))
        return
    net = DeepReLU((3, 6, 5, 2), 0.1, key=getkey())
    frozen = sj.freeze(net, lambda m: m.weights[1])
    full = _flat_jacobian_gram(net, eqx.is_inexact_array, x)
    part = _flat_jacobian_gram(net, frozen, x)
    np.testing.assert_allclose(ntk(net, x), full, atol=EXACT * float(jnp.abs(full).max()))
    np.testing.assert_allclose(
        ntk(net, x, trainable=frozen), part, atol=EXACT * float(jnp.abs(part).max())
    )
    assert float(jnp.abs(full - part).max()) > 1e-3  # freezing does change the kernel


def test_matrix_ntk_against_jacobian_and_function_ntk(getkey):
    """`matrix_ntk` (closed form Σ_ℓ B_ℓB_ℓᵀ ⊗ C_ℓᵀC_ℓ) equals ⟨∇_θA_ij, ∇_θA_kl⟩ from
    `jax.jacrev` of A_θ, equals `ntk` of the network at the standard basis inputs
    (Θ(x ⊗ y) = Σ_jl Θ^{jl} x_j y_l, Jacot et al. §4), and is batched over a leading axis."""
    net = DeepLinear((3, 4, 5, 2), key=getkey(), std=0.6)
    k = matrix_ntk(net)
    assert k.shape == (2, 3, 2, 3)
    jac = jax.jacrev(sj.nn.end_to_end_matrix)(net.weights)
    explicit = sum(jnp.einsum("ij...,kl...->ijkl", j, j) for j in jac)
    scale = float(jnp.abs(explicit).max())
    np.testing.assert_allclose(k, explicit, atol=EXACT * scale)
    np.testing.assert_allclose(
        ntk(net, jnp.eye(3)), jnp.einsum("ijkl->jilk", k), atol=EXACT * scale
    )
    stacked = tuple(jnp.stack([w, 2 * w]) for w in net.weights)
    batched = matrix_ntk(stacked)
    np.testing.assert_allclose(batched[0], k, atol=EXACT * scale)
    np.testing.assert_allclose(batched[1], 2 ** (2 * 2) * k, rtol=1e-12)  # Θ is 2(L−1)-homogeneous


def _gaussian_layers(key, widths, std, m):
    """m i.i.d. draws of (W_1, …, W_L), W_ℓ with N(0, σ_ℓ²) entries, stacked on a leading axis
    (numpy's generator: no per-shape compilation)."""
    rng = np.random.default_rng(np.asarray(jr.key_data(key)))
    stds = (std,) * (len(widths) - 1) if isinstance(std, float) else std
    return tuple(
        jnp.asarray(s * rng.normal(size=(m, n_out, n_in)))
        for n_in, n_out, s in zip(widths[:-1], widths[1:], stds)
    )


@pytest.mark.parametrize(
    "widths, std",
    [
        ((3, 16, 16, 2), sj.init.gamma_std(16, 0.75)),  # σ² = w^{−γ}, γ = 0.75 ≥ 1 − 1/L
        ((3, 8, 12, 2), (0.5, 0.3, 0.2)),  # non-rectangular, one σ per layer
    ],
)
def test_expected_ntk_monte_carlo(getkey, widths, std):
    """E[Θ_{ij,kl}] = c δ_ik δ_jl with c = (n_1⋯n_{L−1}) Σ_ℓ Π_{m≠ℓ} σ_m², which for σ² = w^{−γ}
    is Jacot et al.'s L·w^{(1−γ)(L−1)} (§4, standard parametrisation A = W_L⋯W_1, no input
    scaling: it is the kernel of the entries of A, i.e. of f at orthonormal inputs; it holds
    at every width, not only as w → ∞).

    Monte Carlo over M = 1000 draws: each of the 36 entries' sample mean is within 5 standard
    errors (estimated from the draws) of c δδ — a false alarm has probability < 36·6e-7 — and
    the standard errors are below 5 % of c, so a wrong constant (a missing factor L, a power of
    w off by one) would fail by far more than the tolerance."""
    m = 1000
    draws = matrix_ntk(_gaussian_layers(getkey(), widths, std, m))
    c = expected_dln_ntk(widths, std)
    if isinstance(std, float):
        depth, w = len(widths) - 1, widths[1]
        np.testing.assert_allclose(c, depth * w ** ((1 - 0.75) * (depth - 1)), rtol=1e-12)
    n_out, n_in = widths[-1], widths[0]
    expected = c * jnp.einsum("ik,jl->ijkl", jnp.eye(n_out), jnp.eye(n_in))
    mean = draws.mean(0)
    stderr = draws.std(0, ddof=1) / np.sqrt(m)
    assert float(stderr.max()) < 0.05 * c
    assert float(jnp.max(jnp.abs(mean - expected) / stderr)) < 5.0


def test_lazy_versus_saddle_to_saddle(getkey):
    """Jacot et al. §4–5: for γ = 1 − 1/L (NTK parametrisation, L = 2, w = 64) the NTK of the
    entries of A barely moves while the matrix-completion loss halves (relative change < 0.05,
    ≈ w^{−1/2} scale); for γ = 2 (saddle-to-saddle) Θ₀ ≈ 2/w and the kernel at the same loss
    level is many times larger (relative change > 3). Same seed and data for both."""
    problem = sj.matrix_completion_problem(getkey(), n=4, rank=2)
    key = getkey()
    changes = {}
    for gamma, t1 in ((0.5, 0.5), (2.0, 40.0)):
        ws = DeepLinear((4, 64, 4), key=key, std=sj.init.gamma_std(64, gamma)).weights
        sol = sj.gradient_flow(
            problem,
            ws,
            t1,
            solver=diffrax.Tsit5(),
            rtol=1e-6,
            saveat=jnp.linspace(0.0, t1, 101),
        )
        loss = np.asarray(sol.loss)
        i = int(np.argmax(loss <= 0.5 * loss[0]))
        assert loss[i] <= 0.5 * loss[0] and i >= 3  # the loss halved, resolved on the grid
        k_t = matrix_ntk(tuple(p[i] for p in sol.params))
        changes[gamma] = float(ntk_change(matrix_ntk(ws), k_t))
    assert changes[0.5] < 0.05
    assert changes[2.0] > 3.0


def test_saddle_distance_bound(getkey):
    """W_1 = W_L = 0 is a critical point of a matrix-completion loss (L = 3) at distance
    √(‖W_1‖² + ‖W_L‖²) from θ; for i.i.d. N(0, σ²) entries ‖W_1‖² + ‖W_L‖² is σ² times a
    χ² with (n_0 + n_L)w degrees of freedom, so over M = 400 draws its mean is within 5 exact
    standard errors √(2(n_0 + n_L)w/M)·σ² of σ²(n_0 + n_L)w (Jacot et al. App. B.2)."""
    problem = sj.matrix_completion_problem(getkey(), n=4, rank=2)
    net = DeepLinear((4, 6, 6, 4), key=getkey())
    saddle = (jnp.zeros_like(net.weights[0]), net.weights[1], jnp.zeros_like(net.weights[2]))
    grad = jax.jit(jax.grad(problem))(saddle)
    assert max(float(jnp.abs(g).max()) for g in grad) == 0.0
    assert float(problem(saddle)) > 0  # not a minimum: 0 does not fit the observed entries
    dist = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(net.weights, saddle)))
    np.testing.assert_allclose(saddle_distance_bound(net), dist, rtol=EXACT)

    w, sigma, m = 16, sj.init.gamma_std(16, 1.5), 400
    sq = saddle_distance_bound(_gaussian_layers(getkey(), (3, w, w, 2), sigma, m)) ** 2
    assert sq.shape == (m,)
    dof = (3 + 2) * w
    assert abs(float(sq.mean()) - sigma**2 * dof) < 5 * sigma**2 * np.sqrt(2 * dof / m)


def test_minimum_distance_bound(getkey):
    """ΔW_L = (A* − A_θ)C⁺ (C = W_{L−1}⋯W_1, full column rank) reaches A* exactly and its norm
    is the bound (numpy least squares, independent); a C that cannot reach A* — narrower than
    n_0, or with a zero column — gives +inf; and the Thm 1 picture at w = 256, L = 2: for
    γ = 1/2 the minimum is much closer than the saddle bound, for γ = 2 the saddle bound is
    small."""
    target = jr.normal(getkey(), (2, 3))
    net = DeepLinear((3, 5, 4, 2), key=getkey())
    w1, w2, w3 = (np.asarray(w) for w in net.weights)
    c = w2 @ w1
    delta = np.linalg.lstsq(c.T, (np.asarray(target) - w3 @ c).T, rcond=None)[0].T
    np.testing.assert_allclose((w3 + delta) @ c, target, atol=1e-12)
    np.testing.assert_allclose(
        minimum_distance_bound(net, target), np.linalg.norm(delta), rtol=1e-10
    )
    narrow = _gaussian_layers(getkey(), (3, 2, 2), 1.0, 1)
    assert float(minimum_distance_bound(narrow, jnp.ones((2, 3)))[0]) == np.inf
    dead_input = (net.weights[0].at[:, 0].set(0.0),) + net.weights[1:]  # C e_1 = 0
    assert float(minimum_distance_bound(dead_input, target)) == np.inf

    key, a_star = getkey(), jr.normal(getkey(), (4, 4))
    lazy = _gaussian_layers(key, (4, 256, 4), sj.init.gamma_std(256, 0.5), 1)
    assert float(minimum_distance_bound(lazy, a_star)[0]) < 0.3 * float(
        saddle_distance_bound(lazy)[0]
    )
    small = _gaussian_layers(key, (4, 256, 4), sj.init.gamma_std(256, 2.0), 1)
    assert float(saddle_distance_bound(small)[0]) < 0.3


def test_distance_exponents():
    """Thm 1: (e_m, e_s) = (−(1−γ)(L−1)/2, (1−γ)/2) for γ < 1, (0, 0) at γ = 1,
    (0, −(γ−1)/2) for γ > 1; γ < 1 − 1/L is refused."""
    assert distance_exponents(0.5, 2) == (-0.25, 0.25)
    assert distance_exponents(0.75, 4) == pytest.approx((-0.375, 0.125))
    assert distance_exponents(1.0, 3) == (0.0, 0.0)
    assert distance_exponents(2.0, 4) == (0.0, -0.5)
    with pytest.raises(ValueError, match="gamma"):
        distance_exponents(0.4, 2)
    with pytest.raises(ValueError, match="depth"):
        distance_exponents(1.0, 1)


def test_ntk_change_safe_at_zero(getkey):
    """‖Θ₁ − Θ₀‖/‖Θ₀‖ with the conventions 0/0 = 0 and x/0 = inf, and a zero (not NaN)
    derivative where Θ₁ = Θ₀ and where Θ₀ = Θ₁ = 0."""
    k0 = jr.normal(getkey(), (2, 3, 2, 3))
    k1 = k0 + 0.1 * jr.normal(getkey(), k0.shape)
    np.testing.assert_allclose(
        ntk_change(k0, k1), jnp.linalg.norm((k1 - k0).ravel()) / jnp.linalg.norm(k0.ravel())
    )
    zero = jnp.zeros_like(k0)
    assert float(ntk_change(zero, zero)) == 0.0
    assert float(ntk_change(zero, k1)) == np.inf
    for a, b in ((k0, k0), (zero, zero)):
        g0, g1 = jax.grad(ntk_change, argnums=(0, 1))(a, b)
        assert bool(jnp.all(jnp.isfinite(g0))) and bool(jnp.all(jnp.isfinite(g1)))
        assert float(jnp.abs(g1).max()) == 0.0


def test_validation(getkey):
    """Wrong inputs raise ValueError naming the argument."""
    net = DeepLinear((3, 4, 2), key=getkey())
    with pytest.raises(ValueError, match="`x`"):
        ntk(net, jnp.ones(3))
    with pytest.raises(ValueError, match="`x2`"):
        ntk(net, jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="matrix_ntk"):
        ntk(net.weights, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="k0"):
        ntk_change(jnp.ones((2, 2)), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="target"):
        minimum_distance_bound(net, jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="weights"):
        saddle_distance_bound((jnp.ones((3, 3)),))
