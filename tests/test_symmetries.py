"""Symmetries of layered networks (SPEC §2; Jacot et al. §2.2): rotations, inclusions and neuron
permutations leave f_θ and the loss unchanged, transform the gradient like the parameters and
commute with the gradient flow; balanced initialisations are balanced and stay so."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax.models import (
    balanced_dln,
    include_dln,
    permute_neurons,
    random_balanced_dln,
    random_rotations,
    rotate_hidden,
)
from saddlejax.nn import DeepLinear, DeepReLU, SquaredReLU, TwoLayer

WIDTHS = (4, 5, 5, 4)
ALPHA = 0.3
T1 = 30.0
# An explicit solver at tight tolerances, so that the comparison is clean. Tsit5's stages are
# built from gradients, and ∇L(gθ) = g∇L(θ), so every stage and the error estimate transform by
# g. A permutation only reorders the arithmetic: both solves take the same steps and agree to
# rounding (measured ≤ 3e-15 over eight seeds): ROUNDOFF = 1e-12 relative to the largest entry.
# A rotation changes the rounding of the error estimate, and an inclusion adds zero entries that
# lower the RMS norm the step-size controller uses; either way the controller picks (slightly)
# different steps, and the two solutions differ by the global error of two solves at
# rtol = 1e-10 (measured ≤ 1e-10 over t ∈ [0, 30], eight seeds): INTEGRATION = 1e-8 relative,
# still seven decades below the O(1) change of θ along the flow. Losses are compared to
# INTEGRATION·L(θ₀) in absolute terms too: near a minimum L is tiny (1e-9) and only its absolute
# error, ‖∇L‖·‖Δθ‖, is controlled.
FLOW = dict(solver=diffrax.Tsit5(), rtol=1e-10, atol=1e-12, saveat=jnp.linspace(0.0, T1, 6))
ROUNDOFF = 1e-12
INTEGRATION = 1e-8
# Algebraic identities (invariance of A_θ, f_θ, L): only rounding of a few products.
EXACT = 1e-12


def _dln(key, widths=WIDTHS, alpha=ALPHA):
    return tuple(sj.init.scale(DeepLinear(widths, key=key), alpha).weights)


def _max_abs(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(leaves_a, leaves_b))


def _scale(tree):
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(tree))


@eqx.filter_jit
def _value_grad(loss, params):
    # One compiled call instead of op-by-op dispatch (keeps the module fast).
    return eqx.filter_value_and_grad(loss)(params)


def _fixed_draw():
    """The keys of one fixed draw. The tests whose non-triviality checks depend on the draw (a
    rotation that moves the weights, `_assert_moved`) use it, so that they cannot fail for a
    reason unrelated to the symmetry. For this draw (problem, θ₀, rotations = its first three
    keys) the rotation moves the weights by 0.44 (checked: > 0.05), the flow of `FLOW` lowers the
    loss by a factor 4e7 and moves θ by 0.84 (checked: > 2 and > 0.3); the balanced start lowers
    it by 2e5 and moves θ by 0.94. Over 200 random draws none of these checks failed, and the
    equivariance errors stayed ≤ 2.4e−10 relative (INTEGRATION = 1e−8)."""
    return iter(jr.split(jr.key(0), 8))


def _assert_moved(sol):
    """The flow did something: the loss fell by a factor > 2 and θ changed by O(1)."""
    assert float(sol.loss[-1]) < 0.5 * float(sol.loss[0])
    first = jax.tree_util.tree_map(lambda p: p[0], sol.params)
    last = jax.tree_util.tree_map(lambda p: p[-1], sol.params)
    assert _max_abs(first, last) > 0.3


def test_rotation_invariance_and_equivariance():
    """A_{Rθ} = A_θ and L(Rθ) = L(θ); ∇L(Rθ) = R∇L(θ); D_ℓ(Rθ) = O_ℓ D_ℓ(θ) O_ℓᵀ for the
    balancedness matrices; the Haar draws are orthogonal; a DeepLinear stays a DeepLinear.
    (A fixed draw, `_fixed_draw`: a Haar rotation near the identity would fail the check that
    the rotation moves the weights.)"""
    getkey = _fixed_draw().__next__
    problem = sj.matrix_completion_problem(getkey(), n=4, rank=2)
    ws = _dln(getkey())
    rots = random_rotations(getkey(), WIDTHS)
    assert [o.shape for o in rots] == [(5, 5), (5, 5)]
    for o in rots:
        np.testing.assert_allclose(o @ o.T, np.eye(5), atol=EXACT)
    rotated = rotate_hidden(ws, rots)
    scale = float(jnp.max(jnp.abs(sj.nn.end_to_end_matrix(ws))))
    assert _max_abs(rotated, ws) > 0.05  # the rotation does move the weights
    np.testing.assert_allclose(
        sj.nn.end_to_end_matrix(rotated), sj.nn.end_to_end_matrix(ws), atol=EXACT * scale
    )
    value, g = _value_grad(problem, ws)
    value_rot, g_rot = _value_grad(problem, rotated)
    np.testing.assert_allclose(value_rot, value, rtol=EXACT)
    assert _max_abs(g_rot, rotate_hidden(g, rots)) < EXACT * _scale(g)
    for d, d_rot, o in zip(sj.balancedness(ws), sj.balancedness(rotated), rots):
        np.testing.assert_allclose(d_rot, o @ d @ o.T, atol=EXACT * _scale(d))
    net = sj.init.scale(DeepLinear(WIDTHS, key=getkey()), ALPHA)
    net_rot = rotate_hidden(net, rots)
    assert isinstance(net_rot, DeepLinear)
    x = jr.normal(getkey(), (6, 4))
    np.testing.assert_allclose(jax.vmap(net_rot)(x), jax.vmap(net)(x), atol=EXACT)


def test_inclusion_invariance_and_equivariance(getkey):
    """I^{(w→w')}: A_{Iθ} = A_θ, L(Iθ) = L(θ), ∇L(Iθ) = I∇L(θ) (Jacot et al. §2.2); the new
    entries are zero; a DeepReLU net's function is unchanged too (σ(0) = 0)."""
    problem = sj.matrix_completion_problem(getkey(), n=4, rank=2)
    ws = _dln(getkey())
    wide = (4, 7, 6, 4)
    inc = include_dln(ws, wide)
    assert [w.shape for w in inc] == [(7, 4), (6, 7), (4, 6)]
    assert float(jnp.abs(inc[1][5:]).max()) == 0 and float(jnp.abs(inc[1][:, 5:]).max()) == 0
    np.testing.assert_array_equal(inc[1][:5, :5], ws[1])
    np.testing.assert_allclose(
        sj.nn.end_to_end_matrix(inc), sj.nn.end_to_end_matrix(ws), atol=EXACT
    )
    value, g = _value_grad(problem, ws)
    value_inc, g_inc = _value_grad(problem, inc)
    np.testing.assert_allclose(value_inc, value, rtol=EXACT)
    assert _max_abs(g_inc, include_dln(g, wide)) < EXACT
    relu = DeepReLU((3, 5, 4, 2), 0.1, key=getkey())
    relu_wide = include_dln(relu, (3, 8, 6, 2))
    assert isinstance(relu_wide, DeepReLU)
    x = jr.normal(getkey(), (6, 3))
    np.testing.assert_allclose(jax.vmap(relu_wide)(x), jax.vmap(relu)(x), atol=EXACT)


_PERMUTATION_CASES = {
    "dln_tuple": (lambda k: tuple(DeepLinear((3, 5, 6, 2), key=k).weights), 2),
    "deep_linear": (lambda k: DeepLinear((3, 5, 6, 2), key=k), 1),
    "deep_relu": (lambda k: DeepReLU((3, 5, 6, 2), key=k), 2),
    "leaky_relu": (lambda k: DeepReLU((3, 5, 6, 6, 2), 0.2, key=k), 2),
    "two_layer_tanh": (lambda k: TwoLayer(3, 6, 2, "tanh", key=k), 1),
    "squared_relu": (lambda k: SquaredReLU(3, 6, key=k, std=1.0), 1),
}


def _apply(params, x):
    if isinstance(params, tuple):
        return x @ sj.nn.end_to_end_matrix(params).T
    return jax.vmap(params)(x)


@eqx.filter_jit
def _outputs_loss_grad(params, loss):
    return (_apply(params, loss.x),) + _value_grad(loss, params)


@pytest.mark.parametrize("case", list(_PERMUTATION_CASES))
def test_permutation_invariance_and_equivariance(getkey, case):
    """Permuting the neurons of a hidden layer leaves f_θ(x) and a square loss unchanged and
    permutes the gradient the same way, for DLNs, deep (leaky-)ReLU, two-layer and squared-ReLU
    networks (SPEC §2); the permuted parameters differ from the original ones."""
    build, layer = _PERMUTATION_CASES[case]
    params = build(getkey())
    x = jr.normal(getkey(), (8, 3))
    n_out = 1 if case == "squared_relu" else 2
    loss = sj.SquareLoss(x, jr.normal(getkey(), (8, n_out)))
    width = jax.tree_util.tree_leaves(params)[layer - 1].shape[0]
    perm = jnp.roll(jnp.arange(width), 1)  # a cycle: every neuron moves
    permuted = permute_neurons(params, layer, perm)
    assert type(permuted) is type(params)
    assert _max_abs(permuted, params) > 1e-3
    out, value, g = _outputs_loss_grad(params, loss)
    out_p, value_p, g_p = _outputs_loss_grad(permuted, loss)
    np.testing.assert_allclose(out_p, out, atol=EXACT * _scale(out))
    np.testing.assert_allclose(value_p, value, rtol=EXACT)
    assert _max_abs(g_p, permute_neurons(g, layer, perm)) < EXACT * _scale(g)


def test_flow_commutes_with_rotation():
    """Γ(t, Rθ₀) = RΓ(t, θ₀) at every save time (Jacot et al. §2.2), for a (4, 5, 5, 4) DLN on
    matrix completion, integrated twice with Tsit5 at rtol 1e-10 (equal to the integration
    tolerance, see FLOW). A fixed draw (`_fixed_draw`)."""
    draw = _fixed_draw()
    k_problem, k_params, k_rotations = next(draw), next(draw), next(draw)
    problem = sj.matrix_completion_problem(k_problem, n=4, rank=2)
    ws = _dln(k_params)
    rots = random_rotations(k_rotations, WIDTHS)
    sol = sj.gradient_flow(problem, ws, T1, **FLOW)
    sol_rot = sj.gradient_flow(problem, rotate_hidden(ws, rots), T1, **FLOW)
    _assert_moved(sol)
    assert _max_abs(rotate_hidden(sol.params, rots), sol_rot.params) < INTEGRATION * _scale(
        sol.params
    )
    np.testing.assert_allclose(
        sol_rot.loss, sol.loss, rtol=INTEGRATION, atol=INTEGRATION * float(sol.loss[0])
    )


def test_flow_commutes_with_inclusion():
    """Γ(t, Iθ₀) = IΓ(t, θ₀): the padded entries stay exactly zero (the image of I is invariant)
    and the rest follows the narrow flow to the integration tolerance (see FLOW). A fixed draw
    (`_fixed_draw`)."""
    draw = _fixed_draw()
    k_problem, k_params = next(draw), next(draw)
    problem = sj.matrix_completion_problem(k_problem, n=4, rank=2)
    ws = _dln(k_params)
    wide = (4, 7, 6, 4)
    sol = sj.gradient_flow(problem, ws, T1, **FLOW)
    sol_inc = sj.gradient_flow(problem, include_dln(ws, wide), T1, **FLOW)
    _assert_moved(sol)
    w1, w2, w3 = sol_inc.params
    assert float(jnp.abs(w1[:, 5:]).max()) == 0.0
    assert float(jnp.abs(w2[:, 5:]).max()) == 0.0 and float(jnp.abs(w2[:, :, 5:]).max()) == 0.0
    assert float(jnp.abs(w3[:, :, 5:]).max()) == 0.0
    assert _max_abs(include_dln(sol.params, wide), sol_inc.params) < INTEGRATION * _scale(
        sol.params
    )
    np.testing.assert_allclose(
        sol_inc.loss, sol.loss, rtol=INTEGRATION, atol=INTEGRATION * float(sol.loss[0])
    )


def test_flow_commutes_with_permutation():
    """Γ(t, Pθ₀) = PΓ(t, θ₀) for a neuron permutation P of the second hidden layer of a DLN
    (equal to rounding, see FLOW). A fixed draw (`_fixed_draw`)."""
    draw = _fixed_draw()
    k_problem, k_params = next(draw), next(draw)
    problem = sj.matrix_completion_problem(k_problem, n=4, rank=2)
    ws = _dln(k_params)
    perm = jnp.array([3, 0, 4, 1, 2])
    sol = sj.gradient_flow(problem, ws, T1, **FLOW)
    sol_perm = sj.gradient_flow(problem, permute_neurons(ws, 2, perm), T1, **FLOW)
    _assert_moved(sol)
    assert _max_abs(permute_neurons(sol.params, 2, perm), sol_perm.params) < ROUNDOFF * _scale(
        sol.params
    )


def test_deep_relu_descent_commutes_with_permutation():
    """Permutations commute with the training dynamics of a deep ReLU net (3, 6, 6, 2) on a
    square loss: gradient descent, the explicit-Euler discretisation of the flow (SPEC §1), from
    Pθ₀ equals P applied to descent from θ₀ at every saved iterate, to rounding (ROUNDOFF).

    The argument is the one for the flow (∇L(Pθ) = P∇L(θ)); descent with a fixed step is the
    clean check because the ReLU flow is not smooth: an adaptive solver at rtol 1e-10 shrinks
    its steps at every kink and, where the flow slides along a kink, exceeds 10⁴ steps per unit
    time, and its step choices there are sensitive to rounding. A fixed draw: on some random
    draws dead ReLUs keep 1000 steps from halving the loss, and `_assert_moved` (which makes
    the comparison non-trivial) would fail for a reason unrelated to the symmetry."""
    kx, kt, kn = jr.split(jr.key(0), 3)
    x = jr.normal(kx, (12, 3))
    teacher = DeepReLU((3, 4, 2), key=kt, std=1.0)
    loss = sj.SquareLoss(x, jax.vmap(teacher)(x))
    net = DeepReLU((3, 6, 6, 2), key=kn)
    perm = jnp.array([5, 2, 0, 4, 1, 3])
    descent = dict(learning_rate=0.02, steps=1000, save_every=200)
    sol = sj.gradient_descent(loss, net, **descent)
    sol_perm = sj.gradient_descent(loss, permute_neurons(net, 1, perm), **descent)
    _assert_moved(sol)
    assert _max_abs(permute_neurons(sol.params, 1, perm), sol_perm.params) < ROUNDOFF * _scale(
        sol.params
    )


@pytest.mark.parametrize("rotate", [False, True])
def test_balanced_factorisation(getkey, rotate):
    """balanced_dln(A): W_L ⋯ W_1 = A when the hidden widths are ≥ rank A, and every
    D_ℓ = W_{ℓ+1}ᵀW_{ℓ+1} − W_ℓW_ℓᵀ vanishes (SPEC §2), with or without random rotations; a
    narrower net gives the best rank-k approximation, whose error is √(Σ_{i>k} σ_i²)."""
    a = sj.matrix_completion_problem(getkey(), n=4, rank=2).target
    key = getkey() if rotate else None
    ws = balanced_dln(a, (4, 3, 2, 5, 4), key=key)
    assert [w.shape for w in ws] == [(3, 4), (2, 3), (5, 2), (4, 5)]
    scale = float(jnp.max(jnp.abs(a)))
    np.testing.assert_allclose(sj.nn.end_to_end_matrix(ws), a, atol=EXACT * scale)
    for d in sj.balancedness(ws):
        assert float(jnp.max(jnp.abs(d))) < EXACT * scale
    full_rank = jr.normal(getkey(), (4, 4))
    narrow = balanced_dln(full_rank, (4, 6, 2, 4), key=key)
    s = np.linalg.svd(np.asarray(full_rank), compute_uv=False)
    err = np.linalg.norm(np.asarray(sj.nn.end_to_end_matrix(narrow) - full_rank))
    np.testing.assert_allclose(err, np.sqrt(np.sum(s[2:] ** 2)), rtol=1e-10)
    for d in sj.balancedness(narrow):
        assert float(jnp.max(jnp.abs(d))) < EXACT * float(s[0])
    # A matrix of rank 2 up to rounding: its rounding-level singular values would enter the
    # factors as their 4th roots (1e−4) unless `rank` keeps them out.
    ws = balanced_dln(a, (4, 4, 4, 4, 4), key=key, rank=2)
    assert max(int(np.linalg.matrix_rank(np.asarray(w), tol=1e-12)) for w in ws) == 2
    np.testing.assert_allclose(sj.nn.end_to_end_matrix(ws), a, atol=EXACT * scale)
    with pytest.raises(ValueError, match="`rank`"):
        balanced_dln(a, (4, 4, 4), rank=0)


def test_balanced_representative_is_on_the_orbit_and_balanced():
    """`balanced_representative` of a rank-2 net moved along its GL orbit (W_ℓ ↦ G_ℓW_ℓG_{ℓ−1}⁻¹,
    A unchanged, balancedness not): A is kept, every D_ℓ vanishes, and it is the balanced point
    nearest the net modulo rotations (the net's own balanced start, rotated, comes back)."""
    from saddlejax.analysis._alignment import balanced_representative

    getkey = _fixed_draw().__next__
    a = sj.matrix_completion_problem(getkey(), n=4, rank=2).target
    widths = (4, 5, 5, 4)
    start = DeepLinear(widths, key=getkey())
    start = eqx.tree_at(lambda m: m.weights, start, balanced_dln(a, widths, rank=2))
    g = [jnp.eye(5) + 0.2 * jr.normal(k, (5, 5)) for k in jr.split(getkey(), 2)]
    w1, w2, w3 = start.weights
    moved = eqx.tree_at(lambda m: m.weights, start,
                        (g[0] @ w1, g[1] @ w2 @ jnp.linalg.inv(g[0]), w3 @ jnp.linalg.inv(g[1])))
    scale = float(jnp.max(jnp.abs(a)))
    assert max(float(jnp.max(jnp.abs(d))) for d in sj.balancedness(moved.weights)) > 0.1
    rep = balanced_representative(moved)
    np.testing.assert_allclose(rep.matrix(), a, atol=EXACT * scale)
    assert max(float(jnp.max(jnp.abs(d))) for d in sj.balancedness(rep.weights)) < EXACT * scale
    rotated = rotate_hidden(start, random_rotations(getkey(), widths))
    back = balanced_representative(rotated)
    assert _max_abs(back.weights, rotated.weights) < 1e-9
    with pytest.raises(ValueError, match="`model`"):
        balanced_representative(TwoLayer(3, 4, 1, "tanh", key=getkey()))


def test_balancedness_conserved_from_balanced_start():
    """A random balanced draw has entry RMS `std` and D_ℓ = 0; along the gradient flow of
    matrix completion D_ℓ(t) stays 0 (conserved, SPEC §2) to the integration tolerance, while
    the weights change by O(1). A fixed draw (`_fixed_draw`)."""
    draw = _fixed_draw()
    k_problem, k_params = next(draw), next(draw)
    problem = sj.matrix_completion_problem(k_problem, n=4, rank=2)
    ws = random_balanced_dln(WIDTHS, key=k_params, std=0.15)
    np.testing.assert_allclose(sj.init.entry_std(ws), 0.15, rtol=1e-12)
    for d in sj.balancedness(ws):
        assert float(jnp.max(jnp.abs(d))) < 1e-14
    sol = sj.gradient_flow(problem, ws, T1, **FLOW)
    _assert_moved(sol)
    norms = sj.layer_norms(sol.params)
    for d in sj.balancedness(sol.params):
        drift = float(jnp.max(jnp.abs(d)))
        assert drift < INTEGRATION * float(norms.max()) ** 2


def test_validation(getkey):
    """Wrong shapes and arguments raise ValueError naming the argument."""
    ws = _dln(getkey())
    with pytest.raises(ValueError, match="rotations"):
        rotate_hidden(ws, [jnp.eye(5)])
    with pytest.raises(ValueError, match="rotations"):
        rotate_hidden(ws, [jnp.eye(5), jnp.eye(4)])
    with pytest.raises(ValueError, match="rotate_hidden"):
        rotate_hidden(DeepReLU((3, 5, 2), key=getkey()), [jnp.eye(5)])
    with pytest.raises(ValueError, match="widths"):
        include_dln(ws, (4, 4, 5, 4))
    with pytest.raises(ValueError, match="widths"):
        include_dln(ws, (3, 6, 6, 4))
    with pytest.raises(ValueError, match="perm"):
        permute_neurons(ws, 1, jnp.array([0, 0, 1, 2, 3]))
    with pytest.raises(ValueError, match="perm"):
        permute_neurons(ws, 1, jnp.arange(4))
    with pytest.raises(ValueError, match="layer"):
        permute_neurons(ws, 3, jnp.arange(4))
    with pytest.raises(ValueError, match="layer"):
        permute_neurons(TwoLayer(3, 4, 1, key=getkey()), 2, jnp.arange(4))
    with pytest.raises(ValueError, match="`a`"):
        balanced_dln(jnp.ones((3, 4)), WIDTHS)
    with pytest.raises(ValueError, match="std"):
        random_balanced_dln(WIDTHS, key=getkey(), std=0.0)


def test_jit_and_vmap(getkey):
    """The maps are pure functions: under jit they equal the eager call, and vmap over a batch
    of permutations equals a Python loop."""
    ws = _dln(getkey())
    rots = random_rotations(getkey(), WIDTHS)
    assert _max_abs(jax.jit(rotate_hidden)(ws, rots), rotate_hidden(ws, rots)) < EXACT
    perms = jnp.stack([jr.permutation(k, 5) for k in jr.split(getkey(), 3)])
    batched = jax.vmap(lambda p: permute_neurons(ws, 1, p))(perms)
    for i, p in enumerate(perms):
        looped = permute_neurons(ws, 1, p)
        assert _max_abs(jax.tree_util.tree_map(lambda b: b[i], batched), looped) == 0.0


def test_gauge_aligned_undoes_a_rotation():
    """`gauge_aligned` moves a net along its orbit to the point nearest a reference: a rotated
    net comes back onto the original to round-off, and one that is also ε off the orbit comes
    back to within ε·‖noise‖ of it — no farther than the exact inverse rotation puts it (the
    optimum may be nearer). Other nets are refused."""
    from saddlejax.analysis import gauge_aligned, has_gauge

    getkey = _fixed_draw().__next__
    net = DeepLinear(WIDTHS, key=getkey())
    rots = random_rotations(getkey(), WIDTHS)
    aligned = gauge_aligned(rotate_hidden(net, rots), net)
    assert _max_abs(aligned.weights, net.weights) < 1e-10
    noise = tuple(jr.normal(k, w.shape) for k, w in zip(jr.split(getkey(), 3), net.weights))
    eps = 1e-6
    moved = eqx.tree_at(lambda m: m.weights, net,
                        tuple(w + eps * n for w, n in zip(net.weights, noise)))
    aligned = gauge_aligned(rotate_hidden(moved, rots), net)
    dist = float(jnp.sqrt(sum(jnp.sum((a - w) ** 2) for a, w in zip(aligned.weights,
                                                                    net.weights))))
    bound = eps * float(jnp.sqrt(sum(jnp.sum(n**2) for n in noise)))
    assert 0.5 * bound < dist <= bound * (1 + 1e-6)
    assert has_gauge(net) and not has_gauge(TwoLayer(3, 4, 1, "tanh", key=getkey()))
    with pytest.raises(ValueError, match="`model`"):
        gauge_aligned(TwoLayer(3, 4, 1, "tanh", key=getkey()), net)
    with pytest.raises(ValueError, match="`reference`"):
        gauge_aligned(net, DeepLinear((4, 6, 5, 4), key=getkey()))
