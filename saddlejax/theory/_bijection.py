"""The bijection Ψ between fast escape paths of H and of C, and the measurements of Jacot et al.
Thm 5 / Thm 22 on its paths (SPEC §7).

- Ψ(x₀): iterate Φ_C from an escape path x₀ of H; Ψ⁻¹(y): iterate Φ_H from an escape path y of C.
  On one grid and quadrature the discrete maps satisfy Ψ⁻¹∘Ψ = id exactly (the discrete fixed-point
  equations of the two iterations are the same equation), so the round-trip error measures the
  convergence of both iterations and the asymmetry of the tail closure; the discretisation error
  is measured separately by `ode_residual` and, against the engine's flow, by
  `saddlejax.analysis.check_bijection`.
- Closeness: ‖x₀(t) − Ψ(x₀)(t)‖ = O(e^{(m−1)st}) (k = 2) or O((T−t)^{−(m−k+1)/(k−2)}) (k > 2);
  `fit_closeness_rate` fits the exponent and `theory_closeness_rate` gives it.
- Speed preservation: Ψ(x₀) escapes at the speed s of x₀ (`fit_escape_speed`).
- The theorem needs s > s*/(m−1) (k = 2) or s > (k−1)s*/(m−k+1) (k > 2) (`speed_threshold`;
  s* = k‖H‖_∞); below it the library reports what the iteration does, it does not assume.

The checks against gradient-flow simulations (`check_bijection`; Thm 2: `simulation_distances`)
are in `saddlejax.analysis`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float
from optimistix import two_norm

from ._contraction import FixedPointSolution, fixed_point_iteration
from ._paths import Path


def psi(
    loss: Callable,
    x0: Path,
    H: Callable,
    *,
    next_order: int,
    speed: float | Array,
    **kwargs,
) -> FixedPointSolution:
    """Ψ(x₀): the escape path of C = `loss` that is closest to the escape path x₀ of H.

    Jacot et al. Thm 22 (Thm 5): iterate Φ_C from x₀ (`fixed_point_iteration`, whose keyword
    arguments — `tail`, `exponent`, `rtol`, `atol`, `max_steps`, `throw`, `adjoint` — pass
    through). Ψ(x₀) is differentiable in the data of C and H and in x₀ by the implicit function
    theorem on x = Φ_C(x) (not through the iterations; see `fixed_point_iteration`).

    **Arguments:**

    - `loss`: C. `x0`: an `escape_path` of H. `H`: the Taylor term of C at the origin (e.g.
        `dln_taylor_term(G)` or `taylor_term(loss, origin).H`). `next_order`: m. `speed`: s of x₀.

    **Returns:** a `FixedPointSolution` whose `path` is Ψ(x₀).

    **Example:**

    ```python
    G = saddlejax.matrix_cost_gradient_at_zero(problem)
    rho = saddlejax.dln_escape_direction(G, widths)
    ts = saddlejax.escape_times(rho.speed, L, radii=(1e-4, 0.5))
    x0 = saddlejax.escape_path(rho.weights, rho.speed, L, ts)
    image = saddlejax.psi(problem, x0, saddlejax.dln_taylor_term(G), next_order=2 * L,
                          speed=rho.speed)
    ```
    """
    return fixed_point_iteration(loss, x0, H, next_order=next_order, speed=speed, **kwargs)


def psi_inverse(
    H: Callable,
    y: Path,
    loss: Callable,
    *,
    next_order: int,
    speed: float | Array,
    **kwargs,
) -> FixedPointSolution:
    """Ψ⁻¹(y): iterate Φ_H from an escape path y of C (Jacot et al. Thm 22, proof).

    The tail before t_min is closed with y itself (an exact flow path of C). Keyword arguments
    pass through to `fixed_point_iteration`.
    """
    return fixed_point_iteration(H, y, loss, next_order=next_order, speed=speed, **kwargs)


def path_distance(a: Path, b: Path, *, relative: bool = True) -> Array:
    """max_i ‖a(t_i) − b(t_i)‖ (divided by ‖b(t_i)‖ when `relative`) over a shared grid."""
    diff = jax.vmap(two_norm)(jax.tree_util.tree_map(jnp.subtract, a.xs, b.xs))
    if not relative:
        return jnp.max(diff)
    nb = b.norms()
    return jnp.max(diff / jnp.where(nb > 0, nb, 1.0))


def closeness(x0: Path, y: Path) -> Float[Array, " n"]:
    """‖x₀(t_i) − y(t_i)‖ at every grid time."""
    return jax.vmap(two_norm)(jax.tree_util.tree_map(jnp.subtract, x0.xs, y.xs))


def theory_closeness_rate(order: int, next_order: int, speed: float) -> float:
    """The exponent of Thm 22: (m−1)s for k = 2 (‖x₀ − Ψ(x₀)‖ = O(e^{(m−1)st})), (m−k+1)/(k−2)
    for k > 2 (O((T−t)^{−(m−k+1)/(k−2)})). Deep linear networks: 3s (L = 2), (L+1)/(L−2)."""
    if order == 2:
        return (next_order - 1) * float(speed)
    return (next_order - order + 1) / (order - 2)


def speed_threshold(order: int, next_order: int, optimal_speed: float) -> float:
    """The smallest speed for which Thm 22 applies, with s* = k‖H‖_∞: s*/(m−1) for k = 2,
    (k−1)s*/(m−k+1) for k > 2 (s*/3 and (L−1)/(L+1)·s* for a deep linear network)."""
    if order == 2:
        return float(optimal_speed) / (next_order - 1)
    return (order - 1) * float(optimal_speed) / (next_order - order + 1)


def _fit_mask(path: Path, radii):
    norms = path.norms()
    if radii is None:
        lo, hi = jnp.log(norms[0]), jnp.log(norms[-1])
        radii = (jnp.exp(lo + 0.25 * (hi - lo)), jnp.exp(lo + 0.75 * (hi - lo)))
    return (norms >= radii[0]) & (norms <= radii[1])


def _slope(x, y, mask):
    w = mask.astype(x.dtype)
    x = jnp.where(mask, x, 0.0)
    y = jnp.where(mask, y, 0.0)
    xm = jnp.sum(w * x) / jnp.sum(w)
    ym = jnp.sum(w * y) / jnp.sum(w)
    return jnp.sum(w * (x - xm) * (y - ym)) / jnp.sum(w * (x - xm) ** 2)


def fit_closeness_rate(x0: Path, y: Path, *, radii: tuple[float, float] | None = None) -> Array:
    """Fit the decay exponent of ‖x₀(t) − y(t)‖ as t → −∞ (compare `theory_closeness_rate`).

    k = 2: the slope of log‖x₀ − y‖ against t; k > 2: minus the slope against log(T − t).
    Least squares over the grid times where ‖x₀(t)‖ lies in `radii` (default: the middle half of
    the window in log-norm, away from t_min, whose tail closure perturbs the first e-foldings, and
    from the end, where higher-order terms enter).
    """
    mask = _fit_mask(x0, radii)
    logb = jnp.log(closeness(x0, y))
    if x0.order == 2:
        return _slope(x0.ts, logb, mask)
    return -_slope(jnp.log(x0.horizon - x0.ts), logb, mask)


def fit_escape_speed(path: Path, *, radii: tuple[float, float] | None = None) -> Array:
    """The escape speed of a path, fitted on the same window as `fit_closeness_rate`.

    k = 2: the slope of log‖x(t)‖ (‖x‖ ∝ e^{st}); k > 2: −1/(k−2) times the slope of
    ‖x(t)‖^{−(k−2)} (= (k−2)s(T'−t) for some T').
    """
    mask = _fit_mask(path, radii)
    n = path.norms()
    k = path.order
    if k == 2:
        return _slope(path.ts, jnp.log(n), mask)
    return -_slope(path.ts, n ** (-(k - 2)), mask) / (k - 2)
