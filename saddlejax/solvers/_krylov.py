"""Krylov building blocks for the stiff gradient flow, on pytrees of layer arrays.

Conjugate gradients with deflation and recycling, one step of subspace iteration for the
dominant eigenspace of ∇²L, and power iteration for λ_max(∇²L): each works on Hessian-vector
products only, never a dense P×P matrix. Vectors stay pytrees inside the loops on purpose: on
XLA:CPU a Hessian-vector product of a deep net is ≈ 5× slower when its input is a slice of a
flat loop-carried vector than when it is a pytree of layer arrays (490 µs vs 102 µs at
P = 22,000).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from optax.tree_utils import tree_add_scale, tree_scale, tree_size, tree_sub, tree_vdot
from optimistix import two_norm


def stack_dot(stack, x):
    """(k,) inner products of each row of a stacked pytree (leading axis k) with the pytree x."""
    parts = [
        jnp.tensordot(s, v, axes=v.ndim)
        for s, v in zip(jax.tree_util.tree_leaves(stack), jax.tree_util.tree_leaves(x))
    ]
    return sum(parts[1:], start=parts[0])


def stack_gram(a, b):
    """(k, k) matrix of inner products ⟨aᵢ, bⱼ⟩ of two stacked pytrees."""
    parts = [
        jnp.tensordot(x, y, axes=(tuple(range(1, x.ndim)),) * 2)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    ]
    return sum(parts[1:], start=parts[0])


def stack_rotate(mat, stack):
    """Rows Σⱼ matᵢⱼ·stackⱼ (a new stacked pytree)."""
    return jax.tree_util.tree_map(lambda s: jnp.tensordot(mat, s, axes=1), stack)


def track_subspace(hvp_batch: Callable, basis):
    """One step of subspace iteration with Rayleigh–Ritz (Saad, *Numerical Methods for Large
    Eigenvalue Problems*, Alg. 5.3) for the dominant invariant subspace of a symmetric
    operator, from an orthonormal `basis` (k stacked pytrees).

    With W = H·basis: the Ritz pairs (Ṽ, θ) of H on span(basis) (exact Galerkin pairs of the
    current H), and the next basis: Ṽᵢ + Rᵢ/θ̂ᵢ orthonormalised, where Rᵢ = HṼᵢ − θᵢṼᵢ ⊥ span(Ṽ)
    and θ̂ᵢ = max(|θᵢ|, ‖Rᵢ‖). For a converged, dominant pair that is the power step HṼᵢ/θᵢ; an
    unconverged one turns by at most 45° towards its residual, so the Gram matrix I + R̂R̂ᵀ stays
    well conditioned (κ ≤ 1 + k) and its Cholesky factor exists. One step shrinks the angle to
    the top-k subspace by λ_{k+1}/λ_k per step: ≈ 10⁻³ on the plateaus of the default problem.

    **Returns:** (Ṽ, θ ascending with unconverged pairs (‖Rᵢ‖ > θᵢ/10) set to 0, next
    orthonormal basis, number of operator products).
    """
    k = jax.tree_util.tree_leaves(basis)[0].shape[0]
    hb = hvp_batch(basis)
    s = stack_gram(basis, hb)
    theta, u = jnp.linalg.eigh(0.5 * (s + s.T))
    ritz_v = stack_rotate(u.T, basis)
    ritz_hv = stack_rotate(u.T, hb)
    resid = jax.tree_util.tree_map(
        lambda hv, v: hv - theta.reshape((-1,) + (1,) * (v.ndim - 1)) * v, ritz_hv, ritz_v
    )
    rnorm = jnp.sqrt(jnp.maximum(jnp.diag(stack_gram(resid, resid)), 0.0))
    denom = jnp.maximum(jnp.maximum(jnp.abs(theta), rnorm), jnp.finfo(theta.dtype).tiny)
    step = jax.tree_util.tree_map(
        lambda v, r: v + r / denom.reshape((-1,) + (1,) * (v.ndim - 1)), ritz_v, resid
    )
    gram = stack_gram(step, step)
    chol = jnp.linalg.cholesky(0.5 * (gram + gram.T))
    inv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(k, dtype=theta.dtype), lower=True)
    # Only converged pairs (residual ≤ θ/10) may be deflated: a preconditioner built on a
    # mixture of eigenvectors removes directions A does not damp and slows CG down.
    theta = jnp.where(rnorm <= 0.1 * jnp.abs(theta), theta, 0.0)
    return ritz_v, theta, stack_rotate(inv, step), k


def initial_basis(y0, k: int):
    """k orthonormal pseudo-random directions shaped like y0 (Gaussian, fixed seed).

    Drawn with NumPy while tracing, a constant of the compiled solve, up to `_CONSTANT_BASIS`
    entries. A draw with `jax.random` compiles threefry for every leaf shape, inside the solve
    or as eager ops (too quick for the persistent cache, so every process compiled them again):
    the first AutoStiff solve of a DLN (6, 8, 8, 6) took 19.7–20.6 s with eager draws, 12.1–14.1
    s with NumPy's (4.3 s against 6.2 s with a persistent cache). Larger bases are drawn inside
    the solve, not embedded."""
    if k == 0:
        return jax.tree_util.tree_map(lambda x: jnp.zeros((0,) + x.shape, x.dtype), y0)
    if k * tree_size(y0) > _CONSTANT_BASIS:
        return _draw_basis(y0, k)
    leaves, treedef = jax.tree_util.tree_flatten(y0)
    draw = np.random.default_rng(_BASIS_SEED).standard_normal((tree_size(y0), k))
    q = np.linalg.qr(draw)[0].T  # k orthonormal rows
    rows = np.split(q, np.cumsum([x.size for x in leaves])[:-1], axis=1)
    return jax.tree_util.tree_unflatten(
        treedef,
        [jnp.asarray(r.reshape((k,) + x.shape), x.dtype) for r, x in zip(rows, leaves)],
    )


# 2²¹ float64 entries (16 MiB): a deflation basis of 16 directions for 131,072 parameters.
_CONSTANT_BASIS = 1 << 21
# The basis's seed: a solve's step count must not hinge on it (tests vary it).
_BASIS_SEED = 0


def _draw_basis(y0, k: int):
    leaves, treedef = jax.tree_util.tree_flatten(y0)
    keys = jax.random.split(jax.random.key(_BASIS_SEED), len(leaves))
    stack = jax.tree_util.tree_unflatten(
        treedef,
        [jax.random.normal(kk, (k,) + x.shape, x.dtype) for kk, x in zip(keys, leaves)],
    )
    chol = jnp.linalg.cholesky(stack_gram(stack, stack))
    eye = jnp.eye(k, dtype=leaves[0].dtype)
    return stack_rotate(jax.scipy.linalg.solve_triangular(chol, eye, lower=True), stack)


def stack_combine(coeffs, stack):
    """Σᵢ cᵢ·stackᵢ: a pytree (the transpose of `stack_dot`)."""
    return jax.tree_util.tree_map(lambda s: jnp.tensordot(coeffs, s, axes=1), stack)


def weighted_rms(r, scale):
    q = jax.tree_util.tree_map(lambda a, b: a / b, r, scale)
    return jnp.sqrt(tree_vdot(q, q) / tree_size(q))


def conjugate_gradient(
    matvec: Callable,
    b,
    x0,
    scale,
    tol,
    max_steps: int,
    precondition: Callable | None = None,
    recycle=None,
    record: int = 0,
):
    """Solve A x = b for symmetric A by (preconditioned) conjugate gradients, from x0.

    All vectors are pytrees of arrays (a plain array is one; see the module docstring).

    Stops when RMS(r/scale) ≤ tol (r = b − A x), when pᵀAp ≤ 0 (A not positive definite along
    p: failure), or after `max_steps` iterations (failure unless converged). `precondition`
    applies a symmetric positive-definite M⁻¹.

    Recycling (several right-hand sides with one matrix, as in the stages of a Rosenbrock
    step): `record=m` also returns the first m search directions P = (pⱼ), their products AP
    and the pseudo-inverse of the Galerkin matrix G = P A Pᵀ (built from AP: no extra
    products); passing them back as `recycle` to a later solve with the same A starts it from
    the Galerkin projection x₀ += Pᵀ G⁺ P r₀, the A-norm-optimal correction over span P (Saad,
    *Iterative Methods for Sparse Linear Systems*, §5.2; the "deflated initial guess" of
    Erhel & Guyomarc'h 2000). G is used in full rather than its diagonal: with outlying
    eigenvalues the recorded directions lose A-conjugacy fast (measured 0.66 relative after 16
    steps at κ = 10⁵).

    **Returns:** (x, number of matrix-vector products, converged), plus the recorded
    (P, AP, G⁺) when `record > 0`.
    """
    prec = (lambda r: r) if precondition is None else precondition
    r = tree_sub(b, matvec(x0))
    if recycle is not None:
        rp, rap, g_pinv = recycle
        c = g_pinv @ stack_dot(rp, r)
        x0 = tree_add_scale(x0, 1.0, stack_combine(c, rp))
        r = tree_sub(r, stack_combine(c, rap))
    z = prec(r)
    rz = tree_vdot(r, z)

    def done_of(r, bad):
        return (weighted_rms(r, scale) <= tol) | bad

    def cond(carry):
        k, done = carry[4], carry[5]
        return (~done) & (k < max_steps)

    def body(carry):
        x, r, p, rz, k, _, _, rec = carry
        ap = matvec(p)
        pap = tree_vdot(p, ap)
        if record > 0:
            slot = jnp.minimum(k, record - 1)
            keep = k < record
            rp, rap, rpap = rec
            put = lambda stack, v: jax.tree_util.tree_map(  # noqa: E731
                lambda s_, v_: s_.at[slot].set(jnp.where(keep, v_, s_[slot])), stack, v
            )
            rec = (put(rp, p), put(rap, ap), rpap.at[slot].set(jnp.where(keep, pap, rpap[slot])))
        bad = ~(pap > 0)
        alpha = jnp.where(bad, 0.0, rz / jnp.where(bad, 1.0, pap))
        x = tree_add_scale(x, alpha, p)
        r = tree_add_scale(r, -alpha, ap)
        z = prec(r)
        rz_new = tree_vdot(r, z)
        beta = rz_new / jnp.where(rz > 0, rz, 1.0)
        p = tree_add_scale(z, beta, p)
        return x, r, p, rz_new, k + 1, done_of(r, bad), bad, rec

    if record > 0:
        stack = jax.tree_util.tree_map(lambda v: jnp.zeros((record,) + v.shape, v.dtype), b)
        rec0 = (stack, stack, jnp.zeros((record,), rz.dtype))
    else:
        rec0 = ()
    init = (x0, r, z, rz, jnp.asarray(0), done_of(r, False), jnp.asarray(False), rec0)
    x, r, _, _, k, _, bad, rec = jax.lax.while_loop(cond, body, init)
    converged = (weighted_rms(r, scale) <= tol) & ~bad
    if record > 0:
        rp, rap, _ = rec
        gram = stack_gram(rp, rap)
        # Unused slots are zero rows: the pseudo-inverse ignores them (eigenvalue cut-off).
        g_pinv = jnp.linalg.pinv(0.5 * (gram + gram.T), rtol=1e-12, hermitian=True)
        return x, k + 1, converged, (rp, rap, g_pinv)
    return x, k + 1, converged


def power_iteration_step(hvp: Callable, v):
    """One step of power iteration for the dominant eigenvalue of a symmetric operator:
    (|vᵀAv|, Av/‖Av‖) for a unit pytree v (v is kept where Av = 0)."""
    av = hvp(v)
    lam = jnp.abs(tree_vdot(v, av))
    nrm = two_norm(av)
    inv = jnp.where(nrm > 0, 1.0 / jnp.where(nrm > 0, nrm, 1.0), 0.0)
    v = jax.tree_util.tree_map(lambda a, b: jnp.where(nrm > 0, inv * a, b), av, v)
    return lam, v


def power_start(like):
    """A fixed pseudo-random unit pytree shaped like `like` (cosine of a golden-angle ramp):
    deterministic, so runs are reproducible, and never orthogonal to an eigenvector in practice."""
    v = jax.tree_util.tree_map(
        lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype) * 2.399963229728653).reshape(x.shape),
        like,
    )
    return tree_scale(1.0 / two_norm(v), v)


# Block power iterations for the spectral scale ‖∇²L‖₂ that sets the LOBPCG shift: a few
# suffice, the shift only needs the right order of magnitude (see `lobpcg_extreme`).
_POWER_STEPS = 8


def _block(matvec):
    return jax.vmap(matvec, in_axes=1, out_axes=1)


def spectral_scale(matvec, x0):
    """An estimate (from below, typically within a factor 2) of ‖A‖₂ = max|λ|: block power
    iteration from the columns of `x0`."""
    block = _block(matvec)
    q = jax.lax.fori_loop(
        0, _POWER_STEPS, lambda _, q: jnp.linalg.qr(block(q))[0], jnp.linalg.qr(x0)[0]
    )
    return jnp.max(jnp.linalg.norm(block(q), axis=0))


def lobpcg_extreme(matvec, x0, sign, scale, max_steps, tol):
    """The k largest eigenpairs of sign·A (columns of `x0` start the block), as eigenpairs of A.

    LOBPCG runs on sign·A + sI, s = 2·scale. `lobpcg_standard` tests ‖r‖ < 10·P·tol·(θ + ‖Bv‖),
    which is 0 for θ ≤ 0: unshifted, an eigenvalue 0 (a symmetry direction, present at every
    DLN saddle) or a bottom end at a local minimum would never converge. Shifted, θ + ‖Bv‖ ≈
    2(θ + s) ≳ ‖A‖₂, so the test is relative to the spectral scale. A zero Hessian gets s = 1
    (its residuals are 0).
    """
    # Imported here: jax.experimental.sparse pulls in scipy.sparse, half a second of start-up.
    from jax.experimental.sparse.linalg import lobpcg_standard

    shift = jnp.where(scale > 0, 2 * scale, 1.0)
    block = _block(matvec)
    theta, U, iters = lobpcg_standard(
        lambda X: sign * block(X) + shift * X, x0, m=max_steps, tol=tol
    )
    lam = sign * (theta - shift)
    res = jnp.linalg.norm(block(U) - U * lam[None, :], axis=0)
    return lam, U, res, iters
