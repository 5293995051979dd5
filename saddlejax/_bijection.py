"""The bijection Ψ between fast escape paths of H and of C, and the checks that make Jacot et al.'s
Thm 5 / Thm 22 and Thm 2 visible (SPEC §7, §8).

- Ψ(x₀): iterate Φ_C from an escape path x₀ of H; Ψ⁻¹(y): iterate Φ_H from an escape path y of C.
  On one grid and quadrature the discrete maps satisfy Ψ⁻¹∘Ψ = id exactly (the discrete fixed-point
  equations of the two iterations are the same equation), so the round-trip error measures the
  convergence of both iterations and the asymmetry of the tail closure; the discretisation error
  is measured separately by `ode_residual`, `forward_integration_distance`, and the round trip
  with Ψ(x₀) replaced by the engine's forward flow (`BijectionCheck.round_trip_error_forward`).
- Closeness: ‖x₀(t) − Ψ(x₀)(t)‖ = O(e^{(m−1)st}) (k = 2) or O((T−t)^{−(m−k+1)/(k−2)}) (k > 2);
  `fit_closeness_rate` fits the exponent and `theory_closeness_rate` gives it.
- Speed preservation: Ψ(x₀) escapes at the speed s of x₀ (`fit_escape_speed`).
- The theorem needs s > s*/(m−1) (k = 2) or s > (k−1)s*/(m−k+1) (k > 2) (`speed_threshold`;
  s* = k‖H‖_∞); below it the library reports what the iteration does, it does not assume.
- Thm 2: θ_α(t_α + t) → R I Ψ(x₀*)(t + t_Ψ) as α → 0 for the optimal H-path x₀*, modulo a time
  shift (matched at the escape radius) and a rotation R of the hidden layers (orthogonal
  Procrustes per hidden layer) (`simulation_distances`).
"""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._contraction import FixedPointSolution, fixed_point_iteration
from ._events import EscapeRadius
from ._flow import gradient_flow
from ._paths import Path, escape_time
from ._tree import tree_norm


def psi(
    loss: Callable,
    x0: Path,
    taylor_term: Callable,
    *,
    next_order: int,
    speed: float | Array,
    **kwargs,
) -> FixedPointSolution:
    """Ψ(x₀): the escape path of C = `loss` that is closest to the escape path x₀ of H.

    Jacot et al. Thm 22 (Thm 5): iterate Φ_C from x₀ (`fixed_point_iteration`, whose keyword
    arguments — `tail`, `exponent`, `rtol`, `atol`, `max_steps`, `throw` — pass through).

    **Arguments:**

    - `loss`: C. `x0`: an `escape_path` of H. `taylor_term`: H (e.g. `dln_taylor_term(G)` or
        `taylor_term(loss, 0).H`). `next_order`: m. `speed`: s of x₀.

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
    return fixed_point_iteration(
        loss, x0, taylor_term, next_order=next_order, speed=speed, **kwargs
    )


def psi_inverse(
    taylor_term: Callable,
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
    return fixed_point_iteration(taylor_term, y, loss, next_order=next_order, speed=speed, **kwargs)


def path_distance(a: Path, b: Path, *, relative: bool = True) -> Array:
    """max_i ‖a(t_i) − b(t_i)‖ (divided by ‖b(t_i)‖ when `relative`) over a shared grid."""
    diff = jax.vmap(tree_norm)(jax.tree_util.tree_map(jnp.subtract, a.xs, b.xs))
    if not relative:
        return jnp.max(diff)
    nb = b.norms()
    return jnp.max(diff / jnp.where(nb > 0, nb, 1.0))


def closeness(x0: Path, y: Path) -> Float[Array, " n"]:
    """‖x₀(t_i) − y(t_i)‖ at every grid time."""
    return jax.vmap(tree_norm)(jax.tree_util.tree_map(jnp.subtract, x0.xs, y.xs))


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


def forward_integration(
    loss: Callable,
    y: Path,
    *,
    rtol: float = 1e-12,
    solver: str = "dopri8",
    max_steps: int = 100_000,
) -> Path:
    """The flow of C integrated forward from y(t_min) with `gradient_flow`, saved on y's grid
    (with `tail="h_path"`, y(t_min) = x₀(t_min) for y = Ψ(x₀)).

    For k > 2 the solver's error in the blow-up time, about rtol·|T − t_min|, becomes a
    relative error rtol·|T − t_min|/(T − t_end) at the end of the window (the time-shift mode of
    the path), hence the tight default: with L = 4, radii (1e−4, 0.5), Tsit5 at rtol 1e−10
    misses the closed-form H-path by 8e−3 at the end, Dopri8 at 1e−12 by 2e−6."""
    sol = gradient_flow(
        loss,
        y.at(0),
        float(y.t_end),
        t0=float(y.t_min),
        saveat=np.asarray(y.ts),
        rtol=rtol,
        solver=solver,
        max_steps=max_steps,
    )
    return y.with_xs(sol.params)


def forward_integration_distance(loss: Callable, y: Path, **kwargs) -> Array:
    """max_i ‖θ(t_i) − y(t_i)‖ / ‖y(t_i)‖ with θ = `forward_integration(loss, y, **kwargs)`: an
    independent check (adaptive ODE solver, not the quadrature of Φ) that y = Ψ(x₀) is the
    gradient-flow path of C on [t_min, t_end]."""
    return path_distance(forward_integration(loss, y, **kwargs), y)


class BijectionCheck(eqx.Module):
    """Ψ(x₀), Ψ⁻¹(Ψ(x₀)) and the measured quantities of Thm 22 (see `check_bijection`)."""

    image: FixedPointSolution
    preimage: FixedPointSolution
    round_trip_error: Array
    fitted_rate: Array
    theory_rate: float
    speed: float
    fitted_speed: Array
    threshold: float
    forward_integration_distance: Array
    round_trip_error_forward: Array


def check_bijection(
    loss: Callable,
    x0: Path,
    taylor_term: Callable,
    *,
    next_order: int,
    speed: float,
    optimal_speed: float,
    fit_radii: tuple[float, float] | None = None,
    forward: bool | dict = True,
    **kwargs,
) -> BijectionCheck:
    """Run Ψ and Ψ⁻¹ from x₀ and measure the claims of Jacot et al. Thm 22 (SPEC §7).

    Fails loudly only if Ψ(x₀) does not converge (`throw` in `kwargs`); below the speed threshold
    pass `throw=False` and read `image.result` and `image.contraction_ratios`. `forward` is
    False (skip the engine check), True, or a dict of `forward_integration` options.

    **Returns:** a `BijectionCheck` with the two `FixedPointSolution`s, the round-trip error
    max_t ‖Ψ⁻¹(Ψ(x₀))(t) − x₀(t)‖/‖x₀(t)‖, the fitted and theoretical closeness rates, the speed
    of x₀ and the fitted speed of Ψ(x₀), the threshold speed, and (with `forward=True`) the
    forward-integration distance and `round_trip_error_forward`: the same round trip with
    Ψ(x₀) replaced by the engine's flow of C from x₀(t_min). On one grid the discrete Ψ⁻¹∘Ψ is
    the identity up to the iterations' tolerance (module docstring); the forward round trip is
    not, and measures the whole chain closed form → engine → Ψ⁻¹ → closed form.
    """
    image = psi(loss, x0, taylor_term, next_order=next_order, speed=speed, **kwargs)
    preimage = psi_inverse(
        taylor_term, image.path, loss, next_order=next_order, speed=speed, **kwargs
    )
    k = x0.order
    if forward is not False and bool(image.successful):  # no engine check of a failed Ψ
        options = forward if isinstance(forward, dict) else {}
        flow = forward_integration(loss, image.path, **options)
        fwd = path_distance(flow, image.path)
        back = psi_inverse(taylor_term, flow, loss, next_order=next_order, speed=speed, **kwargs)
        rt_fwd = path_distance(back.path, x0)
    else:
        fwd = rt_fwd = jnp.asarray(jnp.nan)
    return BijectionCheck(
        image=image,
        preimage=preimage,
        round_trip_error=path_distance(preimage.path, x0),
        fitted_rate=fit_closeness_rate(x0, image.path, radii=fit_radii),
        theory_rate=theory_closeness_rate(k, next_order, speed),
        speed=float(speed),
        fitted_speed=fit_escape_speed(image.path, radii=fit_radii),
        threshold=speed_threshold(k, next_order, optimal_speed),
        forward_integration_distance=fwd,
        round_trip_error_forward=rt_fwd,
    )


# --------------------------------------------------------------------------------------------
# Connection to the simulation (Thm 2)


def _as_list(weights):
    return [jnp.asarray(w) for w in weights]


def procrustes_rotations(source: Sequence[Array], target: Sequence[Array], *, sweeps: int = 20):
    """Orthogonal O_1, …, O_{L−1} (one per hidden layer) minimising
    Σ_t Σ_ℓ ‖O_ℓ W_ℓ(t) O_{ℓ−1}ᵀ − V_ℓ(t)‖² (O_0 = O_L = I) — the DLN symmetry of SPEC §2.

    Block-coordinate descent: each O_ℓ, the others fixed, is an orthogonal Procrustes problem
    max tr(O_ℓ M_ℓ), solved by the SVD of M_ℓ; every update decreases the objective. It starts
    from a pass from the input side that uses only the layer into ℓ (exact for exactly rotated
    data when Σ_t W_ℓW_ℓᵀ has full rank), so that it does not start from a poor local optimum.

    **Arguments:** `source`, `target`: tuples (W_1, …, W_L) of stacked weights with a leading time
    axis (or without one), e.g. `FlowSolution.params` and `Path.xs`.

    **Returns:** the list of rotations [O_1, …, O_{L−1}].
    """
    source, target = _as_list(source), _as_list(target)
    if len(source) != len(target):
        raise ValueError(f"`source` and `target` have {len(source)} and {len(target)} layers.")
    if source[0].ndim == 2:
        source = [w[None] for w in source]
        target = [w[None] for w in target]
    return list(_procrustes(tuple(source), tuple(target), sweeps))


@eqx.filter_jit
def _procrustes(source, target, sweeps):
    depth = len(source)
    eye_in = jnp.eye(source[0].shape[-1], dtype=source[0].dtype)
    eye_out = jnp.eye(source[-1].shape[-2], dtype=source[-1].dtype)

    def sweep(rot, use_out=True):
        rot = list(rot)
        for ell in range(1, depth):
            o_prev = eye_in if ell == 1 else rot[ell - 2]
            m = jnp.einsum("tij,kj,tlk->il", source[ell - 1], o_prev, target[ell - 1])
            if use_out:
                o_next = eye_out if ell == depth - 1 else rot[ell]
                m = m + jnp.einsum("tji,kj,tkl->il", source[ell], o_next, target[ell])
            u, _, vt = jnp.linalg.svd(m)
            rot[ell - 1] = vt.T @ u.T
        return tuple(rot)

    init = sweep(tuple(jnp.eye(w.shape[-2], dtype=w.dtype) for w in source[:-1]), False)
    return jax.lax.fori_loop(0, sweeps, lambda _, r: sweep(r), init)


def rotate_hidden(weights: Sequence[Array], rotations: Sequence[Array]) -> tuple[Array, ...]:
    """(W_ℓ) ↦ (O_ℓ W_ℓ O_{ℓ−1}ᵀ) with O_0 = O_L = I (acts on stacked weights too)."""
    weights = _as_list(weights)
    out = []
    for ell, w in enumerate(weights):
        if ell < len(weights) - 1:
            w = jnp.einsum("ij,...jk->...ik", rotations[ell], w)
        if ell > 0:
            w = jnp.einsum("...ij,kj->...ik", w, rotations[ell - 1])
        out.append(w)
    return tuple(out)


class SimulationComparison(eqx.Module):
    """θ_α(t_α + t) against the Ψ-image, per α (see `simulation_distances`).

    **Fields:** `alphas`; `distances` max_t ‖R θ_α(t_α + t) − Ψ(x₀)(t_Ψ + t)‖ / radius over the
    compared window, after the Procrustes rotation R; `escape_times` t_α; `image_escape_time` t_Ψ;
    `taus` the compared times t (relative to the escape time); `radius`.
    """

    alphas: np.ndarray
    distances: np.ndarray
    escape_times: np.ndarray
    image_escape_time: float
    taus: np.ndarray
    radius: float


def _crossing_time(path: Path, radius: float) -> float:
    norms = np.asarray(path.norms())
    ts = np.asarray(path.ts)
    above = np.nonzero(norms >= radius)[0]
    if above.size == 0:
        raise ValueError(
            f"the Ψ-image never reaches the escape `radius` {radius} (its largest norm is "
            f"{norms.max():.3g}); extend the window or lower `radius`."
        )
    i = int(above[0])
    if i == 0:
        raise ValueError(f"the Ψ-image starts above `radius` {radius}; lower the window's r_min.")
    a, b = np.log(norms[i - 1]), np.log(norms[i])
    w = (np.log(radius) - a) / (b - a)
    return float(ts[i - 1] + w * (ts[i] - ts[i - 1]))


def simulation_distances(
    objective: Callable,
    image: Path,
    init: Sequence[Array],
    alphas: Sequence[float],
    *,
    radius: float,
    min_radius: float | None = None,
    optimal_speed: float,
    rtol: float = 1e-10,
    solver: str = "tsit5",
    max_steps: int = 1_000_000,
    align: bool = True,
) -> SimulationComparison:
    """Compare direct flows θ_α from α·θ̃ with the Ψ-image of the optimal H-path (Jacot Thm 2).

    For each α: run `gradient_flow` to the escape time t_α (‖θ_α(t_α)‖ = `radius`, root-found),
    save θ_α(t_α + τ) at τ = t_i − t_Ψ for the image's grid times t_i with ‖Ψ(x₀)(t_i)‖ ≥
    `min_radius` (default radius/100), t_Ψ the image's own crossing of `radius`; align the hidden
    layers with `procrustes_rotations` and report max_τ ‖Rθ_α(t_α + τ) − Ψ(x₀)(t_Ψ + τ)‖/radius.
    Thm 2 says it tends to 0 as α → 0 (when σ_1(G) is simple).

    **Arguments:**

    - `objective`: C as a function of the weights tuple. `image`: Ψ(x₀*) (`psi(...).path`) on a
        window reaching beyond `radius`. `init`: θ̃, a weights tuple (W_1, …, W_L).
    - `alphas`: scales. `radius`: the escape radius. `optimal_speed`: s*, only to set the final
        time of the search for t_α (100× the optimal path's time from α‖θ̃‖ to `radius`).
    - `rtol`, `solver`, `max_steps`: of `gradient_flow`.
    - `align`: apply the Procrustes rotation (default); False compares the raw weights, to show
        that θ_α converges only modulo the rotation symmetry.
    """
    init = tuple(jnp.asarray(w) for w in init)
    k = image.order
    t_psi = _crossing_time(image, radius)
    min_radius = radius / 100 if min_radius is None else min_radius
    norms = np.asarray(image.norms())
    ts = np.asarray(image.ts)
    keep = norms >= min_radius
    taus_all = ts[keep] - t_psi
    target = jax.tree_util.tree_map(lambda x: x[np.nonzero(keep)[0]], image.xs)
    norm0 = float(tree_norm(init))
    dists, t_alphas = [], []
    for alpha in alphas:
        alpha = float(alpha)
        start = alpha * norm0
        if not start < radius:
            raise ValueError(
                f"α = {alpha} starts at ‖αθ̃‖ = {start:.3g}, not inside the escape `radius` "
                f"{radius}: use smaller `alphas`."
            )
        t_guess = escape_time(optimal_speed, k, radius) - escape_time(optimal_speed, k, start)
        theta0 = tuple(alpha * w for w in init)
        sol = gradient_flow(
            objective,
            theta0,
            100.0 * t_guess,
            event=EscapeRadius(radius),
            rtol=rtol,
            solver=solver,
            max_steps=max_steps,
            n_save=4,
        )
        t_alpha = float(sol.event_time)
        if not np.isfinite(t_alpha):
            raise RuntimeError(f"α = {alpha}: the flow did not reach `radius` {radius}.")
        valid = t_alpha + taus_all > 0
        taus = taus_all[valid]
        sol2 = gradient_flow(
            objective,
            theta0,
            float(t_alpha + taus[-1]),
            saveat=t_alpha + taus,
            rtol=rtol,
            solver=solver,
            max_steps=max_steps,
        )
        tgt = jax.tree_util.tree_map(lambda x: x[np.nonzero(valid)[0]], target)
        if align:
            aligned = rotate_hidden(sol2.params, procrustes_rotations(sol2.params, tgt))
        else:
            aligned = tuple(sol2.params)
        diff = jax.vmap(tree_norm)(jax.tree_util.tree_map(jnp.subtract, aligned, tuple(tgt)))
        dists.append(float(jnp.max(diff)) / radius)
        t_alphas.append(t_alpha)
    return SimulationComparison(
        alphas=np.asarray(alphas, float),
        distances=np.asarray(dists),
        escape_times=np.asarray(t_alphas),
        image_escape_time=t_psi,
        taus=taus_all,
        radius=float(radius),
    )


def dln_image_init(widths: Sequence[int], key, std: float | None = None) -> tuple[Array, ...]:
    """θ̃ for `simulation_distances`: the weights of a `DeepLinear(widths, key=key, std=std)`."""
    from .nn import DeepLinear

    return tuple(DeepLinear(widths, key=key, std=std).weights)
