"""Directional convergence near the origin and near a saddle (Kumar & Haupt; SPEC §5-§6).

Their toy (Fig. 1, Fig. 3; SPEC §6): a single-layer squared-ReLU net f(x) = Σ_j max(0, w_jᵀx)²
with 10 neurons in R², 50 unit-norm inputs, labels y = 5·max(0, x₁)² + 4·max(0, x₂)², square
loss ½Σ(f − y)² (`squared_relu_toy_problem`). From θ₀ = δ·θ̃ with δ small the loss and the norms
barely move while every neuron's direction converges to a non-negative KKT point of the
constrained neural correlation function N(w) = Σ_i y_i max(0, wᵀx_i)², ‖w‖ = 1 (Corollary 5.4.1),
or its norm falls behind the others by exponential factors. Near a saddle θ_s whose small
neurons are zero (their App. D.3, Fig. 4; Theorem 5.5) the same holds for the small neurons,
with the residual r = y − f(X; θ_s) in place of y.

Scale-free formulation. The objective is 2-homogeneous near 0, so dθ/dt ≈ ∇N(θ) whatever δ:
the directions move on an O(1) time scale while the norms grow at most like e^{λ*t}, λ* = 2·max N
on the sphere (the largest KKT multiplier). Horizons are therefore given as λ*·T (`horizon`), the
largest growth exponent a neuron can have reached; the theorem's "δ small enough" is then
δ·e^{horizon} ≪ 1. The paper gives δ ≈ 1e−4 and 50,000 gradient-descent steps of 5e−5
(t = 2.5) but not the loss's normalisation; with ½Σ (λ* ≈ 105 for this draw) that horizon would
leave the origin long before, with ½·mean it is λ*T ≈ 5 — a partial convergence, as in their
figure. Here λ*T = 30 and δ down to 1e−18 (the δ sweep shows the convergence setting in).

Registered as the experiment "directional-convergence" (preset `kumar-haupt-fig1`).
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import saddlejax as sj

from ._checks import MAX_SEED, check_choice, check_float, check_floats, check_int
from ._config import register
from ._plot import colormap
from ._progress import RunContext
from ._record import Array, Outcome, check_at_least, check_at_most, check_close


@dataclasses.dataclass(frozen=True)
class KumarHauptConfig:
    """Settings of Kumar & Haupt's toy near the origin (Fig. 1, 3) and near a saddle (App. D.3).

    `problem_seed`, `n_samples`: the toy data (`squared_relu_toy_problem`, 50 inputs).
    `width`: neurons of the net started near the origin (10; the paper does not say).
    `init_stds`: the scales δ of θ₀ = δ·θ̃ (θ̃ with N(0, 1) entries), distinct, at least two;
    the checks use the smallest (the theorem's regime) and compare it with the next.
    `seeds`: keys of θ̃. `horizon`: the flow runs to T = horizon/λ*, λ* the largest KKT
    multiplier of N (the fastest a neuron's norm can grow, so ‖θ(T)‖ ≤ e^{horizon}‖θ₀‖).
    `saddle_neurons`, `small_neurons`: the saddle θ_s has `saddle_neurons` copies of the best
    single-neuron fit w̄/√k (the minimiser of the loss with one neuron; every copy sees the same
    zero gradient) and `small_neurons` zero neurons. `saddle_stds`: the std δ_s of the i.i.d.
    Gaussian perturbation of all weights of θ_s (as in App. D.3), distinct, at least two.
    `saddle_horizon`: T = saddle_horizon/λ_r, λ_r the largest multiplier of the residual NCF.
    `saddle_atol`: the absolute tolerance of the near-saddle flows, which integrate the
    displacement θ − θ_s: above the float64 round-off of ∇L at θ_s (≈ 1e−14, which moves the
    big neuron by ≈ 4e−16; a tolerance below it makes the step size chase round-off), and at
    most 1e−2·min(`saddle_stds`). `kkt_seed`, `n_restarts`: the search for the KKT points
    (`neuron_kkt_points`). `solver`, `rtol`, `n_save`: the flows (`n_save` times uniform in t).
    `min_relative_norm`: a neuron counts when its norm is at least this fraction of the
    largest (`directional_convergence`). `kkt_tol`, `spread_min`, `loss_change_tol`,
    `direction_tol`, `slope_tol`, `saddle_grad_tol`: tolerances of the checks (`_claims`).

    Every field is checked here: a bad value raises a `ValueError` naming it.
    """

    problem_seed: int = 0
    n_samples: int = 50
    width: int = 10
    init_stds: tuple[float, ...] = (1e-4, 1e-8, 1e-12, 1e-16, 1e-18)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    horizon: float = 30.0
    saddle_neurons: int = 1
    small_neurons: int = 10
    saddle_stds: tuple[float, ...] = (1e-6, 1e-8, 1e-10)
    saddle_horizon: float = 12.0
    saddle_atol: float = 1e-14
    kkt_seed: int = 1
    n_restarts: int = 8
    solver: str = "tsit5"
    rtol: float = 1e-8
    n_save: int = 201
    min_relative_norm: float = 1e-2
    kkt_tol: float = 1e-2
    spread_min: float = 0.3
    loss_change_tol: float = 1e-3
    direction_tol: float = 1e-3
    slope_tol: float = 0.01
    saddle_grad_tol: float = 1e-10

    def __post_init__(self):
        check_int("problem_seed", self.problem_seed, 0, MAX_SEED)
        check_int("n_samples", self.n_samples, 2, 10**5)
        check_int("width", self.width, 1, 10**4)
        for name in ("init_stds", "saddle_stds"):
            why = "a small initialisation, resolvable in float64"
            stds = check_floats(name, getattr(self, name), 1e-150, 1.0, why=why)
            if len(stds) < 2:
                raise ValueError(
                    f"`{name}` must list at least two scales (the checks compare the two "
                    f"smallest), got {list(stds)}."
                )
            object.__setattr__(self, name, tuple(sorted(stds, reverse=True)))
        seeds = self.seeds
        if isinstance(seeds, str) or not hasattr(seeds, "__iter__"):
            raise ValueError(f"`seeds` must be a list of integers, got {seeds!r}.")
        seeds = tuple(check_int("seeds", s, 0, MAX_SEED) for s in seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"`seeds` must list at least one seed, each once, got {seeds}.")
        object.__setattr__(self, "seeds", seeds)
        why = "λ·T, the growth exponent of the fastest neuron's norm"
        check_float("horizon", self.horizon, 0.0, 700.0, why=why)
        check_float("saddle_horizon", self.saddle_horizon, 0.0, 700.0, why=why)
        check_int("saddle_neurons", self.saddle_neurons, 1, 10**4)
        check_int("small_neurons", self.small_neurons, 1, 10**4)
        atol = check_float("saddle_atol", self.saddle_atol, 0.0, 1.0)
        if atol > 1e-2 * self.saddle_stds[-1]:
            raise ValueError(
                f"`saddle_atol` {atol:g} must be at most 1e-2 × the smallest of `saddle_stds` "
                f"({self.saddle_stds[-1]:g}) so that the perturbation is resolved; lower it "
                "(not below ≈ 1e-15, the round-off of the displacement at the saddle) or use "
                "larger `saddle_stds`."
            )
        check_int("kkt_seed", self.kkt_seed, 0, MAX_SEED)
        check_int("n_restarts", self.n_restarts, 1, 2**16)
        solver = self.solver.lower() if isinstance(self.solver, str) else self.solver
        check_choice("solver", solver, sj.solvers.SOLVER_NAMES)
        why = "float64 round-off cannot meet an rtol below 1e-14"
        check_float("rtol", self.rtol, 1e-14, 1.0, low_open=False, why=why)
        check_int("n_save", self.n_save, 3, 10**5)
        check_float("min_relative_norm", self.min_relative_norm, 0.0, 1.0, low_open=False)
        for name in ("kkt_tol", "spread_min", "loss_change_tol", "direction_tol", "slope_tol"):
            check_float(name, getattr(self, name), 0.0)
        check_float("saddle_grad_tol", self.saddle_grad_tol, 0.0)


class _Draw(eqx.Module):
    """θ̃: a `SquaredReLU` in R² with N(0, 1) entries (a module with a static width, so that two
    sweeps of one width share the compiled solve)."""

    width: int = eqx.field(static=True)

    def __call__(self, key):
        return sj.nn.SquaredReLU(2, self.width, key=key, std=1.0)


class _Displaced(eqx.Module):
    """L(θ_s + δ) as a function of the displacement δ (same structure as θ_s).

    The near-saddle flow integrates δ instead of θ: its tolerances then refer to the scale of the
    perturbation, not to that of the saddle's O(1) weights, and the small neurons (exactly 0 at
    θ_s) are δ itself, so `directional_convergence` reads their directions from the solution."""

    objective: sj.problems.SquareLoss
    saddle: sj.nn.SquaredReLU

    def __call__(self, delta):
        return self.objective(jax.tree_util.tree_map(jnp.add, self.saddle, delta))


def _with_weights(w) -> sj.nn.SquaredReLU:
    """A `SquaredReLU` holding the weights `w` (width, 2)."""
    net = eqx.filter_eval_shape(sj.nn.SquaredReLU, 2, w.shape[0], key=jr.key(0))
    return eqx.tree_at(lambda n: n.w, net, w)


def best_single_neuron(problem, start, *, newton_steps: int = 6) -> jax.Array:
    """w̄ = argmin_w L(one neuron w): the gradient flow from a small w along `start` (an escape
    direction of the origin: a KKT point of N), to t = 20 (Tsit5, rtol 1e−10), then Newton steps
    on the 2×2 Hessian, which bring ‖∇L(w̄)‖ to round-off (≈ 1e−14). A zero neuron of a
    squared-ReLU net has zero gradient, so any number of zero neurons beside (copies of) w̄ is
    a critical point: the saddle of App. D.3."""
    one = _with_weights(1e-3 * jnp.asarray(start)[None, :])
    fit = sj.gradient_flow(
        problem, one, 20.0, solver=sj.solvers.solver_from_name("tsit5"), rtol=1e-10, n_save=4
    )
    w = fit.final_params.w[0]

    def loss(v):
        return problem(_with_weights(v[None, :]))

    for _ in range(newton_steps):
        w = w - jnp.linalg.solve(jax.hessian(loss)(w), jax.grad(loss)(w))
    return w


def _sweep(objective, width, stds, t1, config, context, name, desc, **options):
    with context.sweep(desc, len(stds), len(config.seeds)) as bar:
        return sj.sweep(
            objective,
            _Draw(width),
            t1,
            alphas=stds,
            seeds=config.seeds,
            chunk_size=jax.local_device_count() if jax.default_backend() == "cpu" else None,
            solver=sj.solvers.solver_from_name(config.solver),
            rtol=config.rtol,
            saveat=np.linspace(0.0, t1, config.n_save),
            checkpoint=context.checkpoint(name),
            progress=False,
            on_chunk=bar.on_chunk,
            **options,
        )


def _summary(result, kkt, neurons, config) -> dict[str, np.ndarray]:
    """Per (δ, seed, time): the largest KKT distance of the counted neurons, the loss, ‖θ‖ (of
    the displacement, near the saddle); and the unit directions of the studied neurons."""
    sol = result.solution
    conv = sj.directional_convergence(
        sol, kkt, neurons=neurons, min_relative_norm=config.min_relative_norm
    )
    directions = np.asarray(sj.neuron_directions(sol.params).directions)
    if neurons is not None:
        directions = directions[..., np.asarray(neurons), :]
    return {
        "max_distance": np.asarray(conv.max_distance),
        "active": np.asarray(conv.active),
        "loss": np.asarray(sol.loss),
        "norm": np.asarray(sol.norm),
        "directions": directions,
    }


def run_directional_convergence(
    config: KumarHauptConfig, context: RunContext | None = None
) -> Outcome:
    """Kumar & Haupt's toy near the origin (Fig. 1, 3) and near a saddle (App. D.3, Fig. 4).

    1. KKT points of the neuron NCF N_y (`neuron_kkt_points`), λ* = their largest multiplier;
       flows from θ₀ = δ·θ̃ for δ in `init_stds` × `seeds` to T = horizon/λ*.
    2. The saddle θ_s (`best_single_neuron` copies and zero neurons), the KKT points of the
       residual NCF N_r there, λ_r; flows of the displacement from δ_s·θ̃ for δ_s in
       `saddle_stds` × `seeds` to T = saddle_horizon/λ_r.

    **Returns:** an `Outcome` with arrays (δ, seed, time) `max_distance` (largest distance of
    a counted neuron to the nearest KKT point), `loss`, `norm`, and the same with prefix
    `saddle_`; `kkt_points` and `saddle_kkt_points`; the values the checks are about; the
    checks of `_claims`.
    """
    context = context or RunContext(False)
    problem = sj.squared_relu_toy_problem(jr.key(config.problem_seed), config.n_samples)
    k_origin, k_saddle = jr.split(jr.key(config.kkt_seed))
    with context.task("KKT points of the NCF at the origin and at the saddle", 2) as task:
        kkt = sj.neuron_kkt_points(
            problem, sj.squared_relu_neuron, 2, key=k_origin, n_restarts=config.n_restarts
        )
        lam = float(jnp.max(kkt.multipliers))
        w_bar = best_single_neuron(problem, kkt.escape.direction)
        big, width_s = config.saddle_neurons, config.saddle_neurons + config.small_neurons
        saddle = _with_weights(
            jnp.zeros((width_s, 2)).at[:big].set(w_bar / math.sqrt(big))
        )
        saddle_grad = float(
            jnp.linalg.norm(jax.grad(lambda n: problem(n))(saddle).w)
        )
        task.advance(1)
        res_kkt = sj.neuron_kkt_points(
            problem, sj.squared_relu_neuron, 2, key=k_saddle, n_restarts=config.n_restarts,
            saddle=saddle,
        )
        lam_r = float(jnp.max(res_kkt.multipliers))
        task.advance(1, λ=lam, λ_r=lam_r)
    t1 = config.horizon / lam
    origin = _sweep(
        problem, config.width, config.init_stds, t1, config, context, "origin",
        "flows near the origin",
    )
    t1_s = config.saddle_horizon / lam_r
    near = _sweep(
        _Displaced(problem, saddle), width_s, config.saddle_stds, t1_s, config, context,
        "saddle", "flows near the saddle", atol=config.saddle_atol,
    )
    at_origin = _summary(origin, kkt, None, config)
    small = np.arange(big, width_s)
    at_saddle = _summary(near, res_kkt, small, config)
    loss_s = float(problem(saddle))
    values = {
        "lambda_star": lam,
        "lambda_saddle": lam_r,
        "T": t1,
        "T_saddle": t1_s,
        "kkt_points": np.asarray(kkt.points).tolist(),
        "kkt_multipliers": np.asarray(kkt.multipliers).tolist(),
        "saddle_big_neuron": np.asarray(w_bar).tolist(),
        "saddle_loss": loss_s,
        "saddle_grad_norm": saddle_grad,
        "saddle_kkt_points": np.asarray(res_kkt.points).tolist(),
        "saddle_kkt_multipliers": np.asarray(res_kkt.multipliers).tolist(),
        "wall_time": float(np.sum(origin.stats["wall_time"]) + np.sum(near.stats["wall_time"])),
    }
    values["origin"] = _regime_values(config.init_stds, at_origin, config.horizon)
    values["saddle"] = _regime_values(config.saddle_stds, at_saddle, config.saddle_horizon)
    dims = ("std", "seed", "time")
    arrays = {
        "init_stds": Array(("std",), np.asarray(config.init_stds), "δ of θ₀ = δ·θ̃"),
        "saddle_stds": Array(("std",), np.asarray(config.saddle_stds), "δ_s of θ₀ = θ_s + δ_s·θ̃"),
        "seeds": Array(("seed",), np.asarray(config.seeds), "keys of θ̃"),
        "ts": Array(("time",), np.linspace(0.0, t1, config.n_save), "save times near the origin"),
        "saddle_ts": Array(("time",), np.linspace(0.0, t1_s, config.n_save), "near the saddle"),
        "kkt_points": Array(("point", "coord"), np.asarray(kkt.points), "KKT points of N_y"),
        "saddle_kkt_points": Array(
            ("point", "coord"), np.asarray(res_kkt.points), "KKT points of N_r at θ_s"
        ),
        "saddle": Array(("neuron", "coord"), np.asarray(saddle.w), "θ_s"),
    }
    for prefix, data in (("", at_origin), ("saddle_", at_saddle)):
        arrays[prefix + "max_distance"] = Array(
            dims, data["max_distance"], "largest distance of a counted neuron to a KKT point"
        )
        arrays[prefix + "loss"] = Array(dims, data["loss"], "loss ½Σ(f − y)²")
        arrays[prefix + "norm"] = Array(
            dims, data["norm"], "‖θ‖ (near the saddle: ‖θ − θ_s‖)"
        )
        arrays[prefix + "directions"] = Array(
            (*dims, "neuron", "coord"), data["directions"],
            "unit directions of the studied neurons (near the saddle: the small ones)",
        )
    failures = [f"origin, δ = {a:g}, seed {s}: {m}" for a, s, m in origin.failures()]
    failures += [f"saddle, δ_s = {a:g}, seed {s}: {m}" for a, s, m in near.failures()]
    outcome = Outcome(
        arrays=arrays,
        values=values,
        checks=_claims(config, values),
        figures={
            "directional_convergence.png": lambda fig: plot_directional_convergence(
                arrays, values, config, problem, fig
            )
        },
        failures=failures,
    )
    outcome.table = directional_convergence_table(values, config)
    return outcome


def _regime_values(stds, data, horizon) -> dict:
    """Per δ (medians over seeds): the largest KKT distance at t = 0 and at T, the relative
    loss change, ‖θ(T)‖/‖θ(0)‖; between the two smallest δ, the largest change of a direction
    at T and the log-log slope of the loss change in δ."""
    loss, norm, dist = data["loss"], data["norm"], data["max_distance"]
    change = np.abs(loss[..., -1] - loss[..., 0]) / loss[..., 0]
    rows = [
        {
            "std": float(std),
            "distance_initial": float(np.median(dist[i, :, 0])),
            "distance_final": float(np.median(dist[i, :, -1])),
            "distance_final_max": float(np.max(dist[i, :, -1])),
            "loss_change": float(np.median(change[i])),
            "norm_growth": float(np.median(norm[i, :, -1] / norm[i, :, 0])),
        }
        for i, std in enumerate(stds)
    ]
    u = data["directions"][..., -1, :, :]
    return {
        "rows": rows,
        "direction_change": float(np.max(np.linalg.norm(u[-1] - u[-2], axis=-1))),
        "loss_change_slope": float(
            np.median(np.log(change[-2] / change[-1])) / math.log(stds[-2] / stds[-1])
        ),
        "growth_bound": math.exp(horizon),
    }


def _claims(config: KumarHauptConfig, values: dict) -> list:
    """The checks of Corollary 5.4.1 (origin) and Theorem 5.5 (saddle), at the smallest δ,
    medians over seeds: directional convergence to KKT points, from spread directions, while
    the loss is flat and the norms stay within the NCF's bound; δ-independence of the
    directions and the δ² scaling of the loss change between the two smallest δ."""
    checks = []
    for key, what, ncf, stds in (
        ("origin", "origin", "N_y", config.init_stds),
        ("saddle", "saddle", "N_r", config.saddle_stds),
    ):
        v = values[key]
        last = v["rows"][-1]
        at = f"{what}, δ = {stds[-1]:g}"
        checks += [
            check_at_most(
                f"{at}: largest KKT distance of a counted neuron at T", last["distance_final"],
                config.kkt_tol,
                note=f"Kumar & Haupt {'Cor. 5.4.1' if key == 'origin' else 'Thm 5.5'}: "
                f"each non-negligible neuron converges in direction to a KKT point of {ncf}",
            ),
            check_at_least(
                f"{at}: largest KKT distance at t = 0", last["distance_initial"],
                config.spread_min,
                note="the directions start spread out and change substantially (Fig. 1b)",
            ),
            check_at_most(
                f"{at}: |L(T) − L(0)|/L(0)", last["loss_change"], config.loss_change_tol,
                note="the loss barely changes (Fig. 1a, Fig. 4a): it moves by O(δ²e^{2λT})",
            ),
            check_at_most(
                f"{at}: ‖θ(T) − θ_s‖/‖θ(0) − θ_s‖" if key == "saddle"
                else f"{at}: ‖θ(T)‖/‖θ(0)‖",
                last["norm_growth"], v["growth_bound"],
                note="the weights stay O(δ): d‖w_j‖/dt ≤ λ‖w_j‖ to leading order (λ = 2 max N "
                "on the sphere), so growth ≤ e^{λT} = e^{horizon}",
            ),
            check_at_most(
                f"{what}: largest change of a direction at T between δ = {stds[-2]:g} and "
                f"{stds[-1]:g}", v["direction_change"], config.direction_tol,
                note="k = 2: the directions follow the NCF's flow on the sphere whatever δ "
                "(SPEC §6); the terms beyond the NCF are O(δ²e^{2λT})",
            ),
            check_close(
                f"{what}: d log|ΔL| / d log δ", v["loss_change_slope"], 2.0, config.slope_tol,
                note="the loss change is quadratic in the scale of the small weights "
                "(2-homogeneous N)",
            ),
        ]
    checks.append(
        check_at_most(
            "‖∇L(θ_s)‖ at the saddle", values["saddle_grad_norm"], config.saddle_grad_tol,
            note="θ_s is a critical point (Newton-polished single-neuron fit; zero neurons "
            "have zero gradient): round-off ≈ 1e-14",
        )
    )
    return checks


def directional_convergence_table(values: dict, config: KumarHauptConfig) -> str:
    """Per δ, near the origin and near the saddle (medians over seeds): KKT distances at t = 0
    and at T, the relative loss change and the norm growth."""
    head = (
        f"{'':>7} {'δ':>8} {'dist(0)':>8} {'dist(T)':>9} {'max dist(T)':>11} "
        f"{'|ΔL|/L':>10} {'norm ratio':>10}"
    )
    lines = [
        f"λ* = {values['lambda_star']:.4g} (T = {values['T']:.4g}), residual NCF at the saddle "
        f"λ_r = {values['lambda_saddle']:.4g} (T = {values['T_saddle']:.4g}); "
        f"‖∇L(θ_s)‖ = {values['saddle_grad_norm']:.2g}",
        head,
        "-" * len(head),
    ]
    for key in ("origin", "saddle"):
        for r in values[key]["rows"]:
            lines.append(
                f"{key:>7} {r['std']:>8.0e} {r['distance_initial']:>8.3f} "
                f"{r['distance_final']:>9.2e} {r['distance_final_max']:>11.2e} "
                f"{r['loss_change']:>10.2e} {r['norm_growth']:>10.3e}"
            )
    return "\n".join(lines)


def _angles(points) -> np.ndarray:
    points = np.asarray(points)
    return np.arctan2(points[..., 1], points[..., 0])


def _broken(phi: np.ndarray) -> np.ndarray:
    """Angles with NaN inserted at the ±π wrap, so that lines are not drawn across it."""
    phi = np.array(phi, dtype=float)
    jumps = np.abs(np.diff(phi, axis=0)) > np.pi
    phi[1:][jumps] = np.nan
    return phi


def plot_directional_convergence(arrays, values, config, problem, fig) -> None:
    """Kumar & Haupt Fig. 1, 3 (top row, origin) and Fig. 4 (bottom row, saddle): loss change and
    norm growth against λT; the neurons' angles (first seed, smallest δ) with the KKT points'
    angles dashed; the NCF on the unit circle with its KKT points; the largest KKT distance
    against λT for every δ (median over seeds)."""
    fig.set_size_inches(19, 8.5)
    axes = fig.subplots(2, 4)
    grid = np.linspace(-np.pi, np.pi, 721)
    circle = np.stack([np.cos(grid), np.sin(grid)], axis=-1)
    saddle = _with_weights(jnp.asarray(arrays["saddle"].values))
    ncfs = (
        sj.neuron_ncf(sj.squared_relu_neuron, problem.x, problem.y),
        sj.neuron_ncf(
            sj.squared_relu_neuron, problem.x,
            sj.residual_ncf(problem, saddle, eqx.is_inexact_array).y,
        ),
    )
    for row, (prefix, lam_key, stds, ncf_name, horizon) in enumerate(
        (
            ("", "lambda_star", config.init_stds, "N_y", config.horizon),
            ("saddle_", "lambda_saddle", config.saddle_stds, "N_r", config.saddle_horizon),
        )
    ):
        ax_loss, ax_angle, ax_ncf, ax_dist = axes[row]
        lam = values[lam_key]
        t = arrays[prefix + "ts"].values * lam
        loss = arrays[prefix + "loss"].values
        norm = arrays[prefix + "norm"].values
        dist = arrays[prefix + "max_distance"].values
        colors = colormap("viridis")(np.linspace(0, 0.85, len(stds)))
        i = len(stds) - 1  # the smallest δ
        change = np.abs(loss[i, 0] - loss[i, 0, 0]) / loss[i, 0, 0]
        # A change below float64's resolution of L reads as 0: drawn at 1e-17.
        ax_loss.semilogy(t, np.maximum(change, 1e-17), color="k", label="|L(t) − L(0)|/L(0)")
        ax_loss.semilogy(t, norm[i, 0] / norm[i, 0, 0], color="tab:red", label="norm ratio")
        ax_loss.semilogy(t, np.exp(t), color="tab:red", ls=":", lw=1, label="exp(λt)")
        moved = "‖θ − θ_s‖" if row else "‖θ‖"
        ax_loss.set_title(f"loss change and {moved} growth, δ = {stds[i]:g}")
        ax_loss.legend(fontsize=8)
        phi = _broken(_angles(arrays[prefix + "directions"].values[i, 0]))
        ax_angle.plot(t, phi, lw=1)
        points = arrays[prefix + "kkt_points"].values
        for a in _angles(points):
            ax_angle.axhline(a, color="0.3", ls="--", lw=1)
        ax_angle.set_ylim(-np.pi, np.pi)
        ax_angle.set_title("neuron angles (dashed: KKT points)")
        ax_ncf.plot(grid, np.asarray(jax.vmap(ncfs[row])(jnp.asarray(circle))), color="k")
        ax_ncf.plot(_angles(points), np.asarray(jax.vmap(ncfs[row])(jnp.asarray(points))), "o",
                    color="tab:red", label="KKT points")
        ax_ncf.set_xlabel("angle of w")
        ax_ncf.set_title(f"constrained NCF {ncf_name}(w), ‖w‖ = 1")
        ax_ncf.legend(fontsize=8)
        for k, std in enumerate(stds):
            ax_dist.semilogy(t, np.median(dist[k], axis=0), color=colors[k], label=f"δ = {std:g}")
        ax_dist.axhline(config.kkt_tol, color="0.4", ls=":", lw=1)
        ax_dist.set_title("largest KKT distance (median over seeds)")
        ax_dist.legend(fontsize=8)
        for ax in (ax_loss, ax_angle, ax_dist):
            ax.set_xlabel("λ t" if row == 0 else "λ_r t")
            ax.set_xlim(0, horizon)
        for ax in (ax_loss, ax_angle, ax_ncf, ax_dist):
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("near the origin (Fig. 1, 3)")
    axes[1, 0].set_ylabel("near a saddle (App. D.3, Fig. 4)")
    fig.suptitle(
        f"Kumar & Haupt: squared-ReLU toy, {config.width} neurons; saddle with "
        f"{config.saddle_neurons} big and {config.small_neurons} small neurons"
    )


register(
    "directional-convergence",
    KumarHauptConfig,
    "squared-ReLU toy from small initialisation and near a saddle: neuron directions converge "
    "to KKT points of the NCF while loss and norms stay flat (Kumar & Haupt Fig. 1, App. D.3)",
)(run_directional_convergence)
