"""`sliding_flow`: the Filippov gradient flow of losses with ReLU kinks, against closed forms,
scipy on the reduced (sliding) ODE, and the smoothed nets' flows as ε → 0."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

import saddlejax as sj
from saddlejax.flow._sliding import DENSE_WINDOW
from saddlejax.nn import relu

B = np.array([0.3, 1.5])


def _curved(y):
    """|z| + ¼‖θ − b‖² with z = θ₀ − θ₁² (|z| = 2 relu(z) − z): from (2, 0.2) the flow reaches
    the parabola z = 0 and slides along it to the minimum of ¼‖θ − b‖² on it."""
    z = y[0] - y[1] ** 2
    return 2 * relu(z) - z + 0.25 * jnp.sum((y - B) ** 2)


def test_sliding_along_a_curved_kink_matches_the_reduced_ode():
    # Reference: the smooth phase (z > 0: L = z + q) to the parabola, located by scipy, then the
    # sliding ODE on it, θ = (u², u), u' = tᵀ(−∇q) t₁ with t the unit tangent (2u, 1)/‖·‖.
    def smooth(t, y):
        return -(np.array([1.0, -2 * y[1]]) + 0.5 * (y - B))

    def hit(t, y):
        return y[0] - y[1] ** 2

    hit.terminal = True
    tol = dict(rtol=1e-12, atol=1e-14)
    first = solve_ivp(smooth, (0, 5), [2.0, 0.2], events=hit, **tol)
    t_hit, u_hit = first.t_events[0][0], first.y_events[0][0][1]

    def slide(t, u):
        theta = np.array([u[0] ** 2, u[0]])
        tangent = np.array([2 * u[0], 1.0]) / np.hypot(2 * u[0], 1.0)
        return [tangent[1] * (tangent @ (-0.5 * (theta - B)))]

    ts = np.linspace(0.0, 5.0, 11)
    late = ts[ts > t_hit]
    second = solve_ivp(slide, (t_hit, 5), [u_hit], t_eval=late, **tol)
    sol = sj.sliding_flow(_curved, jnp.array([2.0, 0.2]), 5.0, saveat=ts, rtol=1e-10)
    assert sol.successful
    assert int(sol.stats["slides_started"]) == 1 and int(sol.stats["slides_ended"]) == 0
    u = np.asarray(sol.params)[ts > t_hit]
    # rtol 1e−10 on a flow of unit scale: 1e−8 leaves room for the located switch time
    np.testing.assert_allclose(u[:, 1], second.y[0], atol=1e-8)
    np.testing.assert_allclose(u[:, 0], second.y[0] ** 2, atol=1e-8)
    # on the kink ∇L jumps, but the sliding velocity decays to 0 at the constrained minimum
    assert float(sol.grad_norm[-1]) < 0.1 * float(sol.grad_norm[ts > t_hit][0])


def _released(y):
    """|θ₀| + ½(θ₁ − 1)² + 2θ₀θ₁: on θ₀ = 0 the normal force 2θ₁ ± 1 holds the flow there while
    |2θ₁| < 1; θ₁ → 1 releases it at θ₁ = ½, to θ₀ < 0."""
    return 2 * relu(y[0]) - y[0] + 0.5 * (y[1] - 1) ** 2 + 2 * y[0] * y[1]


def test_a_slide_ends_where_its_filippov_weight_leaves_the_unit_interval():
    tol = dict(rtol=1e-12, atol=1e-14)

    def on_positive(t, y):
        return [-(1 + 2 * y[1]), -(y[1] - 1 + 2 * y[0])]

    def reached(t, y):
        return y[0]

    reached.terminal = True
    first = solve_ivp(on_positive, (0, 3), [0.3, 0.0], events=reached, **tol)
    t_hit, u = first.t_events[0][0], first.y_events[0][0][1]
    t_release = t_hit + np.log((1 - u) / 0.5)  # θ₁' = 1 − θ₁ while sliding, to θ₁ = ½
    after = solve_ivp(lambda t, y: [1 - 2 * y[1], -(y[1] - 1 + 2 * y[0])],
                      (t_release, 3), [0.0, 0.5], **tol)
    ts = np.array([0.0, 0.5 * (t_hit + t_release), 3.0])
    sol = sj.sliding_flow(_released, jnp.array([0.3, 0.0]), 3.0, saveat=ts, rtol=1e-10)
    assert sol.successful
    assert int(sol.stats["slides_started"]) == 1 and int(sol.stats["slides_ended"]) == 1
    mid = 1 - (1 - u) * np.exp(-(ts[1] - t_hit))
    np.testing.assert_allclose(np.asarray(sol.params)[1], [0.0, mid], atol=1e-9)
    # the end lies 2.2 time units of an unstable flow after the release: 1e−6 of its scale 5
    np.testing.assert_allclose(np.asarray(sol.params)[2], after.y[:, -1], rtol=1e-6)


def test_the_sliding_velocity_stops_the_flow_at_a_clarke_critical_point():
    # |θ₀| + ½(θ₁ − 1)²: the minimum (0, 1) lies on the kink, where ‖∇L‖ ≥ 1 on either side.
    def loss(y):
        return 2 * relu(y[0]) - y[0] + 0.5 * (y[1] - 1) ** 2

    event = sj.CriticalPoint(1e-6, 0.9 * float(loss(jnp.array([0.5, 0.0]))))
    sol = sj.sliding_flow(loss, jnp.array([0.5, 0.0]), 100.0, event=event, n_save=8)
    assert sol.successful and np.isfinite(float(sol.event_time))
    np.testing.assert_allclose(np.asarray(sol.stop_state), [0.0, 1.0], atol=1e-6)
    assert int(sol.stats["active_at_stop"]) == 1  # held on the kink: `saddle_chain`'s "on_kinks"
    assert float(jnp.linalg.norm(jax.grad(loss)(sol.stop_state))) >= 1.0


@pytest.mark.parametrize("seed", [0, 3])
def test_smoothed_relu_flows_converge_to_the_sliding_flow(seed):
    """A two-layer ReLU student (2, 4, 1) on 8 samples of a (2, 2, 1) teacher slides along kinks
    (seed 0 once, seed 3 three times, releasing one); `gradient_flow` on the exact net stops at
    `max_steps` there. The smoothed nets (`DeepReLU(smoothing=ε)`) differ from the sliding flow
    by O(ε): measured 10× per decade, 5.8e−6 and 8.8e−6 at ε = 1e−5."""
    kx, kt, ks = jr.split(jr.key(seed), 3)
    x = jr.normal(kx, (8, 2))
    teacher = sj.nn.DeepReLU((2, 2, 1), key=kt, std=1.0)
    problem = sj.SquareLoss(x, jax.vmap(teacher)(x))
    ts = np.linspace(0.0, 30.0, 31)
    sol = sj.sliding_flow(problem, sj.nn.DeepReLU((2, 4, 1), key=ks, std=0.5), 30.0, saveat=ts)
    assert sol.successful and int(sol.stats["slides_started"]) >= 1
    assert np.all(np.diff(np.asarray(sol.loss)) <= 0)  # a descent flow
    flat = jax.vmap(lambda p: ravel_pytree(p)[0])
    theta = np.asarray(flat(sol.params))
    gaps = []
    for eps in (1e-3, 1e-4, 1e-5):
        smoothed = sj.nn.DeepReLU((2, 4, 1), key=ks, std=0.5, smoothing=eps)
        ref = sj.gradient_flow(problem, smoothed, 30.0, saveat=ts, rtol=1e-10)
        gaps.append(np.abs(np.asarray(flat(ref.params)) - theta).max())
    assert gaps[0] / gaps[1] > 5 and gaps[1] / gaps[2] > 5, gaps  # first order in ε
    assert gaps[2] < 3e-5, gaps


def test_sliding_flow_rejects_what_it_cannot_integrate():
    with pytest.raises(ValueError, match="no `leaky_relu` kinks"):
        sj.sliding_flow(lambda y: jnp.sum(y**2), jnp.ones(2), 1.0)
    with pytest.raises(ValueError, match="max_events"):
        sj.sliding_flow(_released, jnp.array([0.3, 0.0]), 1.0, max_events=0)
    with pytest.raises(ValueError, match="saveat"):
        sj.sliding_flow(_released, jnp.array([0.3, 0.0]), 1.0, saveat=[0.5, 2.0])
    with pytest.raises(ValueError, match="`model` must be a net with a ReLU kink smoothing"):
        sj.sliding_flow(_released, jnp.array([0.3, 0.0]), 1.0, continue_smoothing=1e-4)
    with pytest.raises(ValueError, match="continue_smoothing"):
        sj.sliding_flow(_released, jnp.array([0.3, 0.0]), 1.0, continue_smoothing=0.0)


def test_kink_values_and_pieces_of_a_deep_relu_net():
    net = sj.nn.DeepReLU((3, 4, 2, 1), key=jr.key(1), std=1.0)
    x = jr.normal(jr.key(2), (5, 3))
    problem = sj.SquareLoss(x, jnp.ones((5, 1)))
    state, unravel = ravel_pytree(net)

    def loss(y):
        return problem(unravel(y))

    z = sj.nn.kink_values(loss, state)
    w0, w1, _ = net.weights
    z1 = x @ w0.T
    z2 = jax.nn.relu(z1) @ w1.T
    assert z.shape == (5 * 4 + 5 * 2,)
    np.testing.assert_allclose(np.sort(z), np.sort(jnp.concatenate([z1.ravel(), z2.ravel()])),
                               atol=1e-12)
    pattern = z >= 0
    np.testing.assert_allclose(sj.nn.on_piece(loss, state, pattern), loss(state), rtol=1e-12)
    # the jump ∂/∂shift is ∂L/∂(unit output), finite everywhere
    jump = jax.grad(lambda e: sj.nn.on_piece(loss, state, pattern, e))(jnp.zeros(z.size))
    assert np.all(np.isfinite(np.asarray(jump))) and float(jnp.abs(jump).max()) > 0


def test_from_a_tiny_init_the_exact_relu_flow_rests_at_the_chains_first_saddle():
    """The deep ReLU teacher-student of the `chain-deep-relu` preset from α = 1e-8: the first
    drop (at t ≈ 3.7e7, where one spacing of t is 7e-9) is resolved on each piece's own clock
    and kinks of the units still of size α get tolerances of their own size, so the flow
    arrives at the chain's ϑ¹ (L = 1.3072061, k = 3 there: it rests for ≈ 1.9 drop times).
    Early in the second drop (≈ 2.89 drop times) it switches back and forth across kinks of
    units still of size α: it stops there as `kink_events_dense`, not after `max_events`, and
    with `continue_smoothing` the smoothed net's flow takes over there and completes the drop
    to the loss floor (the chain's: below 2.2e−3 = 1e−4·L(0))."""
    from saddlejax.experiments._saddle_chain import SaddleChainConfig, deep_relu_problem

    config = SaddleChainConfig(problem="deep-relu", width=8, problem_seed=0, seed=0)
    problem, init = deep_relu_problem(config)
    drop = 0.368845 / 1e-8  # the chain's first drop time (`chain-deep-relu.yaml`)
    saves = np.array([0.9, 1.5, 2.0, 3.5]) * drop
    sol = sj.sliding_flow(problem, sj.init.scale(init, 1e-8), 3.5 * drop, saveat=saves,
                          continue_smoothing=1e-4)
    assert sol.result == sj.RESULTS.successful, sol.result
    assert 2.8 < float(sol.stats["smoothed_from"]) / drop < 2.95  # the dense stop
    assert int(sol.stats["kink_crossings"]) < 5 * DENSE_WINDOW
    loss = np.asarray(sol.loss)
    assert loss[0] > 20.0  # before the drop: L(0) = 21.59
    np.testing.assert_allclose(loss[1:3], 1.3072061, rtol=1e-6)
    assert loss[3] < 2.2e-3
    assert sol.final_params.smoothing == 0.0  # the exact net, at the smoothed flow's end
