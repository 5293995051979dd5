"""gradient_descent: exact iterates, first-order convergence to the flow, instability (SPEC §1)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax import init
from saddlejax.nn import DeepLinear

EIGS = jnp.array([0.1, 0.5, 1.0, 3.0])  # λ_max = 3: GD is stable iff η < 2/3


def _quadratic(key):
    q, _ = jnp.linalg.qr(jr.normal(key, (4, 4)))
    a = q @ jnp.diag(EIGS) @ q.T
    return a, (lambda u: 0.5 * u @ a @ u)


def test_iterates_on_quadratic(getkey):
    """On L = ½uᵀAu, gradient descent is u_k = (I − ηA)^k u₀, saved at t = kη every `save_every`
    iterations, starting with u₀ (SPEC §1: iteration k ↔ time kη)."""
    a, loss = _quadratic(getkey())
    u0 = jr.normal(getkey(), (4,))
    eta = 0.1
    sol = sj.gradient_descent(loss, u0, learning_rate=eta, steps=40, save_every=8)
    ks = np.arange(0, 41, 8)
    np.testing.assert_allclose(sol.ts, eta * ks, rtol=1e-14)
    step = np.eye(4) - eta * np.asarray(a)
    exact = np.stack([np.linalg.matrix_power(step, k) @ np.asarray(u0) for k in ks])
    # 40 products with a contraction in float64: rounding ~1e−14.
    np.testing.assert_allclose(sol.params, exact, rtol=1e-11, atol=1e-13)
    assert int(sol.stats["num_steps"]) == 40 == int(sol.stats["grad_evals"])
    assert sol.result == sj.RESULTS.successful


def test_default_save_every_divides_steps(getkey):
    """Without `save_every`, any step count works: the default divides `steps` and gives about
    256 saves (steps = 1000 → every 4th iterate, 251 saves including k = 0)."""
    _, loss = _quadratic(getkey())
    sol = sj.gradient_descent(loss, jr.normal(getkey(), (4,)), learning_rate=1e-3, steps=1000)
    assert sol.ts.shape == (251,)
    np.testing.assert_allclose(sol.ts[-1], 1.0, rtol=1e-14)


def test_converges_to_flow_at_order_one():
    """Gradient descent (explicit Euler) converges to the gradient flow at order 1 in η: the
    fitted slope of log ‖θ_GD(T) − θ(T)‖ against log η lies in [0.85, 1.15] (SPEC §1)."""
    problem = sj.matrix_completion_problem(jr.key(0), n=3, rank=2, observed=0.7)
    net = init.scale(DeepLinear((3, 4, 4, 3), key=jr.key(1)), 1.0)
    horizon = 2.0
    flow = sj.gradient_flow(problem, net, horizon, saveat=[0.0, horizon], rtol=1e-12)
    target = np.concatenate([np.ravel(w[-1]) for w in flow.params.weights])
    etas = horizon / np.array([50, 100, 200, 400])
    errors = []
    for eta in etas:
        # One compilation for every η: 400 steps saved every 50, so t = T is save index
        # (T/η)/50 for each η (learning_rate is traced).
        sol = sj.gradient_descent(
            problem, net, learning_rate=eta, steps=400, save_every=50, throw=False
        )
        i = int(round(horizon / eta)) // 50
        np.testing.assert_allclose(sol.ts[i], horizon, rtol=1e-12)
        gd = np.concatenate([np.ravel(w[i]) for w in sol.params.weights])
        errors.append(np.linalg.norm(gd - target))
    slope = np.polyfit(np.log(etas), np.log(errors), 1)[0]
    # Euler's global error is C·η + O(η²); over η ∈ [0.005, 0.04] the O(η²) term bends the slope
    # by a few per cent (the flow reference at rtol 1e−12 is 1e6× more accurate than the
    # smallest error); measured 0.999. A second-order method would give ≈ 2, a wrong time axis ≈ 0.
    assert 0.85 <= slope <= 1.15, (slope, errors)


def test_unstable_step_is_reported(getkey):
    """Above 2/λ_max(∇²L) gradient descent diverges: RESULTS.nonfinite_trajectory (or a
    RuntimeError with throw=True, also under jit); just below it converges (SPEC §1,
    PERF-NOTES)."""
    _, loss = _quadratic(getkey())
    u0 = jr.normal(getkey(), (4,))
    # |1 − ηλ_max| = 1.4 at η = 0.8: overflow after ~2,100 iterations.
    bad = sj.gradient_descent(loss, u0, learning_rate=0.8, steps=4000, save_every=100,
                              throw=False)
    assert bad.result == sj.RESULTS.nonfinite_trajectory
    # The first saved NaN/Inf: the loss grows as 1.4^(2k) from O(1), overflowing float64
    # (1.8e308) after ≈ 1,055 iterations of the loss; saved every 100 steps, η = 0.8.
    first_bad = float(bad.stats["nonfinite_time"])
    losses = np.asarray(bad.loss)
    k = int(np.argmax(~np.isfinite(losses)))
    assert first_bad == pytest.approx(float(bad.ts[k])) and 0 < first_bad < float(bad.ts[-1])
    assert np.all(np.isfinite(losses[:k]))
    assert float(sj.gradient_descent(loss, u0, learning_rate=0.6, steps=400, save_every=100)
                 .stats["nonfinite_time"]) == np.inf
    with pytest.raises(RuntimeError, match="learning_rate"):
        sj.gradient_descent(loss, u0, learning_rate=0.8, steps=4000, save_every=100)
    # Under jit the failure is a runtime error with the same message (`result.error_if` on the
    # returned solution).
    jitted = eqx.filter_jit(
        lambda lr: sj.gradient_descent(loss, u0, learning_rate=lr, steps=4000, save_every=100).loss
    )
    with pytest.raises(RuntimeError, match="learning_rate"):
        jax.block_until_ready(jitted(jnp.asarray(0.8)))
    # |1 − ηλ_max| = 0.8 at η = 0.6: converges; the slowest mode (λ = 0.1) decays as 0.94^k.
    good = sj.gradient_descent(loss, u0, learning_rate=0.6, steps=4000, save_every=100)
    assert good.result == sj.RESULTS.successful
    assert float(good.loss[-1]) < 1e-20 * max(float(good.loss[0]), 1.0)
