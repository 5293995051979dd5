"""Property-based tests (hypothesis) of the invariants of SPEC §2 and §4 over random shapes,
seeds and scales: balancedness conserved by the flow of a DLN (and changed by exactly η²(…) by a
gradient-descent step), rotation and neuron-permutation equivariance, positive homogeneity of the
networks f(cθ) = c^k f(θ), and the homogeneity and Euler identities of the leading Taylor term.

Every tolerance is a roundoff bound written against the magnitude of the terms that were summed
(the same expression with absolute values), so that cancellation cannot make it fail spuriously.
Shapes are drawn from a few fixed buckets: every new shape compiles, so the number of buckets,
not the number of examples, sets the run time.
"""

import diffrax
import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from hypothesis import HealthCheck, given, settings

import saddlejax as sj
from saddlejax.models import permute_neurons, random_rotations, rotate_hidden
from saddlejax.nn import DeepLinear, DeepReLU, SquaredReLU, TwoLayer

# DLN widths (n_0, …, n_L): depths 2 to 4, a width-1 bottleneck, non-square ends.
BUCKETS = [(2, 3, 2), (3, 1, 2), (2, 3, 3, 2), (1, 2, 4, 3), (3, 2, 2, 2, 3)]
EPS = float(jnp.finfo(jnp.float64).eps)


def examples(n: int) -> settings:
    """`n` examples, no deadline (the first example of a shape compiles), no example database."""
    return settings(
        max_examples=n, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )


seeds = st.integers(0, 2**31 - 1)
buckets = st.sampled_from(BUCKETS)


def _problem(seed, widths):
    """A matrix completion of the network's shape (n_L × n_0), rank 1, 60 % observed."""
    return sj.matrix_completion_problem(
        jr.key(seed), n=widths[-1], n_in=widths[0], rank=1, observed=0.6
    )


def _dln(seed, widths, scale=1.0):
    return tuple(sj.init.scale(DeepLinear(widths, key=jr.key(seed)), scale).weights)


def _fro(a):
    return float(jnp.sqrt(jnp.sum(jnp.asarray(a) ** 2)))


def _chain(ws):
    """W_L ⋯ W_1, batched over leading axes (e.g. the save times of `sol.params`)."""
    out = ws[0]
    for w in ws[1:]:
        out = w @ out
    return out


def _abs_chain(ws):
    """|W_L| ⋯ |W_1|: bounds every sum in W_L ⋯ W_1 term by term (a roundoff scale)."""
    return _chain(tuple(jnp.abs(w) for w in ws))


@eqx.filter_jit
def _balancedness_rate(problem, ws):
    """(dD_ℓ/dt along −∇L, and the roundoff scale of each: ‖W_{ℓ+1}‖‖G_{ℓ+1}‖ + ‖W_ℓ‖‖G_ℓ‖)."""
    grads = jax.grad(problem)(ws)
    _, rate = jax.jvp(sj.balancedness, (ws,), (jax.tree_util.tree_map(jnp.negative, grads),))
    norms = [jnp.linalg.norm(w) * jnp.linalg.norm(g) for w, g in zip(ws, grads)]
    return rate, [a + b for a, b in zip(norms[:-1], norms[1:])]


@examples(40)
@given(buckets, seeds, st.floats(0.01, 3.0))
def test_vector_field_conserves_balancedness(widths, seed, scale):
    """dD_ℓ/dt = 0 along −∇L for every ℓ, at any θ (SPEC §2; Arora et al. 2018, Thm 1): the
    identity W_{ℓ+1}ᵀG_{ℓ+1} + G_{ℓ+1}ᵀW_{ℓ+1} = W_ℓG_ℓᵀ + G_ℓW_ℓᵀ that makes D_ℓ conserved."""
    rate, scales = _balancedness_rate(_problem(seed, widths), _dln(seed + 1, widths, scale))
    for r, s in zip(rate, scales):
        # two matrix products of width ≤ 5 per side, each rounded to ~5·eps of its size
        assert _fro(r) <= 50 * EPS * float(s) + 1e-300


FLOW = dict(solver=diffrax.Tsit5(), rtol=1e-10, atol=1e-12)


@examples(6)
@given(st.sampled_from(BUCKETS[:3]), seeds, st.floats(0.5, 1.0))
def test_flow_conserves_balancedness(widths, seed, scale):
    """Along the gradient flow of matrix completion, D_ℓ(t) = D_ℓ(0) at every save time
    (SPEC §2), while A_θ changes by O(1)."""
    ws = _dln(seed + 1, widths, scale)
    sol = sj.gradient_flow(_problem(seed, widths), ws, 5.0, saveat=np.linspace(0, 5, 4), **FLOW)
    a = _chain(sol.params)
    assert _fro(a[-1] - a[0]) > 1e-2 * _fro(a[0])  # the flow moved: the check is not vacuous
    size = max(float(jnp.sum(sol.params[i] ** 2)) for i in range(len(ws)))
    for d in sj.balancedness(sol.params):
        drift = max(_fro(d[t] - d[0]) for t in range(d.shape[0]))
        # global error of Tsit5 at rtol 1e-10 over t ≤ 5 is ≲ 1e-9 relative in W (measured in
        # test_symmetries), doubled in a quadratic form: 1e-7 relative to max ‖W_ℓ‖² leaves 50×
        assert drift <= 1e-7 * size


@eqx.filter_jit
def _descent_identity(problem, ws, ws_next, eta):
    """(D(θ₁) − D(θ₀) − η²(G_{ℓ+1}ᵀG_{ℓ+1} − G_ℓG_ℓᵀ), and the scale (‖W‖ + η‖G‖)² per ℓ)."""
    grads = jax.grad(problem)(ws)
    before, after = sj.balancedness(ws), sj.balancedness(ws_next)
    expected = sj.balancedness(tuple(eta * g for g in grads))
    size = [(jnp.linalg.norm(w) + eta * jnp.linalg.norm(g)) ** 2 for w, g in zip(ws, grads)]
    errors = [d1 - d0 - e for d0, d1, e in zip(before, after, expected)]
    return errors, [a + b for a, b in zip(size[:-1], size[1:])]


@examples(15)
@given(buckets, seeds, st.floats(1e-3, 0.5))
def test_descent_step_changes_balancedness_by_eta_squared(widths, seed, eta):
    """One step θ₁ = θ₀ − η∇L of `gradient_descent` changes D_ℓ by exactly
    η²(G_{ℓ+1}ᵀG_{ℓ+1} − G_ℓG_ℓᵀ) (the first-order terms cancel as for the flow, SPEC §2):
    the discrete counterpart of the conservation law."""
    problem, ws = _problem(seed, widths), _dln(seed + 1, widths, 0.7)
    sol = sj.gradient_descent(problem, ws, learning_rate=eta, steps=1, save_every=1)
    errors, scales = _descent_identity(problem, ws, tuple(sol.final_params), eta)
    for e, s in zip(errors, scales):
        # W₁ = W₀ − ηG rounded to eps·|W₁| per entry, then two products: ≲ 10·eps·(‖W‖ + η‖G‖)²
        assert _fro(e) <= 100 * EPS * float(s)


@eqx.filter_jit
def _rotation_check(problem, ws, rots):
    rotated = rotate_hidden(ws, rots)
    value, grads = jax.value_and_grad(problem)(ws)
    value_r, grads_r = jax.value_and_grad(problem)(rotated)
    d, d_r = sj.balancedness(ws), sj.balancedness(rotated)
    return dict(
        matrix=(sj.nn.end_to_end_matrix(rotated) - sj.nn.end_to_end_matrix(ws), _abs_chain(ws)),
        loss=(value_r - value, value),
        grads=(
            [a - b for a, b in zip(grads_r, rotate_hidden(grads, rots))],
            [jnp.linalg.norm(g) for g in grads],
        ),
        balancedness=(
            [dr - o @ di @ o.T for dr, di, o in zip(d_r, d, rots)],
            [jnp.linalg.norm(w) ** 2 + jnp.linalg.norm(w2) ** 2 for w, w2 in zip(ws, ws[1:])],
        ),
    )


@examples(25)
@given(buckets, seeds)
def test_rotation_equivariance(widths, seed):
    """For a Haar rotation R of the hidden layers: A_{Rθ} = A_θ, L(Rθ) = L(θ), ∇L(Rθ) = R∇L(θ),
    D_ℓ(Rθ) = O_ℓ D_ℓ(θ) O_ℓᵀ (SPEC §2, Jacot et al. §2.2)."""
    ws = _dln(seed + 1, widths)
    rots = random_rotations(jr.key(seed + 2), widths)
    out = _rotation_check(_problem(seed, widths), ws, rots)
    # every quantity is a product of ≤ 4 matrices of width ≤ 5 per side, rounded at ~20·eps
    err, scale = out["matrix"]
    assert float(jnp.max(jnp.abs(err))) <= 100 * EPS * float(jnp.max(scale))
    err, value = out["loss"]
    assert abs(float(err)) <= 1e3 * EPS * (float(value) + float(jnp.max(scale)) ** 2)
    for e, g in zip(*out["grads"]):
        assert _fro(e) <= 1e3 * EPS * max(float(g) for g in out["grads"][1])
    for e, s in zip(*out["balancedness"]):
        assert _fro(e) <= 100 * EPS * float(s)


_NETWORKS = {
    "dln_tuple": (lambda k: tuple(DeepLinear((3, 4, 5, 2), key=k).weights), 3),
    "deep_linear": (lambda k: DeepLinear((3, 4, 5, 2), key=k), 3),
    "deep_relu": (lambda k: DeepReLU((3, 4, 5, 2), key=k), 3),
    "leaky_relu": (lambda k: DeepReLU((3, 4, 5, 2), 0.2, key=k), 3),
    "two_layer_tanh": (lambda k: TwoLayer(3, 5, 2, "tanh", key=k), 2),
    "squared_relu": (lambda k: SquaredReLU(3, 5, key=k, std=1.0), 1),
}


def _outputs(params, x):
    if isinstance(params, tuple):
        return x @ sj.nn.end_to_end_matrix(params).T
    return jax.vmap(params)(x)


@eqx.filter_jit
def _permutation_check(params, permuted, perm, layer, loss):
    out, out_p = _outputs(params, loss.x), _outputs(permuted, loss.x)
    grads = jax.grad(loss)(params)
    grads_p = jax.grad(loss)(permuted)
    abs_params = jax.tree_util.tree_map(jnp.abs, params)
    return (
        jnp.max(jnp.abs(out_p - out)),
        jnp.max(_outputs(abs_params, jnp.abs(loss.x))),
        [
            jnp.max(jnp.abs(a - b))
            for a, b in zip(
                jax.tree_util.tree_leaves(grads_p),
                jax.tree_util.tree_leaves(permute_neurons(grads, layer, perm)),
            )
        ],
        jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree_util.tree_leaves(grads)])),
    )


@examples(30)
@given(st.sampled_from(sorted(_NETWORKS)), seeds, st.data())
def test_permutation_equivariance(case, seed, data):
    """Permuting the neurons of any hidden layer ℓ leaves f_θ(x) unchanged and permutes ∇L the
    same way, for DLNs, deep (leaky-)ReLU, two-layer and squared-ReLU nets (SPEC §2)."""
    build, depth = _NETWORKS[case]
    params = build(jr.key(seed))
    layer = data.draw(st.integers(1, max(depth - 1, 1)), label="layer")
    width = jax.tree_util.tree_leaves(params)[layer - 1].shape[0]
    perm = jnp.asarray(data.draw(st.permutations(range(width)), label="perm"))
    k1, k2 = jr.split(jr.key(seed + 1))
    n_out = 1 if case == "squared_relu" else 2
    loss = sj.SquareLoss(jr.normal(k1, (6, 3)), jr.normal(k2, (6, n_out)))
    permuted = permute_neurons(params, layer, perm)
    out_err, out_scale, grad_errs, grad_scale = _permutation_check(
        params, permuted, perm, layer, loss
    )
    # a permutation only reorders sums of ≤ 5 terms: a few eps of their absolute sum
    assert float(out_err) <= 50 * EPS * float(out_scale)
    for e in grad_errs:
        assert float(e) <= 1e3 * EPS * (float(grad_scale) + float(out_scale) ** 2)


# (network, homogeneity degree k, whether c may be negative)
_HOMOGENEOUS = {
    "dln_depth_2": (lambda k: DeepLinear((3, 4, 2), key=k), 2, True),
    "dln_depth_4": (lambda k: DeepLinear((3, 4, 5, 4, 2), key=k), 4, True),
    "relu_depth_3": (lambda k: DeepReLU((3, 4, 5, 2), key=k), 3, False),
    "leaky_relu_depth_4": (lambda k: DeepReLU((3, 4, 5, 4, 2), 0.1, key=k), 4, False),
    "two_layer_relu": (lambda k: TwoLayer(3, 5, 2, "relu", key=k), 2, False),
    "two_layer_identity": (lambda k: TwoLayer(3, 5, 2, "identity", key=k), 2, True),
    "two_layer_squared_relu": (lambda k: TwoLayer(3, 5, 2, "squared_relu", key=k), 3, False),
    "squared_relu": (lambda k: SquaredReLU(3, 5, key=k, std=1.0), 2, False),
}


@eqx.filter_jit
def _homogeneity_check(net, c, x, k):
    f, f_c = jax.vmap(net)(x), jax.vmap(_times(net, c))(x)
    magnitude = jax.vmap(jax.tree_util.tree_map(jnp.abs, net))(jnp.abs(x))
    return jnp.max(jnp.abs(f_c - c**k * f)), jnp.max(magnitude)


def _times(net, c):
    return jax.tree_util.tree_map(lambda w: c * w if eqx.is_inexact_array(w) else w, net)


@examples(40)
@given(st.sampled_from(sorted(_HOMOGENEOUS)), seeds, st.floats(0.1, 10.0), st.booleans())
def test_positive_homogeneity_of_networks(case, seed, c, negate):
    """f_{cθ}(x) = c^k f_θ(x) for c > 0 (SPEC §2: DLNs and deep (leaky-)ReLU nets are
    L-homogeneous, two-layer ReLU nets and squared-ReLU layers 2-homogeneous, a two-layer net
    with σ = ReLU² 3-homogeneous), and for c < 0 too where the net is linear."""
    build, k, signed = _HOMOGENEOUS[case]
    c = -c if (negate and signed) else c
    net = build(jr.key(seed))
    x = jr.normal(jr.key(seed + 1), (5, 3))
    err, magnitude = _homogeneity_check(net, jnp.asarray(c), x, k)
    # the same products scaled by c: relative roundoff ~ k·eps on every term, bounded by the
    # network of absolute values |W_L|⋯σ(|W_1||x|) (σ(z) ≤ |z| or z² here), times |c|^k
    assert float(err) <= 100 * EPS * abs(c) ** k * float(magnitude)


@eqx.filter_jit
def _taylor_check(H, delta, c, k):
    h, grad = jax.value_and_grad(H)(delta)
    h_c = H(jax.tree_util.tree_map(lambda d: c * d, delta))
    euler = sum(
        jnp.vdot(g, d)
        for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(delta))
    )
    return h, h_c - c**k * h, euler - k * h


_TAYLOR_BUCKETS = [(2, 3, 2), (1, 2, 4, 3)]  # each compiles the Taylor coefficients (~5 s)


@examples(12)
@given(st.sampled_from(_TAYLOR_BUCKETS), seeds, st.floats(0.2, 3.0), st.booleans())
def test_taylor_term_of_a_dln_is_homogeneous(widths, seed, c, negate):
    """At the origin of a depth-L DLN on matrix completion, `taylor_term` reads k = L and m = 2L,
    and its H satisfies H(cδ) = c^L H(δ) (any real c), Euler's identity ⟨∇H(δ), δ⟩ = L·H(δ), and
    H(δ) = Tr[Gᵀ A_δ] with G = ∇C(0) (SPEC §4)."""
    depth = len(widths) - 1
    problem = _problem(seed, widths)
    origin = tuple(jnp.zeros_like(w) for w in _dln(0, widths))
    taylor = sj.taylor_term(problem, origin, key=jr.key(seed))
    assert (taylor.order, taylor.next_order) == (depth, 2 * depth)
    delta = _dln(seed + 1, widths)
    c = -c if negate else c
    h, homogeneity, euler = _taylor_check(taylor.H, delta, jnp.asarray(c), depth)
    g = sj.matrix_cost_gradient_at_zero(problem)
    # H is Tr[Gᵀ A_δ] evaluated through L nested derivatives: roundoff of a sum of |G|·|A|
    scale = float(jnp.sum(jnp.abs(g) * _abs_chain(delta)))
    assert abs(float(h) - float(jnp.sum(g * sj.nn.end_to_end_matrix(delta)))) <= 1e3 * EPS * scale
    assert abs(float(homogeneity)) <= 1e3 * EPS * abs(c) ** depth * scale
    assert abs(float(euler)) <= 1e3 * EPS * depth * scale


@examples(8)
@given(seeds, st.floats(0.2, 3.0))
def test_taylor_term_of_a_relu_net_is_positively_homogeneous(seed, c):
    """At the origin of a depth-3 ReLU net with a square loss, `taylor_term` takes the
    'outputs' route, k = 3, and H(cδ) = c³H(δ) for c > 0 with Euler's identity
    ⟨∇H(δ), δ⟩ = 3H(δ) (SPEC §4: positively homogeneous networks)."""
    k1, k2, k3 = jr.split(jr.key(seed), 3)
    loss = sj.SquareLoss(jr.normal(k1, (6, 3)), jr.normal(k2, (6, 2)))
    net = DeepReLU((3, 4, 4, 2), key=k3)
    origin = jax.tree_util.tree_map(jnp.zeros_like, net)
    taylor = sj.taylor_term(loss, origin, key=jr.key(seed + 1))
    assert (taylor.order, taylor.method) == (3, "outputs")
    delta = DeepReLU((3, 4, 4, 2), key=jr.key(seed + 2))
    h, homogeneity, euler = _taylor_check(taylor.H, delta, jnp.asarray(c), 3)
    dl = jnp.abs(loss.output_gradient_at_zero())
    scale = float(jnp.sum(dl * jax.vmap(jax.tree_util.tree_map(jnp.abs, delta))(jnp.abs(loss.x))))
    assert abs(float(homogeneity)) <= 1e3 * EPS * c**3 * scale
    assert abs(float(euler)) <= 1e3 * EPS * 3 * scale
