"""Leading homogeneous Taylor terms at a critical point, and their identities (SPEC §4).

Write L(θ* + δ) = L(θ*) + H(δ) + e(δ) with H(δ) = (1/k!) D^kL(θ*)[δ, …, δ] the first non-vanishing
term of the Taylor series (Jacot et al. §4.1, "(k, m)-approximately homogeneous"). Everything here
is exact automatic differentiation: H is k nested forward-mode derivatives of t ↦ L(θ* + tδ) at
t = 0 (never finite differences); ∇H and Hessian-vector products of H come from JAX on top.

Two routes evaluate H:

- `"ray"` (any critical point): H(δ) = (1/k!) d^k/dt^k L(θ* + tδ)|_{t=0} by k nested
    `jax.jvp`s (cost ≈ 2^k loss evaluations), or by Taylor-mode AD (`jax.experimental.jet`)
    where L has ReLU kinks; the orders are read from Taylor-mode coefficients. Nets built on
    `saddlejax.nn.relu`/`leaky_relu` get the one-sided terms of t > 0 at zero pre-activations
    (dead or new neurons, the origin); other kinked activations (`jnp.where`, `jax.nn.relu`)
    get the terms of one branch, or of the two branches' average.
- `"outputs"` (the origin of a positively homogeneous network under a loss of its outputs, e.g.
    a bias-free (leaky-)ReLU net with a per-sample loss, or a DLN's end-to-end matrix under
    `MatrixCompletion`): H(δ) = ⟨∂ℓ/∂f(0), f_δ⟩ (SPEC §4, second bullet), from the network's
    homogeneity f_{tδ} = t^k f_δ (t > 0). One pass through the network, against k² (jet) or
    2^k (nested) for the "ray" route, so it is the fast one, and exact for any activation.
"""

import math
from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.experimental.jet import jet
from jaxtyping import Array, ArrayLike, PRNGKeyArray, PyTree, Scalar
from optax.tree_utils import tree_add_scale, tree_scale, tree_vdot
from optimistix import two_norm

from .._validate import check_int, check_key, check_real, describe
from ..nn._kinks import applies_kinks

# ---------------------------------------------------------------------------------------------
# pytree plumbing


def _params(tree) -> PyTree:
    """The inexact-array part of a pytree (a model's parameters; static fields kept)."""
    return eqx.filter(tree, eqx.is_inexact_array)


def _shift(point, delta, t):
    """θ* + tδ, where δ may be shaped like `point` or like its array part."""
    params, static = eqx.partition(point, eqx.is_inexact_array)
    return eqx.combine(tree_add_scale(params, t, _params(delta)), static)


def _random_unit(key, like) -> PyTree:
    params = _params(like)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jr.split(key, max(len(leaves), 1))
    noise = jax.tree_util.tree_unflatten(
        treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    return tree_scale(1 / two_norm(noise), noise)


@eqx.filter_jit
def _probes(keys, like):
    return jax.vmap(lambda k: _random_unit(k, like))(keys)


def _dtype(tree):
    leaves = jax.tree_util.tree_leaves(_params(tree))
    if not leaves:
        raise ValueError("`point` has no floating-point arrays: there is nothing to expand in.")
    return leaves[0].dtype


# ---------------------------------------------------------------------------------------------
# exact ray derivatives


def _ray_function(loss, point, delta):
    dtype = _dtype(point)

    def g(t):
        return loss(_shift(point, delta, t))

    return g, dtype


def _nested_jvp_coefficients(loss, point, delta, max_order):
    g, dtype = _ray_function(loss, point, delta)

    def all_derivatives(n):
        if n == 0:
            return lambda t: (g(t),)
        inner = all_derivatives(n - 1)

        def h(t):
            primal, tangent = jax.jvp(inner, (t,), (jnp.ones_like(t),))
            return primal + (tangent[-1],)

        return h

    return jnp.stack(all_derivatives(max_order)(jnp.zeros((), dtype)))


def _jet_coefficients(loss, point, delta, max_order):
    g, dtype = _ray_function(loss, point, delta)
    one = (jnp.ones((), dtype),) + (jnp.zeros((), dtype),) * (max_order - 1)
    primal, series = jet(g, (jnp.zeros((), dtype),), (one,))
    return jnp.stack([primal, *series])


@eqx.filter_jit
def _batched_coefficients(loss, point, deltas, max_order, use_jet):
    fn = _jet_coefficients if use_jet else _nested_jvp_coefficients
    derivs = jax.vmap(lambda d: fn(loss, point, d, max_order))(deltas)
    dtype = derivs.dtype
    factorials = jnp.asarray([math.factorial(j) for j in range(max_order + 1)], dtype)
    return derivs / factorials[None]


def ray_taylor_coefficients(loss: Callable, point: PyTree, delta: PyTree, max_order: int) -> Array:
    """[c_0, …, c_K] with c_j = (1/j!) d^j/dt^j L(θ* + tδ) at t = 0 (exact AD, no differences).

    c_j = (1/j!) D^jL(θ*)[δ, …, δ]. Taylor-mode AD (`jax.experimental.jet`, cost O(K²)) is tried
    first; where jet lacks a rule, K nested `jax.jvp`s are used instead (cost ≈ 2^K evaluations
    of L). At a zero pre-activation of `saddlejax.nn.relu`/`leaky_relu` (dead or new neurons)
    the coefficients are the one-sided ones of t > 0; `jnp.where` and `jax.nn.relu` there give
    those of another branch (`saddlejax.nn._kinks`).
    """
    deltas = jax.tree_util.tree_map(lambda a: a[None], _params(delta))
    return _coefficients(loss, point, deltas, _check_max_order(max_order, 1))[0]


def _coefficients(loss, point, deltas, max_order):
    try:
        return _batched_coefficients(loss, point, deltas, max_order, True)
    except Exception:  # noqa: BLE001 - jet has no rule for some primitive: use nested jvp
        return _batched_coefficients(loss, point, deltas, max_order, False)


def _kth_ray_derivative(loss, point, delta, k):
    """c_k of `ray_taylor_coefficients`: by k nested `jax.jvp`s, or by Taylor mode where L has
    ReLU kinks (`saddlejax.nn.relu`), whose one-sided coefficients only Taylor mode gives.
    Nested jvps where both serve: under the gradients and HVPs taken of H, a DLN's chain of
    saddles compiled ≈ 20 % faster with them."""
    g, dtype = _ray_function(loss, point, delta)
    t0 = jnp.zeros((), dtype)
    if applies_kinks(g, t0):
        return _jet_coefficients(loss, point, delta, k)[k] / math.factorial(k)
    d = g
    for _ in range(k):
        d = (lambda f: lambda t: jax.jvp(f, (t,), (jnp.ones_like(t),))[1])(d)
    return d(t0) / math.factorial(k)


# ---------------------------------------------------------------------------------------------
# the Taylor term


class TaylorTerm(eqx.Module):
    """The leading homogeneous Taylor term of a loss at a critical point (SPEC §4).

    **Fields:**

    - `order`: k, the smallest order with D^kL(θ*) ≠ 0.
    - `next_order`: m, the next order > k with a non-zero derivative, or None if none was found
        up to `max_order` (e.g. the loss is exactly L(θ*) + H near θ*).
    - `value`: L(θ*).
    - `coefficients`: max over the probe directions of |c_j| = |(1/j!) D^jL(θ*)[δ^j]|, j = 0…K
        (unit probes): the evidence the orders were read from.
    - `point`, `loss`: θ* and L.
    - `method`: "ray" or "outputs" (see the module docstring).

    **Methods:** `H(delta)` evaluates H on a pytree shaped like `point` (or like its array part);
    use `jax.grad(taylor.H)` and `jax.jvp(jax.grad(taylor.H), ...)` for ∇H and Hessian-vector
    products.
    """

    order: int = eqx.field(static=True)
    next_order: int | None = eqx.field(static=True)
    value: Scalar
    coefficients: Array
    point: PyTree
    loss: Callable
    method: str = eqx.field(static=True)

    def H(self, delta) -> Scalar:
        """H(δ) = (1/k!) D^kL(θ*)[δ, …, δ] (SPEC §4)."""
        if self.method == "outputs":
            return _outputs_term(self.loss, self.point, delta)
        return _kth_ray_derivative(self.loss, self.point, delta, self.order)

    def remainder(self, delta) -> Scalar:
        """e(δ) = L(θ* + δ) − L(θ*) − H(δ)."""
        return self.loss(_shift(self.point, delta, 1.0)) - self.value - self.H(delta)


def _outputs_fn(objective) -> Callable | None:
    """θ ↦ f_θ for an objective that factors as L = ℓ∘f: one with `from_outputs` (ℓ) and
    `outputs` (f, e.g. `MatrixCompletion`'s end-to-end matrix), or with `x` (f_θ = the model
    applied to each row); None otherwise."""
    if not hasattr(objective, "from_outputs"):
        return None
    if callable(getattr(objective, "outputs", None)):
        return objective.outputs
    if hasattr(objective, "x"):
        return lambda model: jax.vmap(model)(objective.x)
    return None


def _outputs_term(objective, point, delta):
    # H(δ) = ⟨∂ℓ/∂f(f = 0), f_δ⟩: a jvp of the loss as a function of the outputs at 0.
    model = eqx.combine(_params(delta), eqx.partition(point, eqx.is_inexact_array)[1])
    outputs = _outputs_fn(objective)(model)
    zero = jnp.zeros_like(outputs)
    return jax.jvp(objective.from_outputs, (zero,), (outputs,))[1]


def _is_zero(c, scale, rtol, atol):
    return c <= rtol * scale + atol


def _homogeneity_degree(model, outputs, keys, max_order, rtol) -> int | None:
    """The integer k with f_{2δ} = 2^k f_δ for every probe δ, or None (f = `outputs`)."""
    static = eqx.partition(model, eqx.is_inexact_array)[1]
    degrees = set()
    for key in keys:
        delta = _random_unit(key, model)
        f1 = outputs(eqx.combine(delta, static))
        f2 = outputs(eqx.combine(tree_scale(2.0, delta), static))
        n1 = jnp.linalg.norm(f1)
        if not n1 > 0:
            return None
        k = round(float(jnp.log2(jnp.linalg.norm(f2) / n1)))
        if not 1 <= k <= max_order or not jnp.linalg.norm(f2 - 2.0**k * f1) <= rtol * 2.0**k * n1:
            return None
        degrees.add(k)
    return degrees.pop() if len(degrees) == 1 else None


# The highest order read: orders up to 2L are needed (m = 2L at the origin of a depth-L net;
# the escape experiment allows L ≤ 32), and 1/j! underflows float64 only past j = 170.
MAX_ORDER = 64
# More probes than this add nothing: an accidental zero of D^kL[δ^k] is a null event.
MAX_PROBES = 2**16


def _check_max_order(max_order, minimum: int = 2) -> int:
    return check_int("max_order", max_order, minimum=minimum, maximum=MAX_ORDER)


def _check_taylor_args(method, max_order, n_probes, radius, rtol, atol):
    """The validated (max_order, n_probes, radius, rtol, atol) of `taylor_term`."""
    if not (isinstance(method, str) and method in ("auto", "ray", "outputs")):
        raise ValueError(f"`method` must be 'auto', 'ray' or 'outputs', got {describe(method)}.")
    max_order = _check_max_order(max_order)
    n_probes = check_int("n_probes", n_probes, maximum=MAX_PROBES)
    if radius is not None:
        radius = check_real("radius", radius, low=0.0, low_open=True)
    # Sized coefficients are at most 1 (the first non-zero term is 1 at the scale r), so with
    # rtol + atol ≥ 1 every order would count as zero.
    rtol = check_real("rtol", rtol, low=0.0, high=1.0, high_open=True)
    atol = check_real("atol", atol, low=0.0, high=1.0 - rtol, high_open=True)
    return max_order, n_probes, radius, rtol, atol


def _outputs_order(loss, point, keys, max_order) -> int | None:
    """k for the "outputs" route, or None where it does not apply: `loss` must factor as ℓ∘f
    (`_outputs_fn`), f must vanish at `point` and be positively homogeneous in the parameters."""
    outputs = _outputs_fn(loss)
    if outputs is None:
        return None
    try:
        at_point = outputs(point)
    except (TypeError, ValueError):  # e.g. a tuple of matrices where a network was expected
        return None
    if not jnp.all(at_point == 0):
        return None
    return _homogeneity_degree(point, outputs, keys, max_order, 1e-10)


def _outputs_next_order(loss, point, key, value, order, rtol, atol) -> int | None:
    """m = 2k unless ½D²ℓ(0)[f_δ, f_δ] vanishes (the loss is smooth in the outputs, so the next
    term of L(tδ) is this one, ∝ t^{2k})."""
    static = eqx.partition(point, eqx.is_inexact_array)[1]
    delta = _random_unit(key, point)
    f = _outputs_fn(loss)(eqx.combine(delta, static))
    zero = jnp.zeros_like(f)
    c1 = jax.jvp(loss.from_outputs, (zero,), (f,))[1]
    c2 = 0.5 * jax.jvp(lambda z: jax.jvp(loss.from_outputs, (z,), (f,))[1], (zero,), (f,))[1]
    # Compared where the expansion matters, as in `_sized_coefficients`: at the r with
    # |c1|·r^k = S, c2 enters as |c2|·r^{2k}/S = |c2|·S/c1² (a wide net's unit δ has tiny f_δ).
    c = np.abs(np.asarray([c1, c2], float))
    s0 = abs(float(value)) if value != 0 else c.max()
    sized = c[1] * s0 / c[0] ** 2 if c[0] > 0 else c[1] / max(s0, np.finfo(float).tiny)
    return None if _is_zero(sized, 1.0, rtol, atol) else 2 * order


def _sized_coefficients(raw, radius) -> np.ndarray:
    """max over probes of |c_j| r^j / S: the ray coefficients compared at the length scale r
    where the expansion matters (see `taylor_term`)."""
    max_order = raw.shape[1] - 1
    powers = np.arange(1, max_order + 1)
    sized = np.zeros(max_order + 1)
    for c in raw:
        if radius is None:
            # The length scale r* at which the first Taylor term changes L by as much as L
            # itself (or, for L(θ*) = 0, by as much as the largest term at r = 1): terms are
            # compared where they matter, so neither the scale of L nor that of θ (nor the
            # width of the network, which shrinks high-order terms of a random unit δ) matters.
            s0 = c[0] if c[0] > 0 else max(c[1:].max(), np.finfo(float).tiny)
            with np.errstate(divide="ignore"):
                r_j = np.where(c[1:] > 0, (s0 / c[1:]) ** (1.0 / powers), np.inf)
            r = float(r_j.min()) if np.isfinite(r_j.min()) else 1.0
        else:
            r = radius
            s0 = max(c[0], (c[1:] * r**powers).max())
        sized = np.maximum(sized, c * r ** np.arange(max_order + 1) / s0)
    return sized


def _ray_orders(raw, radius, rtol, atol) -> tuple[int, int | None]:
    """(k, m): the first two orders j ≥ 1 whose sized coefficient is non-zero."""
    max_order = raw.shape[1] - 1
    sized = _sized_coefficients(raw, radius)
    nonzero = [j for j in range(1, max_order + 1) if not _is_zero(sized[j], 1.0, rtol, atol)]
    if not nonzero:
        at = "" if radius is None else f" at `radius` = {radius:g}"
        raise ValueError(
            f"every derivative of order 1…{max_order} vanished{at} (`rtol` = {rtol:g}, "
            f"`atol` = {atol:g}) on {raw.shape[0]} random directions: raise `max_order` (or "
            "lower the tolerances"
            + ("" if radius is None else ", or use a radius where the terms do not underflow")
            + "), or, at the origin of a ReLU network, pass a saddlejax objective so the "
            "'outputs' route can be used."
        )
    return nonzero[0], (nonzero[1] if len(nonzero) > 1 else None)


def taylor_term(
    loss: Callable,
    point: PyTree,
    *,
    key: PRNGKeyArray | None = None,
    n_probes: int = 4,
    max_order: int = 8,
    radius: float | None = None,
    rtol: float = 1e-9,
    atol: float = 0.0,
    method: Literal["auto", "ray", "outputs"] = "auto",
) -> TaylorTerm:
    """Find the leading homogeneous Taylor term H of `loss` at the critical point `point`.

    k is the smallest order with D^kL(θ*) ≠ 0 and m the next (SPEC §4; Jacot et al. §4.1).
    The orders are read, not assumed: for `n_probes` random unit directions δ the exact ray
    coefficients c_j(δ) = (1/j!) D^jL(θ*)[δ^j], j ≤ `max_order`, are computed by exact AD, and
    c_j counts as non-zero when, for some probe,

        |c_j(δ)| · r^j > rtol · S + atol·S,

    where S = |L(θ*)| (or, if that is 0, the largest |c_i(δ)|) and r is the length scale at which
    the first non-zero term reaches S: r = min_i (S/|c_i(δ)|)^{1/i}. Terms are thus compared at
    the distance where the expansion matters, so the answer does not change when L is multiplied
    by a constant, when θ is rescaled, or when the network widens (a random unit δ of a wide DLN
    has tiny high-order terms at r = 1). Pass `radius` to fix r instead (then
    S = max(|L(θ*)|, max_i |c_i| r^i)). Several random probes make an accidental zero (δ on the
    zero set of the polynomial D^kL[δ^k]) a null event.
    Order 0 is excluded (it is L(θ*)). If order 1 is non-zero the point is not critical: that is
    reported as `order == 1`, not raised, so a caller can check it.

    Failure modes (documented, not detected): a derivative smaller than rtol·S at the scale r
    counts as zero, so a genuine but tiny next term is missed; a critical point known only to
    1e−6 has |c_1| r ≈ 1e−6·S and is reported as k = 1 (pass a larger `rtol` to accept it);
    a first non-zero order above `max_order` raises; non-smooth losses (next paragraph).
    At the origin of a network `method="auto"` takes the "outputs" route (exact for any
    activation, and the fast one; the "ray" route is exact there only for kinks built on
    `saddlejax.nn.relu`/`leaky_relu`) when `loss` is an objective with `from_outputs` and
    either `outputs` or `x` (L = ℓ∘f), the outputs f vanish at `point`, and f is positively
    homogeneous in the parameters (f_{2δ} = 2^k f_δ on every probe).

    This function reads concrete values to decide integer orders, so it is not jittable;
    `taylor.H` is.

    **Arguments:**

    - `loss`: a callable `point -> scalar` (an objective of saddlejax, or any function).
    - `point`: θ*, any pytree (e.g. a `DeepLinear`); its inexact arrays are the parameters.
    - `key`: PRNG key for the probe directions (default `jr.key(0)`).
    - `n_probes`, `max_order`, `radius`, `rtol`, `atol`: see above (ints 1 ≤ `n_probes` ≤ 2¹⁶
        and 2 ≤ `max_order` ≤ 64, a positive finite `radius`, 0 ≤ `rtol`, `atol` with
        `rtol` + `atol` < 1; anything else is a ValueError naming it).
    - `method`: "auto", "ray" or "outputs".

    **Returns:** a `TaylorTerm` with `.order`, `.next_order`, `.H`.

    **Example:**

    ```python
    net = saddlejax.nn.DeepLinear((5, 20, 20, 5), key=jr.key(0))
    origin = jax.tree.map(jnp.zeros_like, net)
    taylor = saddlejax.taylor_term(saddlejax.SquareLoss(x, y), origin)
    taylor.order, taylor.next_order  # (3, 6)
    taylor.H(net)                    # Tr[Gᵀ A_θ]
    ```
    """
    max_order, n_probes, radius, rtol, atol = _check_taylor_args(
        method, max_order, n_probes, radius, rtol, atol
    )
    keys = list(jr.split(jr.key(0) if key is None else check_key("key", key), n_probes))
    value = loss(point)
    if method in ("auto", "outputs"):
        k = _outputs_order(loss, point, keys, max_order)
        if k is not None:
            m = _outputs_next_order(loss, point, keys[0], value, k, rtol, atol)
            coeffs = jnp.zeros(max_order + 1).at[0].set(jnp.abs(value))
            return TaylorTerm(k, m, value, coeffs, point, loss, "outputs")
        if method == "outputs":
            raise ValueError(
                "`method`='outputs' needs `loss` to be an objective with `from_outputs` and "
                "`outputs` or `x`, "
                "and `point` a network whose outputs vanish there and which is positively "
                "homogeneous in its parameters (e.g. the origin of a bias-free ReLU net). "
                "Use method='ray' otherwise."
            )
    deltas = _probes(jnp.stack(keys), _params(point))
    raw = np.abs(np.asarray(_coefficients(loss, point, deltas, max_order)))  # (probes, K + 1)
    k, m = _ray_orders(raw, radius, rtol, atol)
    return TaylorTerm(k, m, value, jnp.asarray(raw.max(axis=0)), point, loss, "ray")


# ---------------------------------------------------------------------------------------------
# identities as numbers


def _value_grad_scale(H: Callable, order: int, delta: PyTree) -> tuple[Array, PyTree, Array]:
    """H(δ), ∇H(δ) and the size ‖δ‖‖∇H(δ)‖/k of H at δ.

    By Euler's identity and Cauchy–Schwarz |H(δ)| ≤ ‖δ‖‖∇H(δ)‖/k, with equality along the
    steepest direction; unlike |H(δ)| it does not vanish where δ crosses a zero of H, so errors
    measured against it are roundoff-sized wherever H is evaluated.
    """
    h, g = jax.value_and_grad(H)(delta)
    d, g = _params(delta), _params(g)
    return h, g, two_norm(d) * two_norm(g) / order


def homogeneity_error(
    H: Callable, order: int, delta: PyTree, scales: Sequence[float] = (0.5, 2.0, 3.0)
) -> Array:
    """max_λ |H(λδ) − λ^k H(δ)| / (|λ|^k ‖δ‖‖∇H(δ)‖/k) over `scales` (SPEC §4: H(λδ) = λ^k H(δ)).

    The denominator bounds |λ^k H(δ)| and stays away from zero near H's zero set (see
    `_value_grad_scale`). Use positive λ for positively homogeneous H (ReLU nets); negative λ
    test full homogeneity.
    """
    h, _, size = _value_grad_scale(H, order, delta)
    errs = [
        jnp.abs(H(tree_scale(lam, delta)) - lam**order * h) / (abs(lam) ** order * size)
        for lam in scales
    ]
    return jnp.max(jnp.stack(errs))


def euler_error(H: Callable, order: int, delta: PyTree) -> Array:
    """|δᵀ∇H(δ) − kH(δ)| / (‖δ‖‖∇H(δ)‖) (Euler's identity for k-homogeneous H; SPEC §4).

    The denominator bounds both |δᵀ∇H(δ)| and |kH(δ)| and does not vanish where H(δ) does.
    """
    h, g, size = _value_grad_scale(H, order, delta)
    return jnp.abs(tree_vdot(_params(delta), g) - order * h) / (order * size)


def remainder_slope(
    loss: Callable,
    point: PyTree,
    H: Callable,
    delta: PyTree,
    radii: ArrayLike = (0.05, 0.08, 0.13, 0.2, 0.32, 0.5),
) -> tuple[Array, Array]:
    """Fitted slope of log|L(θ* + rδ) − L(θ*) − H(rδ)| against log r (SPEC §4: O(‖δ‖^m)).

    δ is normalised to unit norm first, so `radii` are the distances ‖rδ‖. The slope should be
    m (the next order); the radii must keep the remainder above the roundoff of L(θ*)
    (≈ 1e−16·|L(θ*)|) and small enough that orders above m do not bend the line.

    **Returns:** (slope, remainders).
    """
    unit = tree_scale(1 / two_norm(_params(delta)), _params(delta))
    radii = jnp.asarray(radii)
    value = loss(point)

    def rem(r):
        step = tree_scale(r, unit)
        return jnp.abs(loss(_shift(point, step, 1.0)) - value - H(step))

    rems = jnp.stack([rem(r) for r in radii])
    slope = jnp.polyfit(jnp.log(radii), jnp.log(rems), 1)[0]
    return slope, rems
