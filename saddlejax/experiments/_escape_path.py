"""Ψ of an escape path of a deep linear network, with the checks of Jacot et al. Thm 5 / Thm 22
(contraction of Φ, round trip Ψ⁻¹∘Ψ = id, closeness rate (m − 1)s, speed preserved, agreement
with forward integration) and the distance to small-α simulations (Thm 2) (SPEC §7, §8).

The problem is matrix completion of a 4×4 rank-2 matrix (75 % observed) with small hidden widths,
so that a run takes seconds; the escape direction x₀ is a closed form (singular triplet `index`
of G = ∇C(0)), its orders k = L and m = 2L are cross-checked with the generic `taylor_term`.
"""

import dataclasses
import math
import time

import jax.numpy as jnp
import jax.random as jr
import numpy as np

import saddlejax as sj

from ._checks import MAX_SEED, check_choice, check_float, check_floats, check_int, check_params
from ._plot import figure

ESCAPE_PATH_PRESETS = {
    # r_min: ‖x₀(t_min)‖; for L = 4 a larger one keeps |t_min| (∝ r_min^{−2}) moderate.
    "dln2": dict(depth=2, hidden=3, r_min=1e-4, alphas=(1e-2, 1e-3, 1e-4)),
    "dln3": dict(depth=3, hidden=3, r_min=1e-4, alphas=(1e-2, 1e-3, 1e-4)),
    "dln4": dict(depth=4, hidden=3, r_min=1e-3, alphas=(3e-2, 1e-2, 3e-3)),
}
TAILS = ("h_path", "leading", "none")


@dataclasses.dataclass(frozen=True)
class EscapePathConfig:
    """Settings of `run_escape_path`.

    `depth`, `hidden`: the DLN (4, hidden, …, hidden, 4), 2 ≤ L ≤ 8 (L = 1 has no saddle at the
    origin; the generic Taylor-term cross-check searches orders ≤ 8). `seed`: key of the problem
    (θ̃ of the simulations uses seed + 1), in [0, 2³² − 1). `index`: singular triplet of the
    4×4 G giving x₀, in [0, 4) (0: the optimal direction; a larger index is slower, possibly
    below the theorem's speed threshold). `n`: grid size of the path, from ‖x₀‖ = `r_min` to
    `r_max`, at least 20 points per decade of ‖x₀‖ (a coarser grid gives a wrong Ψ, ODE
    residual ~1) and at most 10⁵. `r_min` ≥ 10⁻⁸ (the path's times grow like
    r_min^{−(L−2)}), `r_max` ≤ 1 (the escape phase: farther out the Ψ-image levels off towards
    the minimum and may never reach `radius`). `radius`: the escape radius r of t_α(r),
    r_min < r < r_max. `alphas`: scales of the simulations (empty: none), distinct, in (0, 1),
    each starting inside the ball, α‖θ̃‖ < r (checked on the draw θ̃ itself), with
    α^{L−1} ≥ 10⁻²⁰⁰ (the flow leaves α·θ̃ at a speed ∝ α^{L−1}). `tail`, `max_steps`: of Ψ
    (`saddlejax.psi`), max_steps in [1, 10⁵].

    Every field is checked here, before any work: a bad value raises a `ValueError` naming it.
    """

    depth: int = 2
    hidden: int = 3
    seed: int = 0
    index: int = 0
    n: int = 401
    r_min: float = 1e-4
    r_max: float = 0.5
    radius: float = 0.3
    alphas: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    tail: str = "h_path"
    max_steps: int = 300

    def __post_init__(self):
        check_choice("tail", self.tail, TAILS)
        check_int("depth", self.depth, 2, 8, why="L = 1 has no saddle; orders are checked ≤ 8")
        check_int("hidden", self.hidden, 1)
        check_params(self.widths, "hidden")
        check_int("seed", self.seed, 0, MAX_SEED - 1, why="θ̃ uses the key seed + 1")
        check_int("index", self.index, 0, 3, why="G is 4×4")
        check_int("max_steps", self.max_steps, 1, 10**5)
        r_min = check_float("r_min", self.r_min, 1e-8, 1.0, low_open=False)
        r_max = check_float("r_max", self.r_max, r_min, 1.0, high_open=False, why="above `r_min`")
        check_float("radius", self.radius, r_min, r_max, why="between `r_min` and `r_max`")
        decades = math.log10(r_max / r_min)
        low = max(4, math.ceil(20 * decades))
        why = f"20 points per decade of ‖x₀‖ from `r_min` {r_min:g} to `r_max` {r_max:g}"
        check_int("n", self.n, low, 10**5, why=why)
        why = "θ₀ = α·θ̃ is a small initialisation"
        alphas = check_floats("alphas", self.alphas, 0.0, 1.0, why=why)
        object.__setattr__(self, "alphas", alphas)
        if not alphas:
            return
        smallest = min(alphas)
        if (self.depth - 1) * math.log10(smallest) < -200:
            floor = 10 ** (-200 / (self.depth - 1))
            raise ValueError(
                f"`alphas` has α = {smallest:g}, too small for depth {self.depth}: the flow "
                f"leaves α·θ̃ at a speed ∝ α^(L−1), below float64's range; use α ≥ {floor:.2g}."
            )
        start = max(alphas) * self.base_norm
        if not start < self.radius:
            raise ValueError(
                f"`alphas` has α = {max(alphas):g}, which starts at α‖θ̃‖ = {start:.3g}, not "
                f"inside the escape `radius` {self.radius:g} (‖θ̃‖ = {self.base_norm:.4g}); "
                f"use α < {self.radius / self.base_norm:.3g} or a larger `radius`."
            )

    @property
    def widths(self) -> tuple[int, ...]:
        return (4,) + (self.hidden,) * (self.depth - 1) + (4,)

    @property
    def base_norm(self) -> float:
        """‖θ̃‖ of the simulations' base θ̃ = `dln_image_init(widths, key=key(seed + 1))`."""
        theta = sj.dln_image_init(self.widths, key=jr.key(self.seed + 1))
        return math.sqrt(sum(float(jnp.sum(w**2)) for w in theta))

    @classmethod
    def preset(cls, name: str, /, **overrides) -> "EscapePathConfig":
        """The config of `ESCAPE_PATH_PRESETS[name]`, with `overrides` (None values ignored)."""
        if name not in ESCAPE_PATH_PRESETS:
            raise ValueError(
                f"unknown preset {name!r}; use one of {', '.join(ESCAPE_PATH_PRESETS)}."
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**ESCAPE_PATH_PRESETS[name], **given})


@dataclasses.dataclass(frozen=True)
class EscapePathRun:
    """What `run_escape_path` computed: `summary`, a dict of plain numbers (JSON-ready: a
    non-finite number is None); `x0`, the H-path; `check`, the `BijectionCheck`; `simulation`,
    the `SimulationComparison` (None without α or when Ψ(x₀) was not found)."""

    summary: dict
    x0: "sj.Path"
    check: "sj.BijectionCheck"
    simulation: "sj.SimulationComparison | None"


def _finite(x):
    """A float, or None where it is not finite (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _finite_list(xs):
    return [_finite(x) for x in xs]


def _taylor_orders(problem, widths) -> list[int | None]:
    """(k, m) at the origin from the generic Taylor-term finder: an independent check of the
    DLN's (L, 2L)."""
    origin = tuple(jnp.zeros((o, i)) for i, o in zip(widths[:-1], widths[1:]))
    term = sj.taylor_term(problem, origin)
    return [int(term.order), term.next_order]


def _summary(config, orders, speed, s_star, check, sim) -> dict:
    k, m = config.depth, 2 * config.depth
    return {
        "widths": list(config.widths),
        "order": k,
        "next_order": m,
        "taylor_term_orders": orders,
        "speed": speed,
        "optimal_speed": s_star,
        "threshold_speed": float(check.threshold),
        "above_threshold": bool(speed > check.threshold),
        "tail": config.tail,
        "converged": bool(check.image.successful),
        "result": sj.RESULTS[check.image.result],
        "num_steps": int(check.image.stats["num_steps"]),
        "contraction_ratios": _finite_list(check.image.ratios()),
        "inverse_contraction_ratios": _finite_list(check.preimage.ratios()),
        "ode_residual": _finite(check.image.ode_residual),
        "round_trip_error": _finite(check.round_trip_error),
        "round_trip_error_forward": _finite(check.round_trip_error_forward),
        "fitted_rate": _finite(check.fitted_rate),
        "theory_rate": _finite(check.theory_rate),
        "fitted_speed": _finite(check.fitted_speed),
        "forward_integration_distance": _finite(check.forward_integration_distance),
        "alphas": _finite_list(config.alphas),
        "simulation_distance": [] if sim is None else _finite_list(sim.distances),
        "escape_times": [] if sim is None else _finite_list(sim.escape_times),
    }


def run_escape_path(config: EscapePathConfig) -> EscapePathRun:
    """Build x₀ (closed form), run Ψ and Ψ⁻¹ with `check_bijection`, and, when Ψ(x₀) was found,
    compare small-α simulations with it (`simulation_distances`).

    **Returns:** an `EscapePathRun`; `summary` holds the orders (and `taylor_term_orders`, the
    generic finder's), the speed s of x₀, s* and the theorem's threshold, `converged`, `result`,
    the contraction ratios of Ψ and Ψ⁻¹, the ODE residual, the round-trip errors, fitted and
    theoretical closeness rates, the fitted speed, the forward-integration distance, per α the
    simulation distance and escape time, and `wall_time_s`.
    """
    start = time.perf_counter()
    widths = config.widths
    problem = sj.matrix_completion_problem(jr.key(config.seed), n=4, rank=2, observed=0.75)
    g = sj.matrix_cost_gradient_at_zero(problem)
    k, m = config.depth, 2 * config.depth
    rho = sj.dln_escape_direction(g, widths, index=config.index)
    speed = float(rho.speed)
    s_star = float(sj.dln_optimal_speed(g, config.depth))
    ts = sj.escape_times(speed, k, radii=(config.r_min, config.r_max), n=config.n)
    x0 = sj.escape_path(rho.weights, speed, k, ts)
    check = sj.check_bijection(
        problem,
        x0,
        sj.dln_taylor_term(g),
        next_order=m,
        speed=speed,
        optimal_speed=s_star,
        tail=config.tail,
        max_steps=config.max_steps,
        throw=False,
    )
    sim = None
    if config.alphas and bool(check.image.successful):
        theta = sj.dln_image_init(widths, key=jr.key(config.seed + 1))
        sim = sj.simulation_distances(
            problem,
            check.image.path,
            theta,
            config.alphas,
            radius=config.radius,
            optimal_speed=s_star,
        )
    orders = _taylor_orders(problem, widths)
    summary = _summary(config, orders, speed, s_star, check, sim)
    summary["wall_time_s"] = time.perf_counter() - start
    return EscapePathRun(summary, x0, check, sim)


def plot_escape_path(run: EscapePathRun, path) -> None:
    """Three panels: ‖x₀‖, ‖Ψ(x₀)‖ and their distance against time; the contraction ratios of
    Ψ and Ψ⁻¹ per iteration; the simulation distance against α (Thm 2). Needs matplotlib (the
    `plot` extra)."""
    x0, out = run.x0, run.summary
    y = run.check.image.path
    k = x0.order
    xaxis = np.asarray(x0.ts) if k == 2 else np.asarray(x0.horizon - x0.ts)
    fig = figure(figsize=(15, 4.2), layout="tight")
    axes = fig.subplots(1, 3)
    ax = axes[0]
    ax.plot(xaxis, np.asarray(x0.norms()), label="‖x₀(t)‖ (H-path)")
    ax.plot(xaxis, np.asarray(y.norms()), "--", label="‖Ψ(x₀)(t)‖")
    rate, theory = (np.nan if v is None else v for v in (out["fitted_rate"], out["theory_rate"]))
    ax.plot(xaxis, np.asarray(sj.closeness(x0, y)), label=f"‖x₀ − Ψ(x₀)‖, fitted rate {rate:.3f}")
    ax.set_yscale("log")
    if k > 2:
        ax.set_xscale("log")
    ax.set_xlabel("t" if k == 2 else "T − t")
    ax.set_title(f"escape paths, theory rate {theory:.3f}")
    ax.legend(fontsize=8)
    ax = axes[1]
    for key, style, label in (
        ("contraction_ratios", "o-", "Ψ (Φ_C)"),
        ("inverse_contraction_ratios", "s--", "Ψ⁻¹ (Φ_H)"),
    ):
        ratios = np.asarray(out[key], dtype=float)
        ax.plot(np.arange(1, ratios.size + 1), ratios, style, label=label)
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_xlabel("iteration n")
    ax.set_ylabel("‖x_{n+1} − x_n‖ / ‖x_n − x_{n−1}‖")
    ax.set_title("contraction ratios (weighted norm)")
    ax.legend(fontsize=8)
    ax = axes[2]
    if run.simulation is not None:
        ax.loglog(run.simulation.alphas, run.simulation.distances, "o-")
        ax.set_xlabel("α")
        ax.set_ylabel("max_t ‖Rθ_α(t_α+t) − Ψ(x₀)(t_Ψ+t)‖ / r")
        ax.set_title("distance to the simulation (Thm 2)")
    else:
        ax.set_axis_off()
    fig.savefig(path, dpi=110)
