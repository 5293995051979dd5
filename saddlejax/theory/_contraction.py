"""The contraction map Φ_C on discretised paths and its fixed-point iteration (SPEC §7).

Jacot et al., Thm 22 and App. C.4: for a path x : (−∞, T] → R^P,

    Φ_C(x)(t) = −∫_{−∞}^t ∇C(x(u)) du,

whose fixed points are the escape paths of C. Started from an escape path x₀ of the Taylor term H,
the iteration x_{n+1} = Φ_C(x_n) converges to Ψ(x₀), the escape path of C that is
O(e^{(m−1)st}) (k = 2) or O((T−t)^{−(m−k+1)/(k−2)}) (k > 2) close to x₀.

Numerics (SPEC §7, our choices):

- The integral is split at the first grid time t_min. The part before t_min is the *tail*; it is
  closed with the reference path x_ref (x₀ for Ψ), which is an exact gradient-flow path of its own
  loss C_ref (H for Ψ): −∫_{−∞}^{t_min} ∇C_ref(x_ref(u)) du = x_ref(t_min). Hence

      Φ_C(x)(t) = x_ref(t) + ∫_{−∞}^{t} [∇C_ref(x_ref(u)) − ∇C(x(u))] du,

  and only the bracket — which is O(‖x‖^{m−1}), the size of the correction, not of the path — is
  integrated numerically, on [t_min, t]. `tail="h_path"` sets its part before t_min to zero (the
  SPEC's closure); `tail="leading"` adds its leading-order value g(t_min)/((m−1)s) (k = 2) or
  g(t_min)(T−t_min)(k−2)/(m−k+1) (k > 2), g the bracket, exact for the leading power of the
  integrand; `tail="none"` drops the whole integral before t_min (the truncated map
  −∫_{t_min}^t ∇C(x(u)) du — wrong, kept to show that the tail matters: its fixed point is 0).
- The integral on [t_min, t] is a cumulative 4th-order quadrature: on every grid interval the
  integrand is replaced by its cubic interpolant through the 4 nearest grid points (one-sided at
  the ends), integrated exactly. On the grids of `escape_times` its error is tested against paths
  with known integrals (tests/test_contraction.py).

Derivatives of the fixed point (with respect to the data in C, the starting path x₀, H) come
from the implicit function theorem on the discrete equation x* = Φ(x*; p):
dx* = (I − ∂_xΦ)⁻¹ ∂_pΦ·dp, one matrix-free linear solve on Jacobian-vector products of
Φ (optimistix's `ImplicitAdjoint`), not from the iterations. The solve is the Neumann series
dx* = Σ_n (∂_xΦ)ⁿ ∂_pΦ·dp (`NeumannSeries`): it converges because Φ contracts, as the
iteration does.
"""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float, Int, PyTree
from optimistix import two_norm

from .._results import RESULTS, check
from ._implicit import FIXED_POINT_ADJOINT, as_pytree, check_adjoint
from ._paths import Path

_TAILS = ("h_path", "leading", "none")


# --------------------------------------------------------------------------------------------
# Quadrature and derivatives on a non-uniform grid


def _interval_weights(ts: Float[Array, " n"]) -> tuple[Int[Array, "n-1 4"], Float[Array, "n-1 4"]]:
    """Stencil indices and weights w_{ij} with ∫_{t_i}^{t_{i+1}} f ≈ Σ_j w_{ij} f(t_{idx_{ij}}).

    Exact for cubics: the Lagrange basis of the 4 stencil nodes is integrated with 3-point
    Gauss–Legendre (exact to degree 5).
    """
    n = ts.shape[0]
    i = jnp.arange(n - 1)
    idx = jnp.clip(i - 1, 0, n - 4)[:, None] + jnp.arange(4)[None, :]
    nodes = ts[idx]
    a, b = ts[:-1], ts[1:]
    gx = jnp.asarray([-np.sqrt(0.6), 0.0, np.sqrt(0.6)], ts.dtype)
    gw = jnp.asarray([5 / 9, 8 / 9, 5 / 9], ts.dtype)
    q = 0.5 * (a + b)[:, None] + 0.5 * (b - a)[:, None] * gx[None, :]  # (n-1, 3)
    cols = []
    for j in range(4):
        basis = jnp.ones_like(q)
        for k in range(4):
            if k != j:
                xk = nodes[:, k : k + 1]
                basis = basis * (q - xk) / (nodes[:, j : j + 1] - xk)
        cols.append(0.5 * (b - a) * jnp.sum(gw[None, :] * basis, axis=1))
    return idx, jnp.stack(cols, axis=1)


def _cumulative(idx, w, fs: PyTree) -> PyTree:
    """∫_{t_0}^{t_i} f for every i (leading axis n), from samples f(t_i)."""

    def leaf(f):
        w_ = w.reshape(w.shape + (1,) * (f.ndim - 1))
        pieces = jnp.sum(w_ * f[idx], axis=1)
        return jnp.concatenate([jnp.zeros_like(f[:1]), jnp.cumsum(pieces, axis=0)])

    return jax.tree_util.tree_map(leaf, fs)


@eqx.filter_jit
def integrate_path(path: Path) -> Path:
    """The path t ↦ ∫_{t_min}^t x(u) du on the same grid (the quadrature used by Φ).

    4th order in the grid step, on the grids of `escape_times` too (tests/test_contraction.py).
    """
    idx, w = _interval_weights(path.ts)
    return path.with_xs(_cumulative(idx, w, path.xs))


@eqx.filter_jit
def time_derivative(path: Path) -> PyTree:
    """dx/dt at every grid time by second-order finite differences on the non-uniform grid.

    Independent of the quadrature of Φ (which is 4th order and integrates, not differentiates),
    so that `ode_residual` checks the fixed point rather than restating it.
    """
    ts = path.ts
    h = jnp.diff(ts)
    h1, h2 = h[:-1], h[1:]  # interior i = 1..n-2: h1 = t_i − t_{i−1}, h2 = t_{i+1} − t_i
    a = -h2 / (h1 * (h1 + h2))
    b = (h2 - h1) / (h1 * h2)
    c = h1 / (h2 * (h1 + h2))
    s1, s2 = h[0], h[1]
    e1, e2 = h[-2], h[-1]

    def leaf(x):
        def bc(v):
            return v.reshape(v.shape + (1,) * (x.ndim - 1))

        interior = bc(a) * x[:-2] + bc(b) * x[1:-1] + bc(c) * x[2:]
        first = (
            -(2 * s1 + s2) / (s1 * (s1 + s2)) * x[0]
            + (s1 + s2) / (s1 * s2) * x[1]
            - s1 / (s2 * (s1 + s2)) * x[2]
        )
        last = (
            e2 / (e1 * (e1 + e2)) * x[-3]
            - (e1 + e2) / (e1 * e2) * x[-2]
            + (2 * e2 + e1) / (e2 * (e1 + e2)) * x[-1]
        )
        return jnp.concatenate([first[None], interior, last[None]])

    return jax.tree_util.tree_map(leaf, path.xs)


# --------------------------------------------------------------------------------------------
# Norms


def default_exponent(order: int, next_order: int, speed: float | Array) -> Array:
    """The weight exponent of the correction norm: 0.9 × its upper limit (SPEC §7).

    k = 2: β = 0.9 (m−1) s, below (m−1)s so that ‖b‖_β < ∞ on corrections O(e^{(m−1)st});
    k > 2: α = 0.9 (m−k+1)/(k−2), below (m−k+1)/(k−2). The theorem's contraction bound
    Lip/β (resp. Lip/(α s (k−2))) is smallest for the largest exponent, hence a value close to it.
    """
    _check_orders(order, next_order)
    if order == 2:
        return 0.9 * (next_order - 1) * jnp.asarray(speed)
    return jnp.asarray(0.9 * (next_order - order + 1) / (order - 2))


def _check_orders(order, next_order):
    if next_order is None or not isinstance(next_order, int | np.integer) or next_order <= order:
        raise ValueError(
            f"`next_order` m must be an int greater than the order k = {order}, got "
            f"{next_order!r} (for a deep linear network m = 2L)."
        )


def _weights(ts, order, horizon, exponent):
    if order == 2:
        return jnp.exp(-2 * exponent * (ts - horizon))
    return (horizon - ts) ** (2 * exponent - 1)


@eqx.filter_jit
def weighted_norm(path: Path, exponent: float | Array) -> Array:
    """‖b‖² = ∫ w(t) ‖b(t)‖² dt over the grid of `path` (a correction b = x − x₀).

    Jacot et al. App. C.4.1/C.4.2: k = 2: w(t) = e^{−2β(t−T)} (‖·‖_β); k > 2:
    w(t) = (T − t)^{2α−1} (‖·‖_α), with T = `path.horizon` and `exponent` = β or α. The paper
    integrates over (−∞, T]; here over the grid, with the quadrature of `integrate_path`.
    """
    sq = jax.vmap(lambda x: two_norm(x) ** 2)(path.xs)
    w = _weights(path.ts, path.order, path.horizon, exponent)
    idx, qw = _interval_weights(path.ts)
    total = _cumulative(idx, qw, w * sq)[-1]
    return jnp.sqrt(jnp.maximum(total, 0.0))


# --------------------------------------------------------------------------------------------
# The map Φ


def _path_gradients(loss: Callable, path_or_xs) -> PyTree:
    """∇C(x(t_i)) at every grid time (leading axis n)."""
    xs = path_or_xs.xs if isinstance(path_or_xs, Path) else path_or_xs
    return jax.vmap(jax.grad(loss))(xs)


def _check_tail(tail, next_order, speed):
    if tail not in _TAILS:
        raise ValueError(f"unknown `tail` {tail!r}; use one of {_TAILS}.")
    if tail == "leading" and (next_order is None or speed is None):
        raise ValueError("`tail='leading'` needs `next_order` (m) and `speed` (s).")


def _phi(loss, x, reference: Path, ref_grad, quad, tail, next_order, speed):
    idx, w = quad
    g = jax.tree_util.tree_map(lambda a, b: a - b, ref_grad, _path_gradients(loss, x))
    integral = _cumulative(idx, w, g)
    k, ts, horizon = reference.order, reference.ts, reference.horizon
    if tail == "leading":
        g0 = jax.tree_util.tree_map(lambda v: v[0], g)
        if k == 2:
            factor = 1.0 / ((next_order - 1) * speed)
        else:
            factor = (horizon - ts[0]) * (k - 2) / (next_order - k + 1)
        shift = jax.tree_util.tree_map(lambda v: factor * v, g0)
    elif tail == "none":
        shift = jax.tree_util.tree_map(lambda v: -v[0], reference.xs)
    else:
        shift = None

    def combine(r, i, *s):
        return r + i + (s[0][None] if s else 0.0)

    if shift is None:
        return jax.tree_util.tree_map(combine, reference.xs, integral)
    return jax.tree_util.tree_map(combine, reference.xs, integral, shift)


def contraction_map(
    loss: Callable,
    path: Path,
    *,
    reference: Path,
    reference_loss: Callable,
    tail: Literal["h_path", "leading", "none"] = "h_path",
    next_order: int | None = None,
    speed: float | Array | None = None,
) -> Path:
    """Φ_C(x)(t) = −∫_{−∞}^t ∇C(x(u)) du on the grid of `path` (Jacot et al. Thm 22; SPEC §7).

    The tail before t_min is closed with `reference`, an exact gradient-flow path of
    `reference_loss` on the same grid (the H-path x₀ when computing Ψ; see the module docstring).

    **Arguments:**

    - `loss`: C, a function of the parameter pytree.
    - `path`: x, a `Path` on the same grid as `reference`.
    - `reference`, `reference_loss`: x_ref and C_ref with ẋ_ref = −∇C_ref(x_ref).
    - `tail`: "h_path" (SPEC §7, default), "leading" (plus the leading-order remainder; needs
        `next_order` m and `speed` s) or "none" (no tail: the truncated, wrong map).

    **Returns:** the `Path` Φ_C(x).
    """
    _check_tail(tail, next_order, speed)
    if path.ts.shape != reference.ts.shape:
        raise ValueError(
            f"`path` and `reference` must share one grid, got {path.ts.shape[0]} and "
            f"{reference.ts.shape[0]} times."
        )
    quad = _interval_weights(reference.ts)
    ref_grad = _path_gradients(reference_loss, reference)
    xs = _phi(loss, path.xs, reference, ref_grad, quad, tail, next_order, speed)
    return reference.with_xs(xs)


@eqx.filter_jit
def ode_residual(loss: Callable, path: Path) -> Array:
    """max_i ‖ẋ(t_i) + ∇C(x(t_i))‖ / ‖∇C(x(t_i))‖: zero (to O(h²)) iff x is a gradient-flow path
    of C. ẋ by second-order finite differences (`time_derivative`)."""
    dx = time_derivative(path)
    grads = _path_gradients(loss, path)
    num = jax.vmap(two_norm)(jax.tree_util.tree_map(jnp.add, dx, grads))
    den = jax.vmap(two_norm)(grads)
    return jnp.max(num / jnp.where(den > 0, den, 1.0))


# --------------------------------------------------------------------------------------------
# The fixed-point iteration


class FixedPointSolution(eqx.Module):
    """The fixed point of Φ found by iteration, with the per-iteration diagnostics (SPEC §7).

    **Fields:**

    - `path`: the fixed point (Ψ(x₀) when started from an H-path x₀).
    - `corrections`: ‖x_{n+1} − x_n‖ in the weighted norm (‖·‖_β for k = 2, ‖·‖_α for k > 2),
        shape (max_steps,), NaN after the last iteration.
    - `sup_corrections`: max_t ‖x_{n+1}(t) − x_n(t)‖ / ‖x_{n+1}(t)‖ (what the stopping test uses).
    - `contraction_ratios`: corrections[n+1] / corrections[n], shape (max_steps − 1,), NaN-padded.
    - `exponent`: the β or α of the weighted norm.
    - `ode_residual`: `ode_residual(loss, path)` of the fixed point.
    - `result`: a `RESULTS` code.
    - `stats`: `num_steps`, the number of applications of Φ.
    """

    path: Path
    corrections: Float[Array, " max_steps"]
    sup_corrections: Float[Array, " max_steps"]
    contraction_ratios: Float[Array, " max_steps-1"]
    exponent: Float[Array, ""]
    ode_residual: Float[Array, ""]
    result: RESULTS
    stats: dict[str, Int[Array, ""]]

    @property
    def successful(self) -> Array:
        return self.result == RESULTS.successful

    def ratios(self) -> np.ndarray:
        """The observed contraction ratios as a numpy array (NaN padding removed)."""
        r = np.asarray(self.contraction_ratios)
        return r[: max(int(self.stats["num_steps"]) - 1, 0)]


def _fixed_point_primal(inputs):
    """The iteration x_{n+1} = Φ(x_n) from x_0 = the reference path, with its record."""
    loss, reference, reference_loss, speed, exponent, rtol, atol, options, while_loop = inputs
    tail, next_order, max_steps = options
    quad = _interval_weights(reference.ts)
    ref_grad = _path_gradients(reference_loss, reference)
    nan = jnp.full((max_steps,), jnp.nan, reference.ts.dtype)

    def body(carry):
        i, x, cw, cs, _, _ = carry
        x_new = _phi(loss, x, reference, ref_grad, quad, tail, next_order, speed)
        diff = jax.tree_util.tree_map(jnp.subtract, x_new, x)
        dn = jax.vmap(two_norm)(diff)
        xn = jax.vmap(two_norm)(x_new)
        c_w = weighted_norm(reference.with_xs(diff), exponent)
        c_s = jnp.max(dn / jnp.where(xn > 0, xn, 1.0))
        done = jnp.all(dn <= atol + rtol * xn)
        finite = jnp.all(jnp.isfinite(dn))
        return i + 1, x_new, cw.at[i].set(c_w), cs.at[i].set(c_s), done, finite

    def cond(carry):
        i, _, _, _, done, finite = carry
        return (i < max_steps) & ~done & finite

    init = (jnp.zeros((), int), reference.xs, nan, nan, jnp.array(False), jnp.array(True))
    i, x, cw, cs, done, finite = while_loop(cond, body, init, max_steps=max_steps)
    return x, (i, cw, cs, done, finite)


def _fixed_point_rewrite(x, _, inputs):
    """Φ(x) − x: zero at the fixed point; the implicit function theorem solves
    (I − ∂_xΦ) dx = ∂_pΦ dp with it."""
    loss, reference, reference_loss, speed, _, _, _, options, _ = inputs
    tail, next_order, _ = options
    quad = _interval_weights(reference.ts)
    ref_grad = _path_gradients(reference_loss, reference)
    phi = _phi(loss, x, reference, ref_grad, quad, tail, next_order, speed)
    return jax.tree_util.tree_map(jnp.subtract, phi, x)


@eqx.filter_jit
def _iterate(
    loss,
    reference,
    reference_loss,
    tail,
    next_order,
    speed,
    exponent,
    rtol,
    atol,
    max_steps,
    adjoint,
):
    inputs = (
        loss,
        reference,
        reference_loss,
        speed,
        exponent,
        rtol,
        atol,
        (tail, next_order, max_steps),
    )
    x, (i, cw, cs, done, finite) = adjoint.apply(
        _fixed_point_primal, _fixed_point_rewrite, inputs, frozenset()
    )
    result = RESULTS.where(
        finite,
        RESULTS.where(done, RESULTS.successful, RESULTS.fixed_point_not_converged),
        RESULTS.fixed_point_nonfinite,
    )
    path = reference.with_xs(x)
    ratios = cw[1:] / cw[:-1]
    return FixedPointSolution(
        path=path,
        corrections=cw,
        sup_corrections=cs,
        contraction_ratios=ratios,
        exponent=jnp.asarray(exponent, reference.ts.dtype),
        ode_residual=ode_residual(loss, path),
        result=result,
        stats={"num_steps": i},
    )


def fixed_point_iteration(
    loss: Callable,
    reference: Path,
    reference_loss: Callable,
    *,
    next_order: int,
    speed: float | Array,
    tail: Literal["h_path", "leading", "none"] = "h_path",
    exponent: float | Array | None = None,
    rtol: float = 1e-11,
    atol: float = 0.0,
    max_steps: int = 300,
    throw: bool = True,
    adjoint: optx.AbstractAdjoint = FIXED_POINT_ADJOINT,
) -> FixedPointSolution:
    """Iterate x_{n+1} = Φ_C(x_n) from x_0 = `reference` to the escape path of C near it.

    Jacot et al. Thm 22 (Thm 5 of the main text) and App. C.4 (SPEC §7). With `reference` an
    escape path of H and `loss` = C this returns Ψ(x₀); with `reference` = Ψ(x₀),
    `reference_loss` = C and `loss` = H it returns Ψ⁻¹(Ψ(x₀)) (see `psi`, `psi_inverse`).

    Why not `optimistix.fixed_point`: its `FixedPointIteration` is this iteration, but it returns
    only the last iterate and a step count, while the point here is the per-iteration record —
    the correction ‖x_{n+1} − x_n‖ in the weighted norm and the observed contraction ratio —
    which optimistix offers no hook to collect (carrying it inside the iterate would put it under
    optimistix's convergence test). The loop is a `while_loop` with a fixed-size record, run
    through optimistix's adjoint machinery (`adjoint.apply`, as `optx.fixed_point` does) so
    that it is differentiated as optimistix differentiates its own fixed points; the tests
    check that `optx.fixed_point` finds the same fixed point.

    **Arguments:**

    - `loss`: C, a function of the parameter pytree (e.g. a `MatrixCompletion` for the weights
        tuple of a deep linear network).
    - `reference`: x₀, a `Path` that is an exact gradient-flow path of `reference_loss`
        (`escape_path` of H); its grid, order k and horizon T are used throughout.
    - `reference_loss`: its loss (H).
    - `next_order`: m (2L for a deep linear network). `speed`: s, the escape speed of x₀.
    - `tail`: closure of the integral before t_min (see `contraction_map`).
    - `exponent`: β (k = 2) or α (k > 2) of the weighted norm; default `default_exponent`.
    - `rtol`, `atol`: stop when ‖x_{n+1}(t) − x_n(t)‖ ≤ atol + rtol ‖x_{n+1}(t)‖ at every grid time
        (a pointwise test: the weighted norm down-weights the end of the window).
    - `max_steps`: cap on iterations; reaching it is a failure (`result`).
    - `throw`: raise a RuntimeError on failure (default).
    - `adjoint`: how `path` is differentiated. `optimistix.ImplicitAdjoint` (default, with a
        `NeumannSeries` solve at rtol 1e−12; a failed solve raises): the implicit function
        theorem at the fixed point x* = Φ(x*; p), dx* = (I − ∂_xΦ)⁻¹ ∂_pΦ·dp, forward and
        reverse mode.
        `optimistix.RecursiveCheckpointAdjoint`: reverse mode through the iterations (as
        converged as the last iterate; for comparison).

    **Differentiation:** `path` (and `ode_residual`) are differentiable with respect to the
    arrays of `loss` (e.g. the data of a `MatrixCompletion`; closures are converted so that
    the arrays they capture count too), of `reference` (the starting path x₀: its values and
    grid), of `reference_loss` and `speed` (which enters Φ only with `tail="leading"`); p
    above is all of them. Under `ImplicitAdjoint` the diagnostics (`corrections`,
    `contraction_ratios`, …) are not differentiated (zero tangents; reverse mode through them
    is an error). Jit- and vmap-compatible (e.g. `jax.vmap(jax.grad(f))` over data sets of
    the same shapes).

    **Returns:** a `FixedPointSolution`.
    """
    _check_tail(tail, next_order, speed)
    _check_orders(reference.order, next_order)
    if not isinstance(max_steps, int) or max_steps < 2:
        raise ValueError(f"`max_steps` must be an int ≥ 2, got {max_steps!r}.")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not tol >= 0:
            raise ValueError(f"`{name}` must be non-negative, got {tol}.")
    if not rtol > 0 and not atol > 0:
        raise ValueError("one of `rtol`, `atol` must be positive.")
    dtype = reference.ts.dtype
    if exponent is None:
        exponent = default_exponent(reference.order, next_order, speed)
    check_adjoint(adjoint, what="the fixed point of Φ", unrolled_ok=True)
    example = jax.tree_util.tree_map(lambda v: v[0], reference.xs)
    sol = _iterate(
        as_pytree(loss, example),
        reference,
        as_pytree(reference_loss, example),
        tail,
        next_order,
        jnp.asarray(speed, dtype),
        jnp.asarray(exponent, dtype),
        jnp.asarray(rtol, dtype),
        jnp.asarray(atol, dtype),
        max_steps,
        adjoint,
    )
    return check(sol, throw=throw, what="the fixed-point iteration of Φ")
