"""Objectives (SPEC §3) and the papers' data builders (SPEC §6, §10, §11)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax.nn import DeepLinear, TwoLayer

# Loss values are short sums of float64 products: rounding ~1e-15 relative; 1e-12 is safe.
RTOL = 1e-12


def test_mse_paper_normalisation(getkey):
    """SquareLoss defaults to Jacot's C(A) = (1/N)‖AX − Y‖_F² (columns = samples), on a network,
    on its list of matrices and via `matrix_cost` (SPEC §3)."""
    n, x = 9, jr.normal(getkey(), (9, 4))
    y = jr.normal(getkey(), (n, 3))
    net = DeepLinear((4, 5, 3), key=getkey())
    a = np.asarray(net.weights[1]) @ np.asarray(net.weights[0])
    X, Y = np.asarray(x).T, np.asarray(y).T
    expected = np.linalg.norm(a @ X - Y, "fro") ** 2 / n
    loss = sj.SquareLoss(x, y)
    np.testing.assert_allclose(loss(net), expected, rtol=RTOL)
    np.testing.assert_allclose(loss(list(net.weights)), expected, rtol=RTOL)
    np.testing.assert_allclose(loss.matrix_cost(jnp.asarray(a)), expected, rtol=RTOL)


def test_mse_gradient_at_zero(getkey):
    """∇C(0) = −(2/N) Y Xᵀ for the linear model and the paper's MSE (SPEC §3)."""
    x = jr.normal(getkey(), (11, 4))
    y = jr.normal(getkey(), (11, 3))
    X, Y = np.asarray(x).T, np.asarray(y).T
    g = sj.matrix_cost_gradient_at_zero(sj.SquareLoss(x, y))
    np.testing.assert_allclose(g, -(2 / 11) * Y @ X.T, rtol=RTOL, atol=1e-14)


@pytest.mark.parametrize(
    "normalization, factor",
    [("mean", lambda n: 1 / n), ("half_sum", lambda n: 0.5), ("half_mean", lambda n: 0.5 / n),
     ("sum", lambda n: 1.0)],
)
def test_square_loss_normalizations(getkey, normalization, factor):
    """SquareLoss = c·Σ_i ‖f(x_i) − y_i‖² with c = 1/N, ½, 1/(2N) or 1 (SPEC §3)."""
    x = jr.normal(getkey(), (6, 2))
    y = jr.normal(getkey(), (6, 1))
    net = TwoLayer(2, 5, 1, "tanh", key=getkey())
    f = np.stack([np.asarray(net(xi)) for xi in x])
    expected = factor(6) * np.sum((f - np.asarray(y)) ** 2)
    np.testing.assert_allclose(sj.SquareLoss(x, y, normalization)(net), expected, rtol=RTOL)
    # 1-D targets are scalar outputs.
    np.testing.assert_allclose(
        sj.SquareLoss(x, y[:, 0], normalization)(net), expected, rtol=RTOL
    )


def test_matrix_completion(getkey):
    """MatrixCompletion = (1/N) Σ_observed (A − A*)², the same on a DeepLinear and on its list of
    matrices; its gradient at 0 is −(2/N) M ⊙ A* (SPEC §3)."""
    target = jr.normal(getkey(), (4, 5))
    mask = (jr.uniform(getkey(), (4, 5)) < 0.6).at[0, 0].set(True)
    obj = sj.MatrixCompletion(target, mask)
    net = DeepLinear((5, 6, 6, 4), key=getkey())
    w = [np.asarray(x) for x in net.weights]
    a = w[2] @ w[1] @ w[0]
    m = np.asarray(mask, dtype=float)
    n_obs = m.sum()
    expected = np.sum(m * (a - np.asarray(target)) ** 2) / n_obs
    np.testing.assert_allclose(obj(net), expected, rtol=RTOL)
    np.testing.assert_allclose(obj(list(net.weights)), expected, rtol=RTOL)
    np.testing.assert_allclose(obj(tuple(net.weights)), expected, rtol=RTOL)
    np.testing.assert_allclose(
        sj.matrix_cost_gradient_at_zero(obj), -2 / n_obs * m * np.asarray(target), rtol=RTOL
    )


def test_logistic_loss(getkey):
    """LogisticLoss = (1/N) Σ log(1 + e^{−y f}) and ∂L/∂f at 0 = −y/(2N) (SPEC §3, §5)."""
    x = jr.normal(getkey(), (8, 3))
    y = jnp.where(jr.uniform(getkey(), (8,)) < 0.5, -1.0, 1.0)
    net = TwoLayer(3, 4, 1, "relu", key=getkey(), std=2.0)
    f = np.stack([np.asarray(net(xi))[0] for xi in x])
    expected = np.mean(np.log1p(np.exp(-np.asarray(y) * f)))
    loss = sj.LogisticLoss(x, y)
    np.testing.assert_allclose(loss(net), expected, rtol=RTOL)
    np.testing.assert_allclose(
        loss.output_gradient_at_zero()[:, 0], -np.asarray(y) / (2 * 8), rtol=RTOL
    )


def test_matrix_completion_problem(getkey):
    """The matrix-completion builder: shapes, exactly round(p·n·m) observed entries, a target of
    the requested rank, determinism from the key (SPEC §11)."""
    key = getkey()
    p = sj.matrix_completion_problem(key, n=10, rank=3, observed=0.5)
    assert p.target.shape == p.mask.shape == (10, 10)
    assert int(p.mask.sum()) == 50
    assert set(np.unique(np.asarray(p.mask))) == {0.0, 1.0}
    assert np.linalg.matrix_rank(np.asarray(p.target)) == 3
    q = sj.matrix_completion_problem(key, n=10, rank=3, observed=0.5)
    np.testing.assert_array_equal(p.target, q.target)
    np.testing.assert_array_equal(p.mask, q.mask)
    r = sj.matrix_completion_problem(getkey(), n=10, rank=3, observed=0.5)
    assert not np.array_equal(p.mask, r.mask)
    # Jacot Fig. 3: 30 × 30, rank 1, 20 % observed.
    f3 = sj.matrix_completion_problem(getkey(), n=30, rank=1, observed=0.2)
    assert int(f3.mask.sum()) == 180 and np.linalg.matrix_rank(np.asarray(f3.target)) == 1
    assert int(sj.random_mask(getkey(), (7, 3), 0.3).sum()) == round(0.3 * 21)


def test_teacher_problems(getkey):
    """Diagonal teacher 10·diag(1..5) with Gaussian inputs; the noisy rank-3 teacher with noiseless
    test labels; deterministic in the key (Jacot Fig. 2, 6; SPEC §11)."""
    key = getkey()
    d = sj.diagonal_teacher_problem(key, n_samples=20)
    assert d.x.shape == d.y.shape == (20, 5)
    np.testing.assert_allclose(d.y, d.x @ np.diag([10.0, 20, 30, 40, 50]), rtol=RTOL)
    np.testing.assert_array_equal(sj.diagonal_teacher_problem(key, n_samples=20).x, d.x)
    tt = sj.noisy_low_rank_problem(getkey(), n=10, rank=3, n_train=30, n_test=40)
    assert tt.train.x.shape == (30, 10) and tt.test.y.shape == (40, 10)
    assert np.linalg.matrix_rank(np.asarray(tt.teacher)) == 3
    np.testing.assert_allclose(tt.test.y, tt.test.x @ tt.teacher.T, rtol=RTOL, atol=1e-12)
    residual = np.asarray(tt.train.y - tt.train.x @ tt.teacher.T)
    # Noise of std 0.2 over 300 entries: the sample std lies within 20 % of 0.2 (≈ 5 std errors).
    assert abs(residual.std() / 0.2 - 1) < 0.2


def test_clw_and_squared_relu_problems(getkey):
    """Chen–Luo–Wang: equidistant x on [−15, 15] and their targets, ½·mean loss; Kumar–Haupt:
    unit-norm inputs, y = 5 max(0, x₁)² + 4 max(0, x₂)², ½·sum loss (SPEC §6, §10)."""
    p = sj.clw_problem("three_tanh", n_samples=101)
    x = np.asarray(p.x[:, 0])
    np.testing.assert_allclose(x, np.linspace(-15, 15, 101), rtol=RTOL, atol=1e-14)
    expected = np.tanh(x + 7.5) + np.tanh(x) + np.tanh(x - 7.5)
    np.testing.assert_allclose(p.y[:, 0], expected, rtol=RTOL, atol=1e-15)
    assert p.normalization == "half_mean"
    k = sj.squared_relu_toy_problem(getkey(), n_samples=50)
    xs = np.asarray(k.x)
    np.testing.assert_allclose(np.linalg.norm(xs, axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(
        k.y[:, 0], 5 * np.maximum(xs[:, 0], 0) ** 2 + 4 * np.maximum(xs[:, 1], 0) ** 2,
        rtol=RTOL, atol=1e-15,
    )
    assert k.normalization == "half_sum"


def test_objective_is_jittable_and_data_do_not_retrace(getkey):
    """An objective's data are pytree leaves: a new data set of the same shapes does not retrace a
    jitted loss (STYLE: JAX contract)."""
    net = DeepLinear((3, 4, 2), key=getkey())
    traces = []

    @jax.jit
    def loss_of(obj):
        traces.append(1)
        return obj(net)

    for _ in range(3):
        obj = sj.SquareLoss(jr.normal(getkey(), (5, 3)), jr.normal(getkey(), (5, 2)))
        np.testing.assert_allclose(loss_of(obj), obj(net), rtol=RTOL)
    assert len(traces) == 1
