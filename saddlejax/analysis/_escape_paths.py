"""Escape paths against the engine's flows: the checks of Jacot et al. Thm 22 with an
independent forward integration, and Thm 2's convergence of small-α simulations to Ψ(x₀*)
(SPEC §7, §8).

- `check_bijection`: Ψ(x₀) and Ψ⁻¹(Ψ(x₀)) with the theorem's rates, speed preservation and the
  forward flow of C from Ψ(x₀)(t_min) (`forward_integration`), which closes the chain closed
  form → engine → Ψ⁻¹ → closed form.
- Thm 2: θ_α(t_α + t) → R I Ψ(x₀*)(t + t_Ψ) as α → 0 for the optimal H-path x₀*, modulo a time
  shift (matched at the escape radius) and a rotation R of the hidden layers (orthogonal
  Procrustes per hidden layer) (`simulation_distances`).
"""

from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array
from optimistix import two_norm

from ..flow._events import EscapeRadius
from ..flow._flow import gradient_flow
from ..theory._bijection import (
    fit_closeness_rate,
    fit_escape_speed,
    path_distance,
    psi,
    psi_inverse,
    speed_threshold,
    theory_closeness_rate,
)
from ..theory._contraction import FixedPointSolution
from ..theory._paths import Path, escape_time
from ._alignment import procrustes_rotations, rotate_hidden
from ._crossings import first_crossing


def forward_integration(
    objective: Callable,
    y: Path,
    *,
    rtol: float = 1e-12,
    solver: diffrax.AbstractSolver = diffrax.Dopri8(),
    max_steps: int = 100_000,
) -> Path:
    """The flow of C integrated forward from y(t_min) with `gradient_flow`, saved on y's grid
    (with `tail="h_path"`, y(t_min) = x₀(t_min) for y = Ψ(x₀)).

    For k > 2 the solver's error in the blow-up time, about rtol·|T − t_min|, becomes a
    relative error rtol·|T − t_min|/(T − t_end) at the end of the window (the time-shift mode of
    the path): hence the tight default rtol and the 8th-order solver."""
    sol = gradient_flow(
        objective,
        y.at(0),
        float(y.t_end),
        t0=float(y.t_min),
        saveat=np.asarray(y.ts),
        rtol=rtol,
        solver=solver,
        max_steps=max_steps,
    )
    return y.with_xs(sol.params)


def forward_integration_distance(objective: Callable, y: Path, **kwargs) -> Array:
    """max_i ‖θ(t_i) − y(t_i)‖ / ‖y(t_i)‖ with θ = `forward_integration(objective, y, **kwargs)`:
    an independent check (adaptive ODE solver, not the quadrature of Φ) that y = Ψ(x₀) is the
    gradient-flow path of C on [t_min, t_end]."""
    return path_distance(forward_integration(objective, y, **kwargs), y)


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
    objective: Callable,
    x0: Path,
    H: Callable,
    *,
    next_order: int,
    speed: float,
    optimal_speed: float,
    fit_radii: tuple[float, float] | None = None,
    forward: bool | dict = True,
    **kwargs,
) -> BijectionCheck:
    """Run Ψ and Ψ⁻¹ from x₀ and measure the claims of Jacot et al. Thm 22 (SPEC §7).

    `objective` is C, `H` its Taylor term at the origin and `x0` an escape path of H. Fails
    loudly only if Ψ(x₀) does not converge (`throw` in `kwargs`); below the speed threshold pass
    `throw=False` and read `image.result` and `image.contraction_ratios`. `forward` is False (skip
    the engine check), True, or a dict of `forward_integration` options.

    **Returns:** a `BijectionCheck` with the two `FixedPointSolution`s, the round-trip error
    max_t ‖Ψ⁻¹(Ψ(x₀))(t) − x₀(t)‖/‖x₀(t)‖, the fitted and theoretical closeness rates, the speed
    of x₀ and the fitted speed of Ψ(x₀), the threshold speed, and (with `forward=True`) the
    forward-integration distance and `round_trip_error_forward`: the same round trip with
    Ψ(x₀) replaced by the engine's flow of C from x₀(t_min). On one grid the discrete Ψ⁻¹∘Ψ is
    the identity up to the iterations' tolerance (module docstring); the forward round trip is
    not, and measures the whole chain closed form → engine → Ψ⁻¹ → closed form.
    """
    orders = dict(next_order=next_order, speed=speed)
    image = psi(objective, x0, H, **orders, **kwargs)
    preimage = psi_inverse(H, image.path, objective, **orders, **kwargs)
    k = x0.order
    if forward is not False and bool(image.successful):  # no engine check of a failed Ψ
        options = forward if isinstance(forward, dict) else {}
        flow = forward_integration(objective, image.path, **options)
        fwd = path_distance(flow, image.path)
        back = psi_inverse(H, flow, objective, **orders, **kwargs)
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
    t, i = first_crossing(path.ts, norms, radius, rising=True, log_values=True)
    if i < 0:
        raise ValueError(
            f"the Ψ-image never reaches the escape `radius` {radius} (its largest norm is "
            f"{norms.max():.3g}); extend the window or lower `radius`."
        )
    if i == 0:
        raise ValueError(f"the Ψ-image starts above `radius` {radius}; lower the window's r_min.")
    return t


def _compared_window(image: Path, t_psi: float, min_radius: float):
    """τ = t_i − t_Ψ for the image's grid times with ‖Ψ(x₀)(t_i)‖ ≥ `min_radius`, and the image
    there."""
    keep = np.asarray(image.norms()) >= min_radius
    taus = np.asarray(image.ts)[keep] - t_psi
    target = jax.tree_util.tree_map(lambda x: x[np.nonzero(keep)[0]], image.xs)
    return taus, target


def _simulated_escape_time(objective, theta0, start, order, radius, optimal_speed, options):
    """t_α: the first time the flow from θ₀ (‖θ₀‖ = `start`) reaches ‖θ‖ = `radius`, root-found
    by the `EscapeRadius` event within 100× the optimal path's time from `start` to `radius`."""
    t_guess = escape_time(optimal_speed, order, radius) - escape_time(optimal_speed, order, start)
    sol = gradient_flow(
        objective, theta0, 100.0 * t_guess, event=EscapeRadius(radius), n_save=4, **options
    )
    return float(sol.event_time)


def _aligned_distance(objective, theta0, t_alpha, taus, target, align, options) -> float:
    """max_τ ‖Rθ_α(t_α + τ) − Ψ(x₀)(t_Ψ + τ)‖ over the τ with t_α + τ > 0 (R the Procrustes
    rotation when `align`, else the identity)."""
    valid = t_alpha + taus > 0
    taus = taus[valid]
    sol = gradient_flow(
        objective, theta0, float(t_alpha + taus[-1]), saveat=t_alpha + taus, **options
    )
    tgt = jax.tree_util.tree_map(lambda x: x[np.nonzero(valid)[0]], target)
    if align:
        aligned = rotate_hidden(sol.params, procrustes_rotations(sol.params, tgt))
    else:
        aligned = tuple(sol.params)
    diff = jax.vmap(two_norm)(jax.tree_util.tree_map(jnp.subtract, aligned, tuple(tgt)))
    return float(jnp.max(diff))


def simulation_distances(
    objective: Callable,
    image: Path,
    base: Sequence[Array],
    alphas: Sequence[float],
    *,
    radius: float,
    min_radius: float | None = None,
    optimal_speed: float,
    rtol: float = 1e-10,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
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
        window reaching beyond `radius`. `base`: θ̃, a weights tuple (W_1, …, W_L), e.g.
        `dln_image_init`.
    - `alphas`: scales. `radius`: the escape radius. `optimal_speed`: s*, only to set the final
        time of the search for t_α (100× the optimal path's time from α‖θ̃‖ to `radius`).
    - `rtol`, `solver`, `max_steps`: of `gradient_flow`.
    - `align`: apply the Procrustes rotation (default); False compares the raw weights, to show
        that θ_α converges only modulo the rotation symmetry.

    **Returns:** a `SimulationComparison`.
    """
    base = tuple(jnp.asarray(w) for w in base)
    options = dict(rtol=rtol, solver=solver, max_steps=max_steps)
    t_psi = _crossing_time(image, radius)
    min_radius = radius / 100 if min_radius is None else min_radius
    taus, target = _compared_window(image, t_psi, min_radius)
    norm0 = float(two_norm(base))
    dists, t_alphas = [], []
    for alpha in alphas:
        alpha = float(alpha)
        start = alpha * norm0
        if not start < radius:
            raise ValueError(
                f"α = {alpha} starts at ‖αθ̃‖ = {start:.3g}, not inside the escape `radius` "
                f"{radius}: use smaller `alphas`."
            )
        theta0 = tuple(alpha * w for w in base)
        t_alpha = _simulated_escape_time(
            objective, theta0, start, image.order, radius, optimal_speed, options
        )
        if not np.isfinite(t_alpha):
            raise RuntimeError(f"α = {alpha}: the flow did not reach `radius` {radius}.")
        distance = _aligned_distance(objective, theta0, t_alpha, taus, target, align, options)
        dists.append(distance / radius)
        t_alphas.append(t_alpha)
    return SimulationComparison(
        alphas=np.asarray(alphas, float),
        distances=np.asarray(dists),
        escape_times=np.asarray(t_alphas),
        image_escape_time=t_psi,
        taus=taus,
        radius=float(radius),
    )
