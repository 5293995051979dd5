"""Hessian spectra and matrix diagnostics of trajectories (saddlejax.analysis; SPEC §2, §5, §8)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import saddlejax as sj
from saddlejax.nn import DeepLinear

TSIT5 = diffrax.Tsit5()
_TARGET = jnp.diag(jnp.array([3.0, 2.0, 1.0]))


def _loss(net):
    """L(θ) = ½‖W_L ⋯ W_1 − diag(3, 2, 1)‖_F²: ∇C(0) = −diag(3, 2, 1)."""
    return 0.5 * jnp.sum((net.matrix() - _TARGET) ** 2)


def _dense_hessian(net):
    """∇²L at `net` as a dense P × P matrix (`jax.hessian` on the raveled parameters)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda x: _loss(eqx.combine(unravel(x), static)))(flat))


def _ritz_atol(H, exact, tol=1e-9):
    """Per-eigenvalue bound on LOBPCG's eigenvalue error at `hessian_spectrum`'s stopping test:
    residual r ≤ 100·P·tol·‖H‖₂ (LOBPCG stops at ≲ 60·P·tol·‖H‖₂), and a Ritz value is within
    min(r, r²/gap) of its eigenvalue (Kato–Temple), gap = distance to the nearest other one.
    Below the gap whenever r is, so a wrong eigenvalue still fails; floored at 1e-9 (rounding)."""
    r = 100 * H.shape[0] * tol * np.linalg.norm(H, 2)
    gaps = np.array([np.min(np.abs(np.delete(exact, j) - exact[j])) for j in range(exact.size)])
    return np.maximum(1e-9, np.minimum(r, r**2 / np.maximum(gaps, 1e-300)))


def _assert_extremes(spectrum_bottom, spectrum_top, H):
    """The k smallest and largest eigenvalues equal `eigh`'s within `_ritz_atol`."""
    exact = np.linalg.eigvalsh(H)
    atol = _ritz_atol(H, exact)
    k = np.shape(spectrum_bottom)[-1]
    for got, want, bound in (
        (spectrum_bottom, exact[:k], atol[:k]),
        (spectrum_top, exact[::-1][:k], atol[::-1][:k]),
    ):
        assert np.all(np.abs(np.asarray(got) - want) <= bound), (np.asarray(got), want, bound)


def _with_weights(*weights):
    net = DeepLinear((3, 4, 3), key=jr.key(0))
    return eqx.tree_at(lambda m: m.weights, net, tuple(jnp.asarray(w) for w in weights))


def _embed(diag, shape):
    w = np.zeros(shape)
    w[range(len(diag)), range(len(diag))] = np.sqrt(diag)
    return w


# Depth-2 DLN (3, 4, 3), P = 24, at three points: the origin (a saddle whose Hessian
# [[0, Gᵀ⊗I], [G⊗I, 0]]-type block has eigenvalues ±σ_i(∇C(0)) = ±3, ±2, ±1, each n_1 = 4 times),
# the balanced rank-2 saddle A = diag(3, 2, 0) (index 2: the direction −1 on each of the 2 unused
# hidden units), and a random point.
_POINTS = {
    "origin": lambda key: _with_weights(np.zeros((4, 3)), np.zeros((3, 4))),
    "rank2_saddle": lambda key: _with_weights(_embed([3, 2], (4, 3)), _embed([3, 2], (3, 4))),
    "random": lambda key: DeepLinear((3, 4, 3), key=key, std=0.7),
}


@pytest.mark.parametrize("point", list(_POINTS))
def test_hessian_spectrum_matches_eigh(point, getkey):
    """The k = 3 largest and smallest eigenvalues from LOBPCG on HVPs equal those of
    `jnp.linalg.eigh` of the dense Hessian; the eigenvectors have small residuals for the dense
    matrix; `saddle_index` is the number of negative eigenvalues when fewer than k.

    Tolerance: LOBPCG (shifted by 2‖H‖₂) stops when ‖Hv − λv‖ ≲ 60·P·tol·‖H‖₂ ≈ 1.4e-6·‖H‖₂
    (tol = 1e-9, P = 24); we allow 100·P·tol·‖H‖₂ (measured up to ~2e-6·‖H‖₂ at the random
    point). Eigenvalues: within min(r, r²/gap) (`_ritz_atol`), below the spectrum's spacing, so
    a wrong eigenvalue or an HVP of the wrong operator fails."""
    net = _POINTS[point](getkey())
    H = _dense_hessian(net)
    exact = np.linalg.eigvalsh(H)
    spec = sj.hessian_spectrum(_loss, net, k=3, key=getkey())
    assert spec.result == sj.RESULTS.successful
    _assert_extremes(spec.bottom, spec.top, H)
    for lam, vecs in ((spec.top, spec.top_vectors), (spec.bottom, spec.bottom_vectors)):
        U = np.asarray(jax.vmap(lambda v: ravel_pytree(v)[0])(vecs)).T
        np.testing.assert_allclose(np.linalg.norm(U, axis=0), 1.0, atol=1e-10)
        residuals = np.linalg.norm(H @ U - U * np.asarray(lam), axis=0)
        assert np.max(residuals) < 100 * H.shape[0] * 1e-9 * np.linalg.norm(H, 2)
    n_negative = int(np.sum(exact < -1e-6 * np.max(np.abs(exact))))
    assert spec.saddle_index == min(n_negative, 3)
    if point == "origin":
        # Closed form at the origin (Jacot et al. §4): ±σ_i(∇C(0)).
        np.testing.assert_allclose(spec.top, [3.0, 3.0, 3.0], atol=1e-9)
        np.testing.assert_allclose(spec.bottom, [-3.0, -3.0, -3.0], atol=1e-9)
    if point == "rank2_saddle":
        assert n_negative == 2


@pytest.mark.parametrize("seed", [None, 394305431, 1161345067, 1568071252])
def test_trajectory_spectra_warm_start(getkey, seed):
    """Along a saved gradient flow, `trajectory_spectra` (a scan warm-started from the previous
    save point) gives the eigenvalues of `eigh` at every save point, as a Python loop of cold
    `hessian_spectrum` calls does, and needs fewer LOBPCG iterations than the cold calls.
    Regressions: an eigenvalue crosses into the 3 extreme ones between two save points, and the
    warm start converged to the 4th, reported successful: seed 394305431 from a pure warm start
    (error 1.1e−3), seed 1161345067 from one mixed with a random block (error 1.6e−4). Seed
    1568071252: a correct cold start 4e−8 off an eigenvalue 6e−4 from the next, inside the
    r²/gap bound of `_ritz_atol` (3e−7) that a fixed 1e−9 ignored."""
    if seed is not None:
        keys = iter(jr.split(jr.key(seed), 10_000))
        getkey = lambda: next(keys)  # noqa: E731
    net = sj.init.scale(DeepLinear((3, 4, 3), key=getkey()), 0.1)
    ts = jnp.linspace(0.0, 3.0, 11)
    sol = sj.gradient_flow(_loss, net, 3.0, saveat=ts, solver=TSIT5, rtol=1e-8)
    key = getkey()
    spectra = sj.trajectory_spectra(_loss, sol.params, k=3, key=key)
    assert spectra.bottom.shape == (11, 3) and spectra.top.shape == (11, 3)
    assert np.all(spectra.result == sj.RESULTS.successful)
    cold_steps = 0
    for i in range(ts.size):
        point = jax.tree_util.tree_map(lambda x: x[i], sol.params)
        H = _dense_hessian(point)
        _assert_extremes(spectra.bottom[i], spectra.top[i], H)
        cold = sj.hessian_spectrum(_loss, point, k=3, key=key)
        _assert_extremes(cold.bottom, cold.top, H)
        cold_steps += int(cold.stats["num_steps_bottom"] + cold.stats["num_steps_top"])
    warm_steps = spectra.stats["num_steps_bottom"] + spectra.stats["num_steps_top"]
    print(f"LOBPCG iterations: warm-started {warm_steps}, cold total {cold_steps}")
    assert int(np.sum(warm_steps)) < cold_steps


def test_hessian_spectrum_contract(getkey):
    """Settings LOBPCG cannot honour raise a ValueError at trace time; a solve that ran out of
    iterations is reported as `max_steps_reached`, not a success."""
    net = DeepLinear((3, 4, 3), key=getkey(), std=0.7)
    with pytest.raises(ValueError, match="5·k < P"):
        sj.hessian_spectrum(_loss, net, k=5, key=getkey())
    with pytest.raises(ValueError, match="`which`"):
        sj.hessian_spectrum(_loss, net, which="middle", key=getkey())
    spec = sj.hessian_spectrum(_loss, net, k=1, which="top", key=getkey(), max_steps=2)
    assert spec.result == sj.RESULTS.max_steps_reached


def test_matrix_closed_forms(getkey):
    """Effective rank (Roy & Vetterli 2007): k equal non-zero singular values give k, a rank-1
    matrix gives 1, the zero matrix 0 with a zero (finite) gradient; the nuclear norm of a
    diagonal matrix is Σ|d_i|; batching over leading axes; layer norms are Frobenius norms."""
    q1 = np.linalg.qr(np.asarray(jr.normal(getkey(), (5, 5))))[0]
    q2 = np.linalg.qr(np.asarray(jr.normal(getkey(), (4, 4))))[0]
    s = np.zeros((5, 4))
    batch = []
    for k in (1, 2, 3, 4):
        s[:k, :k] = 2.5 * np.eye(k)
        batch.append(q1 @ s @ q2.T)
    np.testing.assert_allclose(sj.effective_rank(jnp.stack(batch)), [1, 2, 3, 4], rtol=1e-12)
    u, v = jr.normal(getkey(), (6,)), jr.normal(getkey(), (3,))
    np.testing.assert_allclose(sj.effective_rank(jnp.outer(u, v)), 1.0, rtol=1e-12)
    # Unequal singular values: exp of the entropy of (1, 3)/4.
    p = np.array([0.25, 0.75])
    expected = np.exp(-np.sum(p * np.log(p)))
    np.testing.assert_allclose(sj.effective_rank(jnp.diag(jnp.array([1.0, 3.0]))), expected)
    zero = jnp.zeros((3, 3))
    assert sj.effective_rank(zero) == 0.0
    assert np.all(np.isfinite(jax.grad(sj.effective_rank)(zero)))
    d = jnp.array([2.0, -1.5, 0.0, 0.25])
    np.testing.assert_allclose(sj.nuclear_norm(jnp.diag(d)), 3.75, rtol=1e-12)
    a = jr.normal(getkey(), (2, 3, 5))
    np.testing.assert_allclose(
        sj.singular_values(a), np.linalg.svd(np.asarray(a), compute_uv=False), rtol=1e-12
    )
    net = DeepLinear((3, 4, 2), key=getkey())
    np.testing.assert_allclose(
        sj.layer_norms(net), [np.linalg.norm(np.asarray(w)) for w in net.weights], rtol=1e-12
    )
    assert np.all(jax.grad(lambda w: sj.layer_norms([w]).sum())(zero) == 0.0)
    with pytest.raises(ValueError, match="matrix"):
        sj.effective_rank(jnp.ones(3))


def test_balancedness_conserved_by_flow(getkey):
    """D_ℓ = W_{ℓ+1}ᵀW_{ℓ+1} − W_ℓW_ℓᵀ is conserved by the gradient flow of a depth-3 DLN
    (SPEC §2) to the integrator's accuracy, and is not conserved when W_1 is frozen (the
    flow of W_2, W_3 alone is a different vector field): the drift test can fail.

    Bound: Tsit5 at rtol = atol = 1e-10 over t ∈ [0, 4]; measured drift 3e-11 – 2e-10 relative
    to ‖D(0)‖ over seeds 0–4, bound 1e-7. With W_1 frozen the drift was 0.42 – 2.9."""
    net = DeepLinear((3, 3, 3, 3), key=getkey(), std=0.6)
    D = sj.balancedness(net)
    w1, w2 = np.asarray(net.weights[0]), np.asarray(net.weights[1])
    np.testing.assert_allclose(D[0], w2.T @ w2 - w1 @ w1.T, rtol=1e-12)
    # One flow saves the weights (for the drift) and the effective rank of A_θ(t) through
    # `observe=`; the latter must equal the effective rank of the saved weights' product.
    observe = lambda m: (m.weights, sj.effective_rank(m.matrix()))  # noqa: E731
    kwargs = dict(saveat=jnp.linspace(0.0, 4.0, 9), solver=TSIT5, rtol=1e-10, atol=1e-10,
                  observe=observe)
    sol = sj.gradient_flow(_loss, net, 4.0, **kwargs)
    weights_t, erank_t = sol.params
    assert sol.loss[-1] < 0.5 * sol.loss[0]  # the flow moved
    drift = sj.balancedness_drift(weights_t)
    assert drift.shape == (2,) and np.max(drift) < 1e-7
    matrices = jax.vmap(lambda w1, w2, w3: w3 @ w2 @ w1)(*weights_t)
    np.testing.assert_allclose(erank_t, sj.effective_rank(matrices), rtol=1e-12)
    frozen = sj.freeze(net, lambda m: m.weights[0])
    sol_frozen = sj.gradient_flow(_loss, net, 4.0, trainable=frozen, **kwargs)
    assert sj.balancedness_drift(sol_frozen.params[0])[0] > 1e-2


def _assert_ritz_values(ritz, exact, atol):
    """Ascending Ritz values from a Rayleigh–Ritz block with residual ≤ `atol`, against the
    ascending exact spectrum: interlacing (ritz[i] ≥ exact[i]), and each within `atol` of an
    eigenvalue (Kahan's bound)."""
    ritz = np.asarray(ritz)
    assert np.all(ritz >= exact[: ritz.size] - 1e-10), (ritz, exact[: ritz.size])
    gaps = np.min(np.abs(ritz[:, None] - exact[None, :]), axis=1)
    assert np.all(gaps <= atol), (ritz, gaps)


def test_spectrum_recorded_during_the_solve(getkey):
    """`spectrum_observable` records the extreme Hessian eigenvalues and the saddle index at the
    save times inside the solve (no parameter history): they equal `eigh` of the dense Hessian
    at the states of a plain solve with the same settings, and the index counts the negative
    eigenvalues."""
    net = sj.init.scale(DeepLinear((3, 4, 3), key=getkey()), 0.01)
    ts = jnp.linspace(0.0, 6.0, 7)
    kwargs = dict(saveat=ts, solver=TSIT5, rtol=1e-10, atol=1e-12)
    obs = sj.spectrum_observable(_loss, key=getkey(), k=4, max_steps=1000, also=lambda m: m.weights)
    sol = sj.gradient_flow(_loss, net, 6.0, observe=obs, **kwargs)
    plain = sj.gradient_flow(_loss, net, 6.0, **kwargs)
    assert sol.params["bottom"].shape == (7, 4) and np.all(sol.params["converged"] == 1.0)
    for i in range(ts.size):
        np.testing.assert_array_equal(sol.params["also"][0][i], plain.params.weights[0][i])
        exact = np.linalg.eigvalsh(_dense_hessian(plain.params_at(i)))
        # LOBPCG stops at a residual ≲ 60·P·tol·‖∇²L‖ ≈ 4e−6 (P = 24, tol = 1e−9, ‖∇²L‖ ≈ 3).
        # What that guarantees: each Ritz value lies within the residual of an eigenvalue, and
        # the i-th is no lower than the i-th eigenvalue (Cauchy interlacing). Eigenvalues
        # closer together than the residual are not told apart (near θ* the flat directions
        # sit at −7e−6, −3e−6, 0 for some seeds, and the 4th Ritz value lands between them). A
        # wrong spectrum is off by O(0.1–1).
        _assert_ritz_values(sol.params["bottom"][i], exact, atol=4e-6)
        _assert_ritz_values(-sol.params["top"][i], -exact[::-1], atol=4e-6)
        # The index counts eigenvalues below −1e−6·max|λ|; one within a factor 2 of that
        # threshold may fall either side (the eigenvalues themselves are good to ~1e−6).
        tol = 1e-6 * np.max(np.abs(exact[[0, 1, 2, 3, -4, -3, -2, -1]]))
        index = int(sol.params["saddle_index"][i])
        assert int(np.sum(exact[:4] < -2 * tol)) <= index <= int(np.sum(exact[:4] < -tol / 2))
    # At t = 0 (θ ≈ 0) the index is at least 4 (eigenvalues ≈ −3, −2, −1, each 4 times).
    assert int(sol.params["saddle_index"][0]) == 4


def test_layer_and_bottleneck_ranks(getkey):
    """A deep ReLU net whose middle layer has rank 2 has bottleneck rank 2; relative and
    absolute tolerances; batching over a leading (time) axis."""
    net = sj.nn.DeepReLU((5, 6, 6, 6, 3), key=getkey())
    u, v = jr.normal(getkey(), (6, 2)), jr.normal(getkey(), (6, 2))
    net = eqx.tree_at(lambda m: m.weights[1], net, u @ v.T)
    ranks = sj.layer_ranks(net, 1e-8)
    np.testing.assert_array_equal(ranks, [5, 2, 6, 3])
    assert int(sj.bottleneck_rank(net, 1e-8)) == 2
    scaled = [1e-3 * w for w in net.weights]  # small weights: absolute rank 0, relative unchanged
    assert int(sj.bottleneck_rank(scaled, 0.1)) == 0
    assert int(sj.bottleneck_rank(scaled, 1e-8, relative=True)) == 2
    stacked = [jnp.stack([w, 0 * w]) for w in net.weights]
    np.testing.assert_array_equal(sj.bottleneck_rank(stacked, 1e-8), [2, 0])


def test_vanishing_hessian_has_index_zero(getkey):
    """At the origin of a depth-3 DLN every second derivative vanishes (the leading Taylor term
    has order 3, SPEC §4): LOBPCG returns rounding noise (~1e−16) of both signs, which the
    saddle index must not count."""
    net = DeepLinear((3, 4, 4, 3), key=getkey())
    zero = jax.tree_util.tree_map(jnp.zeros_like, net)
    spec = sj.hessian_spectrum(lambda m: 0.5 * jnp.sum((m.matrix() - _TARGET) ** 2), zero, k=2,
                               key=getkey())
    assert float(jnp.max(jnp.abs(jnp.concatenate([spec.top, spec.bottom])))) < 1e-12
    assert int(spec.saddle_index) == 0
