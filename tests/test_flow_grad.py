"""Derivatives of gradient flows: trajectory functionals, event times, frozen parameters and
batches, against central finite differences (float64) and between forward and reverse mode.

Finite differences of an adaptive solve carry the solver's error divided by the step h: at
rtol = 1e−11 and h = 1e−4 (relative) that is ≈ 1e−7, so agreement is asked to 1e−5 relative
(measured 1e−8 … 1e−6). Forward and reverse mode differentiate the same discrete solve and
agree to roundoff (asked 1e−8).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax.models import dln_optimal_speed
from saddlejax.problems import matrix_cost_gradient_at_zero

TSIT5 = diffrax.Tsit5()
RTOL = 1e-11


@pytest.fixture(scope="module")
def problem():
    return sj.matrix_completion_problem(jr.key(0), n=4, rank=2)


def _net(depth, key=1):
    return sj.nn.DeepLinear((4,) + (6,) * (depth - 1) + (4,), key=jr.key(key))


def _central(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


def _escape(problem, depth, **options):
    """(log t_α(r), ‖θ(t_α)‖, θ(t_α)'s first entry) as a function of (log α, r, target A*)."""
    net = _net(depth)

    def f(log_alpha, radius, target):
        sol = sj.gradient_flow(
            eqx.tree_at(lambda p: p.target, problem, target),
            sj.init.scale(net, jnp.exp(log_alpha)),
            1e8,
            solver=TSIT5,
            rtol=RTOL,
            n_save=8,
            event=sj.EscapeRadius(radius),
            require_event=True,
            **options,
        )
        leaves = jax.tree_util.tree_leaves(eqx.filter(sol.stop_state, eqx.is_inexact_array))
        norm = jnp.sqrt(sum(jnp.sum(x**2) for x in leaves))
        return jnp.stack([jnp.log(sol.event_time), norm, leaves[0][0, 0]])

    return f


@pytest.mark.parametrize("depth", [2, 4])
def test_escape_time_derivative_follows_the_theory(problem, depth):
    """d log t_α / d log α by the implicit function theorem at the event (SPEC §8): −(L − 2)
    for L > 2 (α^{L−2}·t_α → T_H; at α = 1e−3 and L = 4 the measured gap is 5e−6, asked
    1e−4) and −1/(s*·t_α) for L = 2 (t_α = log(1/α)/s* + O(1), s* = σ₁(G); measured gap 2e−6,
    asked 1e−4). Each against central differences."""
    f = _escape(problem, depth)
    x = (jnp.log(1e-3), 1.0, problem.target)
    log_t = lambda a: f(a, *x[1:])[0]  # noqa: E731
    slope = float(jax.grad(log_t)(x[0]))
    assert slope == pytest.approx(float(_central(log_t, x[0], 1e-4)), rel=1e-5)
    if depth == 2:
        s_star = float(dln_optimal_speed(-matrix_cost_gradient_at_zero(problem), 2))
        expected = -1.0 / (s_star * float(jnp.exp(log_t(x[0]))))
        assert slope == pytest.approx(expected, rel=1e-4)
    else:
        assert slope == pytest.approx(-(depth - 2), rel=1e-4)


def test_escape_time_and_event_state_derivatives(problem):
    """L = 3, α = 1e−3, one reverse-mode Jacobian in (log α, r, A*):

    - d log t_α / d log α → −(L − 2) = −1 (measured gap 1.3e−3, asked 5e−3);
    - the event time's derivatives in α, r and along a random direction of A* against central
        differences, and against forward mode (diffrax's `ForwardMode`) along A*;
    - ‖θ(t_α)‖ = r whatever α or A*, so its derivative in them vanishes and in r is 1 — true
        only with the event time's own derivative in the state at the event (∂θ/∂p +
        θ̇·dt_α/dp; the fixed-time part alone is of order ‖θ‖): asked to 1e−7 of the state's
        own derivative.
    """
    f = _escape(problem, 3)
    log_alpha, target = jnp.log(1e-3), problem.target
    direction = jr.normal(jr.key(3), target.shape)
    jac = jax.jacrev(f, argnums=(0, 1, 2))(log_alpha, 1.0, target)
    d_alpha, d_radius, d_target = (np.asarray(j) for j in jac)
    d_target = np.tensordot(d_target, np.asarray(direction), axes=2)

    assert d_alpha[0] == pytest.approx(-1.0, rel=5e-3)
    fds = (
        _central(lambda h: f(log_alpha + h, 1.0, target), 0.0, 1e-4),
        _central(lambda h: f(log_alpha, 1.0 + h, target), 0.0, 1e-4),
        _central(lambda h: f(log_alpha, 1.0, target + h * direction), 0.0, 1e-4),
    )
    for exact, fd in zip((d_alpha, d_radius, d_target), fds):
        assert exact[0] == pytest.approx(float(fd[0]), rel=1e-5)

    g = _escape(problem, 3, adjoint=diffrax.ForwardMode())
    _, tangent = jax.jvp(lambda t: g(log_alpha, 1.0, t), (target,), (direction,))
    assert float(tangent[0]) == pytest.approx(d_target[0], rel=1e-8)

    state_scale = abs(d_target[2])
    assert state_scale > 0.01  # the state at the event moves with A*
    assert abs(d_target[1]) <= 1e-7 * state_scale
    assert abs(d_alpha[1]) <= 1e-7 * state_scale
    assert d_radius[1] == pytest.approx(1.0, abs=1e-7)


def test_loss_functional_gradient_through_implicit_steps(problem):
    """Σᵢ L(θ(tᵢ)) over save times through a plateau (L = 4, α = 0.03), differentiated in α
    through the default `AutoStiff`, which takes implicit Rosenbrock–CG steps there (its CG
    solves differentiated implicitly): reverse mode against forward mode and against reverse
    mode through Tsit5, an independent discretisation (measured 2e−8 apart; asked 1e−6).
    Finite differences are no reference here: the solver's discrete choices (CG counts, the
    switch) perturb the functional by ≈ 1e−8, amplified near the saddles, so its central
    differences scatter by 5e−3 between h = 1e−3 and 1e−5."""
    net = _net(4)
    t1 = 5e3

    def functional(alpha, solver, adjoint=diffrax.RecursiveCheckpointAdjoint()):
        sol = sj.gradient_flow(
            problem,
            sj.init.scale(net, alpha),
            t1,
            rtol=1e-10,
            solver=solver,
            adjoint=adjoint,
            saveat=np.geomspace(1.0, t1, 16),
        )
        return jnp.sum(sol.loss), sol.stats

    alpha = 0.03
    grad, stats = jax.grad(functional, has_aux=True)(alpha, sj.AutoStiff())
    assert int(stats["implicit_steps_accepted"]) > 0
    reference, _ = jax.grad(functional, has_aux=True)(alpha, TSIT5)
    assert float(grad) == pytest.approx(float(reference), rel=1e-6)
    forward = jax.jvp(
        lambda a: functional(a, sj.AutoStiff(), diffrax.ForwardMode())[0], (alpha,), (1.0,)
    )[1]
    assert float(forward) == pytest.approx(float(grad), rel=1e-6)


def test_gradient_in_frozen_parameters_vmapped_over_alpha(problem):
    """The final loss differentiated in α and in a frozen layer (not part of the flow's state,
    a parameter of it), batched by `vmap` over α and frozen values, against one solve at a
    time (equal to 1e−9: batched solves take their own steps) and central differences."""
    net = _net(3)
    where = lambda m: m.weights[1]  # noqa: E731
    trainable = sj.freeze(net, where)

    def final_loss(alpha, frozen):
        params0 = eqx.tree_at(where, sj.init.scale(net, alpha), frozen)
        sol = sj.gradient_flow(
            problem, params0, 50.0, solver=TSIT5, rtol=RTOL, n_save=4, trainable=trainable
        )
        return sol.loss[-1]

    alphas = jnp.array([0.3, 0.5, 0.7])
    frozen = jnp.stack([where(sj.init.scale(_net(3, key), 0.5)) for key in (2, 3, 4)])
    grad = jax.grad(final_loss, argnums=(0, 1))
    batched = jax.vmap(grad)(alphas, frozen)
    for i in range(3):
        single = grad(alphas[i], frozen[i])
        for b, s in zip(batched, single):
            np.testing.assert_allclose(np.asarray(b[i]), np.asarray(s), rtol=1e-9, atol=1e-14)
    direction = jr.normal(jr.key(4), frozen[0].shape)
    fd = _central(lambda h: final_loss(alphas[0], frozen[0] + h * direction), 0.0, 1e-4)
    assert float(jnp.vdot(batched[1][0], direction)) == pytest.approx(float(fd), rel=1e-5)
    fd = _central(lambda h: final_loss(alphas[0] + h, frozen[0]), 0.0, 1e-5)
    assert float(batched[0][0]) == pytest.approx(float(fd), rel=1e-5)


def test_adjoint_option_is_checked():
    """`adjoint` must be a diffrax adjoint; `BacksolveAdjoint` is refused with the fix."""
    with pytest.raises(ValueError, match="BacksolveAdjoint.*RecursiveCheckpointAdjoint"):
        sj.FlowOptions(adjoint=diffrax.BacksolveAdjoint())
    with pytest.raises(ValueError, match="`adjoint` must be a diffrax adjoint"):
        sj.FlowOptions(adjoint="forward")
