"""Neural correlation functions and their KKT points (Kumar & Haupt; SPEC §5, §6)."""

import re
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj


def _zeros(model):
    return jax.tree_util.tree_map(
        lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, model
    )


def test_ncf_is_minus_H_up_to_normalisation(getkey):
    """N_y = −H·N/2 for the mean square loss (ỹ = (2/N)y) and N_ỹ = −H exactly, at the origin
    of a DLN and of a ReLU net (SPEC §5)."""
    n = 12
    loss = sj.SquareLoss(jr.normal(getkey(), (n, 4)), jr.normal(getkey(), (n, 2)))
    for net in (
        sj.nn.DeepLinear((4, 5, 5, 2), key=getkey()),
        sj.nn.DeepReLU((4, 5, 5, 2), key=getkey()),
    ):
        origin = _zeros(net)
        taylor = sj.taylor_term(loss, origin)
        h = taylor.H(net)
        # same sums in a different order: roundoff only
        assert jnp.abs(sj.ncf_from_objective(loss, origin)(net) + h) <= 1e-13 * jnp.abs(h)
        assert jnp.abs(sj.ncf(origin, loss.x, loss.y)(net) + h * n / 2) <= 1e-13 * jnp.abs(h) * n


def test_kkt_points_are_escape_directions(getkey):
    """Non-negative KKT points of max N s.t. ‖w‖ = 1 coincide with the escape directions of H
    with H ≤ 0, with λ = k·N = s (half-sum square loss: ỹ = y), for the squared-ReLU toy
    (SPEC §5, §6); at each, ∇N(w) = λw."""
    prob = sj.squared_relu_toy_problem(getkey())
    origin = _zeros(sj.nn.SquaredReLU(2, 1, key=getkey()))
    taylor = sj.taylor_term(prob, origin)
    assert (taylor.order, taylor.method) == (2, "outputs")
    esc = sj.optimal_escape(taylor.H, 2, origin, key=getkey(), n_restarts=12)
    N = sj.ncf(origin, prob.x, prob.y)
    kkt = sj.ncf_kkt_points(N, 2, origin, key=getkey(), n_restarts=12)
    # both solvers converge to roundoff; directions are unique (a single neuron: no symmetry)
    assert jnp.abs(kkt.multipliers[0] - esc.speed) <= 1e-10 * esc.speed
    assert jnp.linalg.norm(kkt.points.w[0] - esc.direction.w) <= 1e-6
    assert jnp.all(kkt.values >= 0)
    for i in range(kkt.values.shape[0]):
        w = kkt.points.w[i]
        grad = jax.grad(lambda v: N(eqx.tree_at(lambda m: m.w, origin, v)))(w)
        assert jnp.linalg.norm(grad - kkt.multipliers[i] * w) <= 1e-8 * kkt.multipliers[0]
        value = N(eqx.tree_at(lambda m: m.w, origin, w))
        assert jnp.abs(kkt.multipliers[i] - 2 * value) <= 1e-10 * kkt.multipliers[0]


def test_neuron_ncf_maximum_against_grid(getkey):
    """The per-neuron NCF max_{‖w‖=1} Σ_i y_i max(0, wᵀx_i)² of the toy (x ∈ R²) found by the
    sphere solver equals a brute-force maximum over 200,001 angles (an independent method)."""
    prob = sj.squared_relu_toy_problem(getkey())
    n_j = sj.neuron_ncf(sj.squared_relu_neuron, prob.x, prob.y)
    kkt = sj.ncf_kkt_points(n_j, 2, jnp.zeros(2), key=getkey(), n_restarts=8)
    phi = jnp.linspace(0, 2 * jnp.pi, 200_001)
    ws = jnp.stack([jnp.cos(phi), jnp.sin(phi)], axis=1)
    grid_max = jnp.max(jax.vmap(n_j)(ws))
    # grid spacing 3e-5 rad: the grid maximum is below the true one by O(spacing²·N'') ≈ 1e-8
    assert jnp.abs(kkt.values[0] - grid_max) <= 1e-7 * grid_max
    assert kkt.values[0] >= grid_max - 1e-12


def test_residual_ncf_at_a_saddle(getkey):
    """At θ_s = (w_big, 0) of a separable squared-ReLU net the residual NCF on the small
    neuron is the neuron NCF with r = y − f(X; θ_s) in place of y (SPEC §6)."""
    prob = sj.squared_relu_toy_problem(getkey())
    net = sj.nn.SquaredReLU(2, 2, key=getkey(), std=1.0)
    saddle = eqx.tree_at(lambda m: m.w, net, net.w.at[1].set(0.0))
    small = eqx.tree_at(lambda m: m.w, jax.tree_util.tree_map(lambda _: False, saddle), True)
    delta_w = jnp.zeros((2, 2)).at[1].set(jr.normal(getkey(), (2,)))
    nr = sj.residual_ncf(prob, saddle, small)(eqx.tree_at(lambda m: m.w, saddle, delta_w))
    r = prob.y - jax.vmap(saddle)(prob.x)
    expected = sj.neuron_ncf(sj.squared_relu_neuron, prob.x, r)(delta_w[1])
    assert jnp.abs(nr - expected) <= 1e-12 * jnp.abs(expected)


def test_ncf_shape_error(getkey):
    """A label array with the wrong number of rows is refused with a ValueError naming `y`."""
    with pytest.raises(ValueError, match="`y`"):
        sj.ncf(sj.nn.SquaredReLU(2, 1, key=getkey()), jnp.zeros((5, 2)), jnp.zeros((4, 1)))


def test_kkt_residual_above_tolerance_warns():
    """`ncf_kkt_points` returns only points whose relative KKT residual is below `kkt_rtol`;
    when no maximising restart gets there, the maximiser's estimate (`escape.direction`) is
    above it: `escape_not_converged` and a `NumericalWarning` giving that residual. Built to
    trigger it: the squared-ReLU toy's neuron NCF in float32, where kkt_rtol = 1e−8 is below
    roundoff (eps = 1.2e−7; the warning says so), and in float64 with one descent step and no
    Newton polish. The same NCF in float64 with the default settings does not warn."""
    prob = sj.squared_relu_toy_problem(jr.key(0))
    n_j = sj.neuron_ncf(sj.squared_relu_neuron, prob.x, prob.y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sj.NumericalWarning)
        kkt = sj.ncf_kkt_points(n_j, 2, jnp.zeros(2), key=jr.key(1), n_restarts=8)
    assert kkt.result == sj.RESULTS.successful and kkt.values.shape[0] >= 1

    x32, y32 = prob.x.astype(jnp.float32), prob.y.astype(jnp.float32)
    n_32 = sj.neuron_ncf(sj.squared_relu_neuron, x32, y32)
    with pytest.warns(sj.NumericalWarning, match=r"`kkt_rtol`.*roundoff alone exceeds it"):
        kkt = sj.ncf_kkt_points(n_32, 2, jnp.zeros(2, jnp.float32), key=jr.key(1), n_restarts=8)
    assert kkt.result == sj.RESULTS.escape_not_converged
    assert float(sj.ncf_kkt_residual(n_32, kkt.escape.direction)) > 0

    with pytest.warns(sj.NumericalWarning, match=r"relative KKT residual (\S+), is not") as rec:
        kkt = sj.ncf_kkt_points(
            n_j, 2, jnp.zeros(2), key=jr.key(1), n_restarts=8, max_steps=1, n_polish=0
        )
    assert kkt.result == sj.RESULTS.escape_not_converged
    reported = float(re.search(r"residual ([0-9.e+-]+), is not", str(rec[0].message)).group(1))
    direction = kkt.escape.direction
    grad = jax.grad(n_j)(direction)
    relative = jnp.linalg.norm(grad - jnp.dot(direction, grad) * direction) / jnp.linalg.norm(grad)
    assert reported > 1e-8 and abs(reported - float(relative)) <= 1e-2 * float(relative)


def test_kkt_points_arguments_are_named():
    """Arguments of the wrong type or out of range raise a ValueError naming them, before any
    solver is compiled."""
    n_j = sj.neuron_ncf(sj.squared_relu_neuron, jnp.eye(2), jnp.ones(2))
    for name, value in (
        ("order", 2.5),
        ("order", "2"),
        ("n_restarts", 0),
        ("n_restarts", 10**20),
        ("max_steps", np.inf),
        ("n_polish", -1),
        ("n_newton", None),
        ("kkt_rtol", 0.0),
        ("speed_rtol", "tight"),
        ("key", 0),
    ):
        kwargs = dict(order=2, key=jr.key(0), n_restarts=2)
        kwargs[name] = value
        order = kwargs.pop("order")
        with pytest.raises(ValueError, match=f"`{name}`"):
            sj.ncf_kkt_points(n_j, order, jnp.zeros(2), **kwargs)
