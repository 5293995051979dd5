"""Derivatives of the theory's solutions by the implicit function theorem: escape speeds and
directions (SPEC §5) and the fixed point Ψ(x₀) of Φ (SPEC §7), against closed forms, central
finite differences of the forward computation, exact symmetries, and forward against reverse
mode."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest
from _dln_cases import _g_with_spectrum, _like

import saddlejax as sj
from saddlejax.nn._layers import matrix_chain


def _speed_formula(g, depth):
    """∂s*/∂G for s* = L^{−(L−2)/2}σ_1(G) (SPEC §5): L^{−(L−2)/2}u_1v_1ᵀ, with numpy's SVD."""
    u, _, vt = np.linalg.svd(np.asarray(g))
    return depth ** (-(depth - 2) / 2) * np.outer(u[:, 0], vt[0])


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _vdot(a, b):
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return sum(jnp.vdot(x, y) for x, y in leaves)


# Spectrum with gaps of O(1): σ_1 and its singular vectors are smooth in G, with third
# derivatives O(1/gap²) = O(1).
SIGMAS = (3.0, 2.0, 1.0, 0.5)
# Central differences at step h = 1e-5 along E with ‖E‖ ≈ 4: truncation O(h²‖E‖³) ≲ 1e-9 for
# these smooth functions, and the forward computations (Newton on the sphere at roundoff, the
# fixed-point iteration at rtol 1e-13) contribute ≲ 1e-13/h = 1e-8. Measured 1e-11 to 1e-9;
# 1e-7 leaves a margin of 100, far below the O(1) error of a wrong derivative.
FD_STEP = 1e-5
FD_RTOL = 1e-7


def test_escape_speed_gradient_is_the_svd_formula(getkey):
    """L = 3: ∂s*/∂G of `optimal_escape(dln_taylor_term(G), L, ...).speed` (envelope theorem)
    equals L^{−(L−2)/2}u_1v_1ᵀ (SPEC §5: s* = L^{−(L−2)/2}σ_1(G), ∂σ_1/∂G = u_1v_1ᵀ); forward
    mode equals reverse mode; central differences of the solver's s* at G ± hE agree. (L = 2,
    s* = σ_1(G), is checked through `refine_escape_direction` below.)"""
    depth, widths = 3, (5, 3, 3, 4)
    g = _g_with_spectrum(getkey(), 4, 5, SIGMAS)
    like, key = _like(widths), getkey()

    def speed(g):
        esc = sj.optimal_escape(sj.dln_taylor_term(g), depth, like, key=key, n_restarts=2)
        return esc.speed

    grad = jax.grad(speed)(g)
    expected = _speed_formula(g, depth)
    # The envelope theorem at a ρ* converged to roundoff: measured ≤ 1e-14.
    assert _rel(grad, expected) < 1e-10
    e = jr.normal(getkey(), g.shape)
    _, tangent = jax.jvp(speed, (g,), (e,))
    assert abs(float(tangent - jnp.vdot(grad, e))) < 1e-12 * abs(float(tangent))
    # Central differences of the primal outputs of the same (compiled) forward-mode function.
    plus, minus = (jax.jvp(speed, (g + sign * FD_STEP * e,), (e,))[0] for sign in (1, -1))
    fd = (plus - minus) / (2 * FD_STEP)
    exact = float(np.vdot(expected, e))
    assert abs(float(fd) - exact) < FD_RTOL * abs(exact)


def test_speed_gradient_with_respect_to_the_data(getkey):
    """A depth-2 DLN on a square loss, H the generic Taylor term of the loss (`taylor_term`;
    its H reads the targets Y from the loss): ∂s*/∂Y = −(2/N)·X v_1u_1ᵀ with G = −(2/N)YᵀX the
    gradient of the cost at 0 (SPEC §3–§5; s* = σ_1(G) for L = 2)."""
    n, depth, widths = 12, 2, (5, 3, 4)
    x, y = jr.normal(getkey(), (n, 5)), jr.normal(getkey(), (n, 4))
    loss = sj.SquareLoss(x, y)
    origin = jax.tree_util.tree_map(
        lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a,
        sj.nn.DeepLinear(widths, key=getkey()),
    )
    term = sj.taylor_term(loss, origin)
    assert term.order == depth
    closed = sj.dln_escape_direction(sj.matrix_cost_gradient_at_zero(loss), widths)
    guess = eqx.tree_at(lambda m: m.weights, origin, closed.weights)

    def speed(y):
        H = eqx.tree_at(lambda t: t.loss.y, term, y).H
        return sj.refine_escape_direction(H, depth, guess).speed

    grad = jax.grad(speed)(y)
    g = -2.0 / n * np.asarray(y).T @ np.asarray(x)
    u, _, vt = np.linalg.svd(g)
    expected = -2.0 / n * np.asarray(x) @ np.outer(vt[0], u[:, 0])
    assert _rel(grad, expected) < 1e-10


def _rotation_generators(rho):
    """Tangents of the hidden-layer rotation orbit at ρ (SPEC §2): for each hidden layer ℓ and
    skew E_ab − E_ba, (…, A W_ℓ, −W_{ℓ+1} A, …)."""
    out = []
    for layer in range(len(rho) - 1):
        n = rho[layer].shape[0]
        for a in range(n):
            for b in range(a + 1, n):
                skew = jnp.zeros((n, n)).at[a, b].set(1.0).at[b, a].set(-1.0)
                xi = [jnp.zeros_like(w) for w in rho]
                xi[layer] = skew @ rho[layer]
                xi[layer + 1] = -rho[layer + 1] @ skew
                out.append(tuple(xi))
    return out


def _rotate_hidden(weights, rotations):
    """(O_1W_1, O_2W_2O_1ᵀ, …, W_LO_{L−1}ᵀ): a point of the same rotation orbit (SPEC §2)."""
    out, previous = [], None
    for w, o in zip(weights, list(rotations) + [None]):
        w = w if previous is None else w @ previous.T
        out.append(w if o is None else o @ w)
        previous = o
    return tuple(out)


def test_escape_direction_derivative(getkey):
    """L = 3, hidden width 3, ρ* a generic point of its rotation orbit (hidden layers rotated
    at random), where Hess_R(ρ*) is singular along the orbit. The implicit derivative dρ* is
    the minimum-norm one: it equals the derivative of the closed form
    (1/√L)R(−u_1w_2ᵀ, w_2w_1ᵀ, w_1v_1ᵀ) at fixed R, w_ℓ (JAX's SVD derivative), which is
    orthogonal to the orbit, and it is orthogonal to ρ* and to every rotation generator.
    The rotation-invariant A_ρ* = W_3W_2W_1 agrees with central differences of Newton's
    solution at G ± hE; forward mode equals reverse mode."""
    depth = 3  # widths (5, 3, 3, 4)
    g = _g_with_spectrum(getkey(), 4, 5, SIGMAS)
    rotations = [jnp.linalg.qr(jr.normal(getkey(), (3, 3)))[0] for _ in range(2)]
    e = jr.normal(getkey(), g.shape)

    def closed_form(g):
        u, _, vt = jnp.linalg.svd(g, full_matrices=False)
        c, w = depth**-0.5, jnp.zeros(3).at[0].set(1.0)
        weights = (c * jnp.outer(w, vt[0]), c * jnp.outer(w, w), -c * jnp.outer(u[:, 0], w))
        return _rotate_hidden(weights, rotations)

    guess = closed_form(g)

    def direction(g):
        return sj.refine_escape_direction(sj.dln_taylor_term(g), depth, guess).direction

    rho, drho = jax.jvp(direction, (g,), (e,))
    _, expected = jax.jvp(closed_form, (g,), (e,))
    flat = lambda t: np.concatenate([np.ravel(x) for x in t])  # noqa: E731
    assert _rel(flat(drho), flat(expected)) < 1e-10
    norm = float(jnp.sqrt(_vdot(drho, drho)))
    assert abs(float(_vdot(rho, drho))) < 1e-12 * norm
    for xi in _rotation_generators(rho):
        assert abs(float(_vdot(xi, drho))) < 1e-10 * norm * float(jnp.sqrt(_vdot(xi, xi)))
    da = jax.jvp(matrix_chain, (rho,), (drho,))[1]
    plus, minus = (jax.jvp(direction, (g + sign * FD_STEP * e,), (e,))[0] for sign in (1, -1))
    fd = (matrix_chain(plus) - matrix_chain(minus)) / (2 * FD_STEP)
    assert _rel(da, fd) < FD_RTOL
    w = jax.tree_util.tree_map(lambda a: jr.normal(getkey(), a.shape), rho)
    grad = jax.grad(lambda g: _vdot(w, direction(g)))(g)
    # Two LSMR solves (Hess_R and its transpose) at rtol 1e-12: measured 2e-13 to 6e-13.
    assert abs(float(jnp.vdot(grad, e) - _vdot(w, drho))) < 1e-10 * norm


def test_vmap_of_speed_gradients_over_data_sets(getkey):
    """`jax.vmap(jax.grad(...))` of the refined speed over three G's of the same shape, with H a
    closure that captures G (its arrays are differentiated): each row is that G's SVD
    formula."""
    depth, widths = 2, (5, 3, 4)
    gs = jnp.stack([_g_with_spectrum(getkey(), 4, 5, (s1, 1.0, 0.5)) for s1 in (2.0, 3.0, 4.0)])
    guesses = jax.vmap(lambda g: sj.dln_escape_direction(g, widths).weights)(gs)

    def speed(g, guess):
        H = lambda weights: jnp.sum(g * matrix_chain(weights))  # noqa: E731
        return sj.refine_escape_direction(H, depth, guess).speed

    grads = jax.vmap(jax.grad(speed))(gs, guesses)
    for g, grad in zip(gs, grads):
        assert _rel(grad, _speed_formula(g, depth)) < 1e-10


# ---------------------------------------------------------------------------------------------
# the fixed point Ψ(x₀) of Φ


PROBLEM = sj.matrix_completion_problem(jr.key(0), n=4, rank=2, observed=0.75)
G = sj.matrix_cost_gradient_at_zero(PROBLEM)
H = sj.dln_taylor_term(G)


def _x0(n=201):
    rho = sj.dln_escape_direction(G, (4, 3, 4))
    s = float(rho.speed)
    ts = sj.escape_times(s, 2, radii=(1e-4, 0.5), n=n)
    return sj.escape_path(rho.weights, s, 2, ts), s


X0, SPEED = _x0()
# Tight enough that the forward computation's error (≲ rtol·‖x‖, superlinear convergence in
# practice) is far below the finite-difference truncation.
PSI_RTOL = 1e-13


def _psi_path(target, x0=X0):
    problem = sj.MatrixCompletion(target, PROBLEM.mask)
    return sj.psi(problem, x0, H, next_order=4, speed=SPEED, rtol=PSI_RTOL).path


def test_psi_gradient_with_respect_to_the_data(getkey):
    """L = 2, ⟨W, Ψ(x₀)⟩ as a function of the matrix-completion target A*, for two targets:
    `jax.vmap(jax.grad(...))` (reverse mode by the implicit function theorem, a Neumann
    series, batched over the data sets) equals forward mode and central differences of the
    fixed-point iteration at A* ± hE, for each target."""
    w = jax.tree_util.tree_map(lambda a: jr.normal(getkey(), a.shape), X0.xs)

    def f(target):
        return _vdot(w, _psi_path(target).xs)

    targets = jnp.stack([PROBLEM.target, PROBLEM.target + 0.1 * jr.normal(getkey(), (4, 4))])
    e = jr.normal(getkey(), (4, 4))
    grads = jax.vmap(jax.grad(f))(targets)
    for target, grad in zip(targets, grads):
        _, tangent = jax.jvp(f, (target,), (e,))
        assert abs(float(jnp.vdot(grad, e) - tangent)) < 1e-10 * abs(float(tangent))
        # Central differences of the primal outputs of the same (compiled) forward-mode function.
        plus, minus = (jax.jvp(f, (target + sign * FD_STEP * e,), (e,))[0] for sign in (1, -1))
        fd = (plus - minus) / (2 * FD_STEP)
        assert abs(float(fd - tangent)) < FD_RTOL * abs(float(tangent))


def test_psi_derivative_along_a_rotation_of_x0():
    """Ψ commutes with the hidden-layer rotations (C and H are invariant, SPEC §2): the
    derivative of Ψ(x₀) along the rotation generator applied to x₀ is that generator applied
    to Ψ(x₀)."""
    skew = jnp.zeros((3, 3)).at[0, 1].set(1.0).at[1, 0].set(-1.0)

    def rotate(xs):
        w1, w2 = xs
        return (skew @ w1, -w2 @ skew)

    def psi_of(xs):
        return _psi_path(PROBLEM.target, X0.with_xs(xs)).xs

    image, tangent = jax.jvp(psi_of, (X0.xs,), (rotate(X0.xs),))
    for a, b in zip(tangent, rotate(image)):
        assert _rel(a, b) < 1e-10


def test_adjoint_must_be_implicit(getkey):
    """The escape solvers differentiate only by the implicit function theorem (their loops are
    not differentiable); the fixed point also accepts `RecursiveCheckpointAdjoint`. Anything
    else is a ValueError naming `adjoint`, raised before any solve."""
    H2 = sj.dln_taylor_term(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="adjoint"):
        sj.optimal_escape(
            H2, 2, _like((3, 2, 2)), key=getkey(), adjoint=optx.RecursiveCheckpointAdjoint()
        )
    with pytest.raises(ValueError, match="adjoint"):
        sj.refine_escape_direction(H2, 2, _like((3, 2, 2)), adjoint=None)
    with pytest.raises(ValueError, match="adjoint"):
        sj.psi(PROBLEM, X0, H, next_order=4, speed=SPEED, adjoint="implicit")
