"""Leading homogeneous Taylor terms at critical points (SPEC §4)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import saddlejax as sj


def _zeros(model):
    return jax.tree_util.tree_map(
        lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, model
    )


def _mse(getkey, n_in=5, n_out=3, n=20):
    return sj.SquareLoss(jr.normal(getkey(), (n, n_in)), jr.normal(getkey(), (n, n_out)))


@pytest.mark.parametrize("depth", [2, 4])
def test_dln_origin_orders_and_closed_form(getkey, depth):
    """At the origin of a DLN, k = L, m = 2L and H(θ) = Tr[Gᵀ A_θ] (SPEC §4), by the exact
    nested-jvp ("ray") route, for a loss scaled by 1e−6 too (order detection is relative)."""
    loss = _mse(getkey)
    net = sj.nn.DeepLinear((5,) + (6,) * (depth - 1) + (3,), key=getkey())
    origin = _zeros(net)
    g = sj.matrix_cost_gradient_at_zero(loss)
    scales = (1.0, 1e-6) if depth == 2 else (1.0,)
    for scale in scales:
        taylor = sj.taylor_term(
            lambda p: scale * loss(p), origin, method="ray", key=getkey(), max_order=2 * depth
        )
        assert (taylor.order, taylor.next_order) == (depth, 2 * depth)
        expected = scale * sj.dln_taylor_term(g)(net.weights)
        # exact AD vs a closed form: agreement to roundoff of a sum of O(1) terms
        assert jnp.abs(taylor.H(net) - expected) <= 1e-12 * jnp.abs(expected)


def test_identities_homogeneity_euler_remainder(getkey):
    """H(λδ) = λ^k H(δ) (λ of both signs), δᵀ∇H(δ) = kH(δ), and |L(θ*+δ) − L(θ*) − H(δ)|
    scales like ‖δ‖^m with a fitted slope m (SPEC §4), for a DLN with L = 3 at the origin."""
    loss = _mse(getkey)
    net = sj.nn.DeepLinear((5, 6, 6, 3), key=getkey())
    origin = _zeros(net)
    taylor = sj.taylor_term(loss, origin, key=getkey())
    # both are exact identities; errors are roundoff relative to ‖δ‖‖∇H(δ)‖, which (unlike
    # |H(δ)|) stays O(1) when a random δ falls near a zero of H
    assert sj.homogeneity_error(taylor.H, taylor.order, net, (-1.5, 0.5, 3.0)) < 1e-12
    assert sj.euler_error(taylor.H, taylor.order, net) < 1e-12
    slope, _ = sj.remainder_slope(loss, origin, taylor.H, net, radii=jnp.geomspace(0.2, 1.0, 6))
    # L(tδ) − L(0) − H(tδ) = t^{2L}·c exactly for a DLN: the fit is exact up to roundoff
    assert abs(slope - 2 * taylor.order) < 1e-3


def test_general_critical_point_strict_saddle(getkey):
    """At a non-origin critical point the orders are read from the loss: for
    L(θ) = (θ₁² − 1)² + θ₂²θ₁ − … a hand-built function with a strict saddle at 0 and a cubic
    next term, k = 2 and m = 3, and H is half the Hessian quadratic form (SPEC §4)."""

    def loss(p):
        a, b = p["a"], p["b"]
        return 3.0 + a**2 - 2.0 * b**2 + a * b**2 + 0.25 * a**4

    point = {"a": jnp.zeros(()), "b": jnp.zeros(())}
    taylor = sj.taylor_term(loss, point, key=getkey())
    assert (taylor.order, taylor.next_order) == (2, 3)
    delta = {"a": jnp.asarray(0.3), "b": jnp.asarray(-0.7)}
    assert jnp.abs(taylor.H(delta) - (0.3**2 - 2 * 0.7**2)) < 1e-14  # exact polynomial


def test_shifted_critical_point_with_roundoff(getkey):
    """Order detection is robust to a critical point known to roundoff only: at the minimum
    θ* = (1, …) of a shifted quartic, where ∇L(θ*) is ~1e−16 but not 0, k = 2 (SPEC §4)."""
    c = jnp.asarray(1.0 / 3.0)

    def loss(p):
        return jnp.sum((p - c) ** 2) * 1e3 + jnp.sum((p - c) ** 4)

    taylor = sj.taylor_term(loss, jnp.full(4, c), key=getkey())
    assert (taylor.order, taylor.next_order) == (2, 4)


@pytest.mark.parametrize("as_tuple", [False, True])
def test_matrix_completion_dln_uses_outputs_route(getkey, as_tuple):
    """`MatrixCompletion` factors through the end-to-end matrix (L = C∘A_θ), so `auto` takes the
    one-pass "outputs" route at a DLN's origin, for a `DeepLinear` or a tuple of matrices: H
    equals the "ray" route and Tr[Gᵀ A_θ] (SPEC §4), and m = 2L is found even for a wide net,
    whose random unit δ has ‖A_δ‖ ≈ 1e−4, so ½D²C(0)[A_δ, A_δ] is 1e−8 of L(0) at r = 1."""
    problem = sj.matrix_completion_problem(getkey())
    net = sj.nn.DeepLinear((10, 100, 100, 100, 10), key=getkey())
    theta = tuple(net.weights) if as_tuple else net
    origin = _zeros(theta)
    taylor = sj.taylor_term(problem, origin, key=getkey())
    assert taylor.method == "outputs" and (taylor.order, taylor.next_order) == (4, 8)
    ray = sj.taylor_term(problem, origin, key=getkey(), method="ray")
    assert (ray.order, ray.next_order) == (4, 8)
    g = sj.matrix_cost_gradient_at_zero(problem)
    closed = sj.dln_taylor_term(g)(net.weights)
    # three evaluations of Tr[Gᵀ A_θ]: roundoff relative to ‖G‖‖A_θ‖ ≥ |H| (which a random θ
    # may bring near 0)
    size = jnp.linalg.norm(g) * jnp.linalg.norm(sj.nn.end_to_end_matrix(net))
    for h in (taylor.H(theta), ray.H(theta)):
        assert jnp.abs(h - closed) <= 1e-12 * size


def test_relu_origin_uses_outputs_route(getkey):
    """At the origin of a ReLU net `auto` detects the homogeneous network and takes the fast
    "outputs" route, H(θ) = Σ⟨∂ℓ/∂f(0), f_θ(x_i)⟩, which equals the one-sided
    limit (L(tδ) − L(0))/t^L as t → 0⁺ (SPEC §4, §9)."""
    loss = _mse(getkey)
    net = sj.nn.DeepReLU((5, 6, 6, 3), key=getkey())
    origin = _zeros(net)
    taylor = sj.taylor_term(loss, origin, key=getkey())
    assert taylor.method == "outputs" and (taylor.order, taylor.next_order) == (3, 6)
    t = 1e-2
    one_sided = (loss(jax.tree_util.tree_map(lambda a: t * a, net)) - loss(origin)) / t**3
    # error = t^L·c_{2L} (≈ 1e-6·‖f_δ(X)‖²/N) + roundoff eps·L(0)/t^L (≈ 1e-10·L(0)): both
    # below 1e-5·(|H| + L(0))
    tol = 1e-5 * (jnp.abs(taylor.H(net)) + loss(origin))
    assert jnp.abs(one_sided - taylor.H(net)) < tol
    assert sj.homogeneity_error(taylor.H, 3, net, (0.5, 2.0)) < 1e-12


_RELU_NETS = {
    "relu": (lambda k: sj.nn.DeepReLU((5, 6, 6, 3), key=k), 3),
    "leaky_relu": (lambda k: sj.nn.DeepReLU((5, 6, 6, 3), 0.2, key=k), 3),
    "two_layer_relu": (lambda k: sj.nn.TwoLayer(5, 6, 3, "relu", key=k), 2),
    "squared_relu": (lambda k: sj.nn.SquaredReLU(5, 6, key=k, std=1.0), 2),
}


@pytest.mark.parametrize("case", sorted(_RELU_NETS))
def test_relu_ray_route_is_one_sided_at_origin(getkey, case):
    """Every pre-activation is 0 at the origin. The "ray" route's Taylor mode takes each
    kink's branch from the sign of the first non-zero ray coefficient (`saddlejax.nn.relu`),
    so it equals the "outputs" route's H(δ) = ⟨∂ℓ/∂f(0), f_δ⟩, exact by homogeneity. The
    branch-at-z₀ rule of `jnp.where` made every derivative of order ≤ 8 vanish there."""
    make, order = _RELU_NETS[case]
    net = make(getkey())
    n_out = 1 if case == "squared_relu" else 3
    loss = _mse(getkey, n_out=n_out)
    origin = _zeros(net)
    ray = sj.taylor_term(loss, origin, key=getkey(), method="ray")
    outputs = sj.taylor_term(loss, origin, key=getkey(), method="outputs")
    assert ray.order == outputs.order == order
    for _ in range(3):
        delta = jax.tree_util.tree_map(lambda a: jr.normal(getkey(), a.shape), net)
        exact = outputs.H(delta)
        # both sum the same products in another order: rounding of the sum's terms
        assert jnp.abs(ray.H(delta) - exact) <= 1e-12 * jnp.abs(exact)


def _masked_deep_relu(weights, x, masks, slope):
    """The deep ReLU net with each kink's branch fixed by `masks` (a polynomial in θ)."""
    for w, m in zip(weights[:-1], masks):
        z = x @ w.T
        x = jnp.where(m, z, slope * z)
    return x @ weights[-1].T


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("residue", [0.0, 1e-17])
def test_relu_ray_coefficients_at_new_neurons(getkey, slope, residue):
    """At a point with dead hidden units (zero incoming rows and outgoing columns, up to
    `residue`, as a solver leaves them), L(θ* + tδ) for small t > 0 is the polynomial of the
    net whose branches are those the pre-activations take at t = 1e−6. Its exact coefficients
    (nested jvps of that fixed-branch net, an independent route) equal the "ray" coefficients
    (Taylor mode through the one-sided rule). AD's branch at z₀ = 0 (the linear one) gives
    other c₂, c₃ wherever a new unit's pre-activation starts negative."""
    x = jr.normal(getkey(), (24, 4))
    y = jr.normal(getkey(), (24, 2))
    net = sj.nn.DeepReLU((4, 5, 5, 2), slope, key=getkey(), std=1.0)
    w1, w2, w3 = net.weights
    w1 = w1.at[3:].set(residue)  # two dead units in the first hidden layer
    w2 = w2.at[2:].set(residue).at[:, 3:].set(residue)  # three in the second
    w3 = w3.at[:, 2:].set(residue)
    point = eqx.tree_at(lambda m: m.weights, net, (w1, w2, w3))
    delta = jax.tree_util.tree_map(lambda a: jr.normal(getkey(), a.shape), net)
    loss = sj.SquareLoss(x, y)
    got = sj.ray_taylor_coefficients(loss, point, delta, 6)

    shifted = [p + 1e-6 * d for p, d in zip(point.weights, delta.weights)]
    masks, h = [], x
    for w in shifted[:-1]:
        z = h @ w.T
        masks.append(z > 0)
        h = jnp.where(z > 0, z, slope * z)

    def masked_loss(ws):
        return loss.from_outputs(_masked_deep_relu(ws, x, masks, slope))

    assert jnp.allclose(masked_loss(point.weights), loss(point), rtol=1e-14)
    exact = sj.ray_taylor_coefficients(masked_loss, list(point.weights), list(delta.weights), 6)
    scale = jnp.max(jnp.abs(exact))
    assert jnp.max(jnp.abs(got - exact)) <= 1e-12 * scale


def test_smoothed_relu_taylor_mode_under_vmap_and_grad(getkey):
    """A smoothed ReLU net has kinks outside its bands, so its ray derivatives take Taylor mode,
    under the vmap and gradient of the escape solvers. At a point where every unit is smooth
    along the ray, they and their gradients equal those of nested jvps (both exact: rounding)."""
    from saddlejax.theory._taylor import _kth_ray_derivative, _nested_jvp_coefficients

    net = sj.nn.DeepReLU((4, 6, 6, 2), key=getkey(), std=1.0, smoothing=1e-1)
    loss = _mse(getkey, n_in=4, n_out=2)
    deltas = jax.tree_util.tree_map(lambda a: jr.normal(getkey(), (3, *a.shape)), net)
    deltas = eqx.filter(deltas, eqx.is_inexact_array)

    def taylor(d):
        return _kth_ray_derivative(loss, net, d, 3)

    def nested(d):
        return _nested_jvp_coefficients(loss, net, d, 3)[3] / 6

    got = eqx.filter_jit(jax.vmap(jax.value_and_grad(taylor)))(deltas)
    want = eqx.filter_jit(jax.vmap(jax.value_and_grad(nested)))(deltas)
    scale = jnp.max(jnp.abs(want[0]))
    assert jnp.max(jnp.abs(got[0] - want[0])) <= 1e-10 * scale
    for a, b in zip(jax.tree_util.tree_leaves(got[1]), jax.tree_util.tree_leaves(want[1])):
        assert jnp.max(jnp.abs(a - b)) <= 1e-10 * jnp.max(jnp.abs(b))


def test_kink_jet_rule_closed_forms():
    """z(t) = a·t + b·t², z(0) = 0: σ(z(t)) for small t > 0 is z(t) if the first non-zero of
    (a, b) is positive, slope·z(t) otherwise; value, jvp and vmap are `jnp.where`'s. A z(0) at
    rounding (1e−20) is the kink's own point."""
    from jax.experimental.jet import jet

    slope = 0.1
    cases = [(0.0, 1.0, -3.0), (0.0, -1.0, 3.0), (0.0, 0.0, 2.0), (0.0, 0.0, -2.0)]
    # z₀ = 1e−20 is below the rule's 1e−9 of the largest coefficient: taken as 0
    cases += [(1e-20, -1.0, 3.0), (1e-20, 0.0, -2.0), (-1e-20, 1.0, -3.0)]
    for c, a, b in cases:
        branch = 1.0 if (a > 0 or (a == 0 and b > 0)) else slope
        _, (d1, d2) = jet(
            lambda t, c=c, a=a, b=b: sj.nn.leaky_relu(c + a * t + b * t * t, slope),
            (0.0,), ((1.0, 0.0),),
        )
        # jet's factorial scaling rounds: 1e-14 relative
        assert math.isclose(float(d1), branch * a, rel_tol=1e-14)
        assert math.isclose(float(d2), branch * 2 * b, rel_tol=1e-14)
    z = jnp.asarray([-2.0, -0.0, 0.0, 3.0])
    where = jnp.where(z >= 0, z, slope * z)
    assert jnp.array_equal(jax.jit(sj.nn.leaky_relu, static_argnums=1)(z, slope), where)
    grad = jax.vmap(jax.grad(lambda u: sj.nn.leaky_relu(u, slope)))(z)
    assert jnp.array_equal(grad, jnp.where(z >= 0, 1.0, slope))
    assert jnp.array_equal(sj.nn.relu(jnp.asarray([-1, 2])), jnp.asarray([0.0, 2.0]))


def test_ray_coefficients_match_polynomial():
    """The nested-jvp coefficients c_j = (1/j!) d^j/dt^j L(θ*+tδ) of a polynomial in t equal its
    coefficients exactly (no finite differences)."""
    coeffs = jnp.asarray([2.0, -1.0, 0.5, 0.0, 3.0])

    def loss(p):
        return sum(c * p**j for j, c in enumerate(coeffs))

    got = sj.ray_taylor_coefficients(loss, jnp.zeros(()), jnp.ones(()), 6)
    assert jnp.allclose(got[:5], coeffs, rtol=0, atol=1e-13)
    assert jnp.all(got[5:] == 0)
    assert math.isclose(float(got[4]), 3.0, rel_tol=1e-14)


def test_lemma13_time_rescaling(getkey):
    """Γ_H(t, λθ₀) = λ Γ_H(λ^{k−2} t, θ₀) for the k = 3 DLN term (Jacot et al. Lemma 13)."""
    loss = _mse(getkey)
    net = sj.nn.DeepLinear((5, 4, 4, 3), key=getkey(), std=0.3)
    taylor = sj.taylor_term(loss, _zeros(net), key=getkey())
    err = sj.lemma13_error(taylor.H, taylor.order, net, 0.5, 0.5)
    # both flows are integrated at rtol 1e-11; the identity itself is exact
    assert err < 1e-8


def test_errors_name_argument(getkey):
    """Bad settings raise a ValueError naming the argument."""
    with pytest.raises(ValueError, match="method"):
        sj.taylor_term(lambda p: jnp.sum(p**2), jnp.zeros(3), method="fd")
    with pytest.raises(ValueError, match="max_order"):
        sj.taylor_term(lambda p: jnp.sum(p**9), jnp.zeros(3), max_order=4)
