"""The first escape from the origin of a deep linear network: Jacot et al. Fig. 4, Thm 2 and
Thm 5 / Thm 22 (SPEC §5, §7, §8, §11).

Two experiments:

- "jacot-fig4" (`run_jacot_fig4`, preset `jacot-fig4`): one θ̃, several α on 10×10 rank-3 matrix
  completion. A large α trains in the lazy regime and does not learn the low-rank structure; small
  α go from saddle to saddle and generalise (Fig. 4 left). As α → 0 the shifted paths
  θ_α(t_α + τ) converge to one limiting path (Thm 2; Fig. 4 middle) and α^{L−2}·t_α converges
  to the blow-up time T_H(θ̃) of the flow of the leading Taylor term (Lemma 13, App. C.5).
- "jacot-escape" (`run_jacot_escape`, preset `jacot-escape`): per depth L, the optimal escape
  speed s* of the generic sphere solver against the DLN closed form L^{−(L−2)/2}σ₁(G), the map Φ
  and the bijection Ψ of Thm 5 (contraction below the theorem's bound, round trip Ψ⁻¹∘Ψ,
  closeness rate, speed preserved, distance to simulations falling with α) — the
  `saddlejax escape-path` machinery, `run_escape_path` — and the escape-time law (t_α ≈
  log(1/α)/s* for L = 2, α^{L−2}t_α → T_H(θ̃) for L > 2).
"""

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import saddlejax as sj

from ._checks import MAX_SEED, check_float, check_floats, check_int
from ._config import register
from ._escape import EscapeConfig, run_escape
from ._escape_path import ESCAPE_PATH_PRESETS, EscapePathConfig, run_escape_path
from ._matrix_completion import MatrixCompletionConfig, _draw, _matrix, _test_loss
from ._plot import colormap
from ._progress import RunContext
from ._record import (
    Array,
    Outcome,
    check_abs,
    check_at_least,
    check_at_most,
    check_close,
    check_equal,
)

# --------------------------------------------------------------------------------------------
# Shared: the escape-time law (SPEC §8) and the contraction bound of Lemmas 24/26 (SPEC §7)


def escape_time_theory(depth: int, g, theta) -> float:
    """The theory's coefficient of the escape-time law (SPEC §8): 1/s* for L = 2
    (t_α = log(1/α)/s* + O(1)), T_H(θ̃) = `blowup_time` of the flow of H = Tr[GᵀA_θ] from θ̃
    for L > 2 (α^{L−2}t_α → T_H(θ̃), Lemma 13)."""
    if depth == 2:
        return float(1.0 / sj.dln_optimal_speed(g, 2))
    return float(sj.blowup_time(sj.dln_taylor_term(g), tuple(theta), order=depth).time)


def loglog_slope(alphas, times) -> float:
    """d log t_α / d log α between the two smallest α (theory: −(L − 2) for L > 2)."""
    order = np.argsort(alphas)
    a, t = np.asarray(alphas, float)[order[:2]], np.asarray(times, float)[order[:2]]
    return float(np.log(t[1] / t[0]) / np.log(a[1] / a[0]))


def escape_law(alphas, times, depth: int, theory: float):
    """The escape-time law of SPEC §8 fitted on one seed's t_α (`escape_time_scaling`): the
    coefficient from the two smallest α (for L > 2 Richardson's extrapolation of α^{L−2}t_α,
    which removes the O(α^{L−2}) correction; for L = 2 the slope against log(1/α), where the
    o(1) decays fastest), and, with three α or more, a fit of all of them for the order q of
    the correction (from the three smallest α). Returns (two-point fit, all-α fit)."""
    alphas, times = np.asarray(alphas, float), np.asarray(times, float)
    two = sj.escape_time_scaling(alphas, times, order=depth, theory=theory, n_fit=2)
    every = sj.escape_time_scaling(alphas, times, order=depth, theory=theory)
    return two, every


def scaling_checks(label: str, alphas, times, depth: int, theory: float, rtol: float,
                   slope_rtol: float) -> tuple[list, object]:
    """The claims of SPEC §8 on one seed's escape times: L = 2: the slope of t_α against
    log(1/α) is 1/s*; L > 2: α^{L−2}t_α extrapolated to α = 0 is T_H(θ̃), log t_α against log α
    has slope −(L − 2), and (with three α) the correction to α^{L−2}t_α is O(α^{L−2}).
    Returns (checks, the two-point `EscapeTimeScaling`)."""
    two, every = escape_law(alphas, times, depth, theory)
    a = float(two.coefficients[0])
    if depth == 2:
        return [
            check_close(
                f"{label}slope of t_α against log(1/α)", a, theory, slope_rtol,
                note="t_α = log(1/α)/s* + b + o(1) (SPEC §8); from the two smallest α, where "
                "the o(1), along slower directions ∝ α^{1−s₂/s*}, is at the % level",
            )
        ], two
    scaled = _scaled_name(depth)
    out = [
        check_close(
            f"{label}lim {scaled} (extrapolated) vs T_H(θ̃)", a, theory, rtol,
            note="Lemma 13: α^{L−2}t_α = T_H(θ̃) + O(α^{L−2}); Richardson on the two smallest "
            "α removes that term, what is left (higher orders, solver tolerances) is ≲ 1e−4",
        ),
        check_close(
            f"{label}d log t_α / d log α", loglog_slope(alphas, times), -(depth - 2),
            slope_rtol,
            note=f"t_α ∝ α^{{−(L−2)}} (SPEC §8), between the two smallest α, whose O(α^{depth - 2})"
            " correction shifts the slope by less than this",
        ),
    ]
    if np.asarray(alphas).size >= 3:
        out.append(
            check_abs(
                f"{label}order q of the correction {scaled} − T_H ∝ α^q",
                float(every.correction_exponents[0]), depth - 2, 0.5,
                note="Lemma 13 gives q = L − 2 asymptotically; from the three smallest α, "
                "which are not all in the asymptotic range (± 0.5)",
            )
        )
    return out, two


def _scaled_name(depth: int) -> str:
    return "α·t_α" if depth == 3 else f"α^{depth - 2}·t_α"


def contraction_bound(order: int, speed: float, optimal_speed: float, exponent: float) -> float:
    """The leading-order contraction factor of Φ in the weighted norm of Jacot et al. Lemma 24
    (k = 2: sup‖∇²C‖/β ≈ 2‖H‖_op/β = s*/β for a DLN) and Lemma 26 (k > 2:
    k(k−1)‖H‖_∞/(α s₀ (k−2)) = (k−1)s*/(α s₀ (k−2)) with s* = k‖H‖_∞), without the remainder's
    O(r^{m−k}) share (SPEC §7). `exponent` is the β or α of the norm."""
    if order == 2:
        return optimal_speed / exponent
    return (order - 1) * optimal_speed / (exponent * speed * (order - 2))


# --------------------------------------------------------------------------------------------
# jacot-fig4


@dataclasses.dataclass(frozen=True)
class JacotFig4Config:
    """Settings of `run_jacot_fig4` (Jacot et al. Fig. 4; SPEC §8, §11).

    `n`, `rank`, `observed`, `problem_seed`: the completion problem (`matrix_completion_problem`).
    The paper does not give the observed fraction; with 50 % (the `jacot-fig1` preset) a rank-3
    10×10 matrix has more unknowns (3·(20 − 3) = 51) than observed entries, so no α
    generalises: the default is 70 %. `width`, `depth`: the DLN (n, width, …, width, n).
    `seed`: the key of the one θ̃. `alphas`: the small scales of the saddle-to-saddle runs, at
    least 3 (two distances between consecutive α), each starting inside `escape_radius`.
    `lazy_alpha`: one large α in the lazy regime, above every α of `alphas` (None: no lazy run;
    γ = 1 − 2 log α / log w in Jacot's σ² = w^{−γ}). `t1_factor`: each flow runs to
    t1 = t1_factor/min(α, 1)^{max(L−2, 1)}. `escape_radius`: r of t_α(r).
    `tau_min` < 0 < `tau_max`, `n_tau`: the τ grid of θ_α(t_α + τ); keep `tau_max` inside the
    first escape (before the rank-1 plateau, where paths of different α separate again).
    `solver`, `rtol`, `n_save`, `rank_tol`: as for `MatrixCompletionConfig`.
    Check tolerances: `distance_ratio_max` (the largest ratio of consecutive limiting-path
    distances), `scaled_time_rtol` (extrapolated α^{L−2}t_α against T_H(θ̃)), `slope_rtol` (the
    log-log slope, or for L = 2 the slope against log(1/α)), `generalise_max` (the smallest α's
    final test loss over the zero predictor's), `lazy_min` (the lazy α's).

    Every field is checked here, before any work: a bad value raises a `ValueError` naming it.
    """

    n: int = 10
    rank: int = 3
    observed: float = 0.7
    problem_seed: int = 0
    width: int = 100
    depth: int = 4
    seed: int = 0
    alphas: tuple[float, ...] = (0.1, 0.03, 0.01, 0.003)
    lazy_alpha: float | None = 3.0
    t1_factor: float = 15.0
    escape_radius: float = 2.0
    tau_min: float = -6.0
    tau_max: float = 4.0
    n_tau: int = 121
    solver: str = "auto"
    rtol: float = 1e-6
    n_save: int = 512
    rank_tol: float = 0.1
    distance_ratio_max: float = 0.8
    scaled_time_rtol: float = 1e-3
    slope_rtol: float = 0.03
    generalise_max: float = 0.01
    lazy_min: float = 0.5

    def __post_init__(self):
        check_int("seed", self.seed, 0, MAX_SEED)
        why = "θ₀ = α·θ̃ is a small initialisation"
        alphas = check_floats("alphas", self.alphas, 0.0, 1.0, why=why)
        if len(alphas) < 3:
            raise ValueError(
                f"`alphas` needs at least 3 scales (two distances between consecutive α), got "
                f"{list(alphas)}."
            )
        object.__setattr__(self, "alphas", tuple(sorted(alphas, reverse=True)))
        # The fields shared with the main job are validated by its config (same names).
        self.base
        if self.lazy_alpha is not None:
            why = "the lazy run's scale must exceed every α of `alphas`"
            check_float("lazy_alpha", self.lazy_alpha, max(alphas), 100.0, why=why)
        tmin = check_float("tau_min", self.tau_min, -math.inf, 0.0, why="τ < 0 is the escape")
        check_float("tau_max", self.tau_max, 0.0, why="τ > 0 follows the escape")
        if not self.tau_max - tmin < 1e6:
            raise ValueError("`tau_min`/`tau_max` span more than 10⁶; use a narrower window.")
        check_int("n_tau", self.n_tau, 4, 10**4)
        for name in ("distance_ratio_max", "generalise_max"):
            check_float(name, getattr(self, name), 0.0, 1.0)
        for name in ("scaled_time_rtol", "slope_rtol", "lazy_min"):
            check_float(name, getattr(self, name), 0.0)

    @property
    def base(self) -> MatrixCompletionConfig:
        """The main job's config with these settings (validates them; gives widths and t1)."""
        return MatrixCompletionConfig(
            n=self.n, rank=self.rank, observed=self.observed, width=self.width,
            depth=self.depth, alphas=self.alphas, seeds=(self.seed,),
            problem_seed=self.problem_seed, t1_factor=self.t1_factor,
            escape_radius=self.escape_radius, rank_tol=self.rank_tol, solver=self.solver,
            rtol=self.rtol, n_save=self.n_save, greedy=False,
        )

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.n,) + (self.width,) * (self.depth - 1) + (self.n,)

    def t1(self, alpha: float) -> float:
        return self.t1_factor / min(alpha, 1.0) ** max(self.depth - 2, 1)


def _limiting_flows(problem, draw, config, event_times, solver, context):
    """θ_α(t_α + τ) per α, saved on the τ grid: one single-α sweep each (the saves differ per
    α; the compiled solve is shared, the save times are traced)."""
    taus = np.linspace(config.tau_min, config.tau_max, config.n_tau)
    sols = []
    with context.task("limiting paths", len(config.alphas)) as task:
        for i, (alpha, t_alpha) in enumerate(zip(config.alphas, event_times)):
            if not np.isfinite(t_alpha):
                raise RuntimeError(
                    f"α = {alpha:g} never reached `escape_radius` {config.escape_radius:g} "
                    "before t1; raise `t1_factor` or lower `escape_radius`."
                )
            if t_alpha + taus[0] < 0:
                raise ValueError(
                    f"`tau_min` {config.tau_min:g} reaches before t = 0 at α = {alpha:g} "
                    f"(t_α = {t_alpha:.4g}); use a larger `tau_min` or smaller `alphas`."
                )
            res = sj.sweep(
                problem, draw, float(t_alpha + taus[-1]), alphas=[alpha], seeds=[config.seed],
                solver=solver, rtol=config.rtol, saveat=t_alpha + taus,
                event=sj.EscapeRadius(config.escape_radius), stop_at_event=False,
                checkpoint=context.checkpoint(f"path-{i}"), progress=False,
            )
            sols.append(jax.tree_util.tree_map(lambda x: x[0, 0], res.solution))
            task.advance(1, α=alpha)
    return taus, sols


def _pca_projection(paths) -> np.ndarray:
    """The aligned paths (n_alpha, n_tau, P) projected on the reference's (last α's) two
    leading principal directions: the picture of Fig. 4 (middle) in two coordinates."""
    flat = np.concatenate(
        [np.asarray(w).reshape(w.shape[0], w.shape[1], -1) for w in paths], axis=-1
    )
    ref = flat[-1]
    _, _, vt = np.linalg.svd(ref - ref.mean(0), full_matrices=False)
    return flat @ vt[:2].T


def run_jacot_fig4(config: JacotFig4Config, context: RunContext | None = None) -> Outcome:
    """Loss curves for the lazy and the small α, limiting paths and escape times for one θ̃.

    Stage 1: one `sweep` over (lazy α,) + `alphas` saving A_θ(t) (train and test loss, rank)
    and t_α. Stage 2: per small α, the flow again with saves at t_α + τ (parameters), compared
    by `limiting_paths` (Procrustes-aligned, distances between consecutive α). The escape times
    go to `escape_time_scaling` with T_H(θ̃) from `blowup_time`.

    **Returns:** an `Outcome` with arrays over (alpha, time) — `ts`, `loss`, `test_loss`,
    `rank` — per α `event_time`, `scaled_time`, `gamma`, per small α and τ `path_norm` and
    `path_pca` (coords), the `distances` between consecutive α and the checks.
    """
    context = context or RunContext(False)
    start = time.perf_counter()
    problem = sj.matrix_completion_problem(
        jr.key(config.problem_seed), config.n, config.rank, config.observed
    )
    draw = _draw(config.widths)
    solver = sj.solvers.solver_from_name(config.solver)
    lazy = () if config.lazy_alpha is None else (float(config.lazy_alpha),)
    all_alphas = lazy + config.alphas
    with context.sweep("loss curves", len(all_alphas), 1) as bar:
        curves = sj.sweep(
            problem, draw, config.t1, alphas=all_alphas, seeds=[config.seed], solver=solver,
            rtol=config.rtol, n_save=config.n_save, observe=_matrix,
            event=sj.EscapeRadius(config.escape_radius), stop_at_event=False,
            checkpoint=context.checkpoint("curves"), progress=False, on_chunk=bar.on_chunk,
        )
    failures = [f"α = {a:g}: {m}" for a, _, m in curves.failures()]
    sol = curves.solution
    matrices = np.asarray(sol.params)[:, 0]
    ts, loss = np.asarray(sol.ts)[:, 0], np.asarray(sol.loss)[:, 0]
    test = _test_loss(problem, matrices)
    hidden = 1.0 - np.asarray(problem.mask)
    zero_test = float(np.sum(np.asarray(problem.target) ** 2 * hidden) / max(hidden.sum(), 1))
    ranks = np.asarray(sj.numerical_rank(matrices, config.rank_tol))
    event = np.asarray(sol.event_time)[:, 0]
    small = slice(len(lazy), None)
    taus, flows = _limiting_flows(problem, draw, config, event[small], solver, context)
    paths = sj.limiting_paths(flows, taus, alphas=config.alphas)
    g = sj.matrix_cost_gradient_at_zero(problem)
    theta = draw(jr.key(config.seed))
    with context.task("blow-up time of the H-flow", 1) as task:
        theory = escape_time_theory(config.depth, g, theta.weights)
        task.advance(1)
    law_checks, fit = scaling_checks(
        "", config.alphas, event[small], config.depth, theory, config.scaled_time_rtol,
        config.slope_rtol,
    )
    base_std = float(sj.init.entry_std(theta))
    gammas = np.asarray([sj.init.gamma_from_alpha(config.width, a, base_std) for a in all_alphas])
    a = np.asarray(all_alphas)
    if config.depth > 2:
        scaled = event * a ** (config.depth - 2)
    else:  # t_α/log(1/α) → 1/s*; undefined for a lazy α ≥ 1
        scaled = np.where(a < 1, event / np.log(1 / np.minimum(a, 0.5)), np.nan)
    arrays = {
        "alphas": Array(("alpha",), np.asarray(all_alphas), "initialisation scales α"),
        "gamma": Array(("alpha",), gammas, "Jacot's γ of σ = α·σ̃ = w^{−γ/2}"),
        "ts": Array(("alpha", "time"), ts, "save times t"),
        "loss": Array(("alpha", "time"), loss, "training loss (observed entries)"),
        "test_loss": Array(("alpha", "time"), test, "mean squared error, unobserved entries"),
        "rank": Array(("alpha", "time"), ranks, f"rank of A_θ(t), σ_i > {config.rank_tol}"),
        "event_time": Array(("alpha",), event, f"t_α: first t with ‖θ‖ = {config.escape_radius}"),
        "scaled_time": Array(
            ("alpha",), scaled, "α^{L−2}·t_α (L > 2) or t_α/log(1/α) (L = 2)"
        ),
        "taus": Array(("tau",), taus, "τ of θ_α(t_α + τ)"),
        "path_alphas": Array(("path_alpha",), paths.alphas, "α of the limiting paths"),
        "path_norm": Array(
            ("path_alpha", "tau"),
            np.sqrt(sum(np.sum(np.asarray(w) ** 2, axis=(-2, -1)) for w in paths.paths)),
            "‖θ_α(t_α + τ)‖",
        ),
        "path_pca": Array(
            ("path_alpha", "tau", "coord"), _pca_projection(paths.paths),
            "aligned θ_α(t_α + τ) on the reference path's two principal directions",
        ),
        "distances": Array(
            ("pair",), paths.distances,
            "max_τ ‖θ_{α_i} − θ_{α_{i+1}}‖ / max_τ ‖θ_ref‖ after Procrustes alignment",
        ),
    }
    values = {
        "theory": theory,
        "fit": float(fit.coefficients[0]),
        "zero_predictor_test_loss": zero_test,
        "distances": paths.distances.tolist(),
        "distance_ratios": (paths.distances[1:] / paths.distances[:-1]).tolist(),
        "rows": [
            {
                "alpha": float(a), "gamma": float(gammas[i]), "escape_time": float(event[i]),
                "scaled_time": float(scaled[i]), "final_loss": float(loss[i, -1]),
                "final_test_loss": float(test[i, -1]), "final_rank": int(ranks[i, -1]),
                "lazy": i < len(lazy),
            }
            for i, a in enumerate(all_alphas)
        ],
    }
    values["wall_time"] = time.perf_counter() - start
    outcome = Outcome(
        arrays=arrays,
        values=values,
        checks=_fig4_claims(config, values) + law_checks,
        figures={"fig4.png": lambda fig: plot_jacot_fig4(arrays, values, config, fig)},
        failures=failures,
    )
    outcome.table = jacot_fig4_table(values, config)
    return outcome


def _fig4_claims(config: JacotFig4Config, values: dict) -> list:
    """Fig. 4 left (lazy α: no low-rank structure, no generalisation; small α: the target's rank
    and near-zero test loss), Thm 2 (limiting-path distances shrink) and SPEC §8 (escape-time
    law)."""
    rows, checks = values["rows"], []
    smallest = rows[-1]
    checks.append(
        check_at_most(
            f"final test loss / zero predictor's at α = {smallest['alpha']:g}",
            smallest["final_test_loss"] / values["zero_predictor_test_loss"],
            config.generalise_max,
            note="small α: the flow goes through saddles of rank 1, 2, … and stops at a rank-"
            f"{config.rank} minimum, which the observed entries determine (Fig. 4 left)",
        )
    )
    checks.append(
        check_equal(
            f"final rank at α = {smallest['alpha']:g}", smallest["final_rank"], config.rank,
            note="the target's rank: low-rank bias of the saddle-to-saddle regime",
        )
    )
    if config.lazy_alpha is not None:
        lazy = rows[0]
        checks.append(
            check_at_least(
                f"final test loss / zero predictor's at lazy α = {lazy['alpha']:g}",
                lazy["final_test_loss"] / values["zero_predictor_test_loss"], config.lazy_min,
                note="lazy regime: the unobserved entries keep their random initial values "
                "(no better than predicting 0; Fig. 4 left, Fig. 3)",
            )
        )
        checks.append(
            check_at_least(
                f"final rank at lazy α = {lazy['alpha']:g}", lazy["final_rank"], config.rank + 1,
                note="lazy regime: the learned matrix is not low-rank",
            )
        )
    ratios = values["distance_ratios"]
    checks.append(
        check_at_most(
            "limiting paths: distance ratio between consecutive α pairs (max)", max(ratios),
            config.distance_ratio_max,
            note="Thm 2: θ_α(t_α + τ) → R I θ̲¹(τ) as α → 0, so consecutive distances shrink; "
            "each α step here divides α by ≥ 2",
        )
    )
    return checks


def jacot_fig4_table(values: dict, config: JacotFig4Config) -> str:
    """Per α: γ, t_α, α^{L−2}t_α, final losses and rank, distance to the next α."""
    p = config.depth - 2
    head = (
        f"{'α':>8} {'γ':>6} {'t_α':>11} {f'α^{p}·t_α' if p else 't_α/log(1/α)':>12} "
        f"{'train':>10} {'test':>10} {'rank':>4} {'dist→next':>10}"
    )
    lines = [head, "-" * len(head)]
    dists = values["distances"]
    n_lazy = sum(r["lazy"] for r in values["rows"])
    for i, r in enumerate(values["rows"]):
        j = i - n_lazy
        d = f"{dists[j]:10.3g}" if 0 <= j < len(dists) else " " * 10
        lines.append(
            f"{r['alpha']:>8.3g} {r['gamma']:>6.2f} {r['escape_time']:>11.5g} "
            f"{r['scaled_time']:>12.6g} {r['final_loss']:>10.3e} {r['final_test_loss']:>10.3e} "
            f"{r['final_rank']:>4d} {d}" + ("   (lazy)" if r["lazy"] else "")
        )
    what = f"T_H(θ̃) = {values['theory']:.6g}" if p else f"1/s* = {values['theory']:.6g}"
    lines.append(
        f"extrapolated: {values['fit']:.6g}; theory {what}; zero predictor's test loss "
        f"{values['zero_predictor_test_loss']:.4g}"
    )
    return "\n".join(lines)


def plot_jacot_fig4(arrays: dict, values: dict, config: JacotFig4Config, fig) -> None:
    """Fig. 4 of Jacot et al.: train (solid) and test (dashed) loss against t for every α; the
    aligned limiting paths θ_α(t_α + τ) in the reference path's two principal coordinates; the
    distances between consecutive α and |α^{L−2}t_α − T_H| against α."""
    get = {k: a.values for k, a in arrays.items()}
    fig.set_size_inches(15, 4.4)
    axes = fig.subplots(1, 3)
    alphas = get["alphas"]
    colors = colormap("viridis")(np.linspace(0, 0.85, len(alphas)))
    for i, a in enumerate(alphas):
        label = f"α = {a:g} (γ = {get['gamma'][i]:.2f})"
        keep = get["ts"][i] > 0
        t = get["ts"][i][keep]
        axes[0].loglog(t, get["loss"][i][keep], color=colors[i], label=label)
        axes[0].loglog(t, get["test_loss"][i][keep], color=colors[i], ls="--")
    axes[0].axhline(values["zero_predictor_test_loss"], color="0.5", ls=":", lw=1,
                    label="zero predictor (test)")
    axes[0].set_ylim(1e-10, None)
    axes[0].set_xlabel("t")
    axes[0].set_title("train (—) and test (--) loss")
    axes[0].legend(fontsize=7)
    n_lazy = len(alphas) - len(get["path_alphas"])
    for i, a in enumerate(get["path_alphas"]):
        xy = get["path_pca"][i]
        axes[1].plot(xy[:, 0], xy[:, 1], color=colors[n_lazy + i], label=f"α = {a:g}")
        axes[1].plot(xy[0, 0], xy[0, 1], "+", color=colors[n_lazy + i])
    axes[1].set_xlabel("PC 1")
    axes[1].set_ylabel("PC 2")
    axes[1].set_title(f"θ_α(t_α + τ), τ ∈ [{config.tau_min:g}, {config.tau_max:g}] (+ = start)")
    axes[1].legend(fontsize=7)
    pa = get["path_alphas"]
    axes[2].loglog(pa[:-1], get["distances"], "o-", label="limiting-path distance to next α")
    if config.depth > 2:
        gap = np.abs(get["scaled_time"][n_lazy:] - values["theory"]) / values["theory"]
        axes[2].loglog(pa, gap, "s--", label=f"|α^{config.depth - 2}t_α − T_H| / T_H")
    axes[2].set_xlabel("α")
    axes[2].set_title("convergence as α → 0 (Thm 2, Lemma 13)")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"Jacot et al. Fig. 4: DLN (L = {config.depth}, w = {config.width}) on {config.n}×"
        f"{config.n} rank-{config.rank} completion, one θ̃"
    )


register(
    "jacot-fig4",
    JacotFig4Config,
    "lazy vs saddle-to-saddle α for one θ̃, limiting paths θ_α(t_α + τ) and α^{L−2}t_α → T_H "
    "(Jacot et al. Fig. 4, Thm 2)",
)(run_jacot_fig4)


# --------------------------------------------------------------------------------------------
# jacot-escape

ESCAPE_DEPTHS = tuple(int(name[3:]) for name in ESCAPE_PATH_PRESETS)


@dataclasses.dataclass(frozen=True)
class JacotEscapeConfig:
    """Settings of `run_jacot_escape` (Jacot et al. Thm 2, Thm 5 / Thm 22; SPEC §5, §7, §8).

    `depths`: the DLN depths, each one of the `saddlejax escape-path` presets dln2, dln3, dln4
    (4×4 rank-2 completion, 75 % observed, hidden width `hidden`). Per depth the preset's
    settings are used, with `n`, `r_min` (None: the preset's) and `seed` overriding them, and
    the first `n_alphas` of its three α (largest first; 0: no simulations, no escape-time law).
    `restarts`: random starts of the generic sphere solver for s*.
    `fig1_depths`, `fig1_width`: also run `saddlejax escape`'s `run_escape` on Jacot's Fig. 1
    problem (10×10 rank 3, 50 % observed, hidden width `fig1_width`) at these depths (empty:
    skipped): the generic Taylor-order search and sphere solver against the closed form there.
    Check tolerances: `speed_rtol` (s* against the closed form), `rate_rtol` (fitted closeness
    rate against the theory's), `round_trip_max`, `forward_round_trip_max` (Ψ⁻¹∘Ψ on one grid,
    and through the engine's forward flow), `scaling_rtol` (α^{L−2}t_α extrapolated against
    T_H(θ̃)), `slope_rtol` (log-log slope against −(L − 2), or for L = 2 the slope against
    log(1/α) against 1/s*).

    Every field is checked here, before any work: a bad value raises a `ValueError` naming it.
    """

    depths: tuple[int, ...] = (2, 3, 4)
    hidden: int = 3
    seed: int = 0
    n: int | None = None
    r_min: float | None = None
    n_alphas: int = 3
    restarts: int = 8
    fig1_depths: tuple[int, ...] = (2, 3, 4)
    fig1_width: int = 100
    speed_rtol: float = 1e-8
    rate_rtol: float = 0.01
    round_trip_max: float = 1e-9
    forward_round_trip_max: float = 1e-5
    scaling_rtol: float = 1e-3
    slope_rtol: float = 0.03

    def __post_init__(self):
        depths = self._depths("depths", self.depths, ESCAPE_DEPTHS, allow_empty=False)
        object.__setattr__(self, "depths", depths)
        check_int("n_alphas", self.n_alphas, 0, 3, why="each preset has three α")
        if self.n_alphas == 1:
            raise ValueError(
                "`n_alphas` must be 0 (no simulations) or 2–3: the escape-time law and the "
                "falling distance compare at least two α; got 1."
            )
        for depth in depths:  # the escape-path fields, validated by its own config
            self.path_config(depth)
        check_int("restarts", self.restarts, 1, 10**3)
        fig1 = self._depths("fig1_depths", self.fig1_depths, range(2, 9), allow_empty=True)
        object.__setattr__(self, "fig1_depths", fig1)
        for depth in fig1:
            EscapeConfig(model="dln", problem="matrix_completion", depth=depth,
                         width=check_int("fig1_width", self.fig1_width, 1),
                         restarts=self.restarts, seed=self.seed)
        for name in ("speed_rtol", "rate_rtol", "round_trip_max", "forward_round_trip_max",
                     "scaling_rtol", "slope_rtol"):
            check_float(name, getattr(self, name), 0.0)

    @staticmethod
    def _depths(name, values, allowed, *, allow_empty) -> tuple[int, ...]:
        if isinstance(values, str) or not hasattr(values, "__iter__"):
            raise ValueError(f"`{name}` must be a list of depths, got {values!r}.")
        allowed = tuple(allowed)
        out = tuple(
            check_int(name, d, min(allowed), max(allowed), why=f"one of {list(allowed)}")
            for d in values
        )
        if (not out and not allow_empty) or len(set(out)) != len(out):
            raise ValueError(f"`{name}` must list {'' if allow_empty else 'at least one '}"
                             f"depth, each once, got {list(out)}.")
        return out

    def path_config(self, depth: int) -> EscapePathConfig:
        """The `EscapePathConfig` of `depth`: its preset with this config's overrides."""
        alphas = ESCAPE_PATH_PRESETS[f"dln{depth}"]["alphas"][: self.n_alphas]
        return EscapePathConfig.preset(
            f"dln{depth}", hidden=self.hidden, seed=self.seed, n=self.n, r_min=self.r_min,
            alphas=alphas,
        )


def _sphere_solver(path_config: EscapePathConfig, restarts: int) -> dict:
    """s* and A_ρ* = W_L⋯W_1 of the generic sphere solver (`optimal_escape`, random restarts,
    no closed form used) on H = Tr[GᵀA_θ] of the escape-path problem, beside the closed forms
    s* = L^{−(L−2)/2}σ₁(G) and A_ρ* = −L^{−L/2}u₁v₁ᵀ (SPEC §5)."""
    widths, depth = path_config.widths, path_config.depth
    problem = sj.matrix_completion_problem(jr.key(path_config.seed), n=4, rank=2, observed=0.75)
    g = sj.matrix_cost_gradient_at_zero(problem)
    like = tuple(jnp.zeros((o, i)) for i, o in zip(widths[:-1], widths[1:]))
    esc = sj.optimal_escape(
        sj.dln_taylor_term(g), depth, like, key=jr.key(path_config.seed), n_restarts=restarts,
        invariant=sj.dln_invariant,
    )
    closed = sj.dln_escape_direction(g, widths)
    a_found = np.asarray(sj.dln_invariant(esc.direction))
    a_closed = np.asarray(sj.dln_invariant(closed.weights))
    return {
        "s_star": float(esc.speed),
        "closed_form_s_star": float(sj.dln_optimal_speed(g, depth)),
        "kkt_residual": float(esc.kkt_residual),
        "converged": bool(esc.result == sj.RESULTS.successful),
        "matrix_error": float(np.linalg.norm(a_found - a_closed) / np.linalg.norm(a_closed)),
        "g": g,
    }


def run_jacot_escape(config: JacotEscapeConfig, context: RunContext | None = None) -> Outcome:
    """Per depth: s* by the sphere solver against the closed form, `run_escape_path` (Φ, Ψ, Ψ⁻¹
    and the simulations), and the escape-time law on the simulations' t_α; optionally
    `run_escape` on the Fig. 1 problem.

    **Returns:** an `Outcome`: per depth the contraction ratios of Ψ and Ψ⁻¹ with the bound,
    ‖x₀(t)‖ and ‖x₀(t) − Ψ(x₀)(t)‖ on the path's grid, per α the simulation distance and t_α,
    the summaries in `values["depths"]` and the checks.
    """
    context = context or RunContext(False)
    start = time.perf_counter()
    arrays, rows, checks, curves = {}, [], [], {}
    with context.task("escape paths (Φ, Ψ, simulations)", len(config.depths)) as task:
        for depth in config.depths:
            pc = config.path_config(depth)
            sphere = _sphere_solver(pc, config.restarts)
            g = sphere.pop("g")
            run = run_escape_path(pc)
            s = run.summary
            row = {"depth": depth, **sphere, **{k: v for k, v in s.items() if k != "widths"}}
            row["exponent"] = float(run.check.image.exponent)
            row["bound"] = contraction_bound(depth, s["speed"], s["optimal_speed"],
                                             row["exponent"])
            law = []
            if len(s["alphas"]) >= 2:
                theta = sj.dln_image_init(pc.widths, key=jr.key(pc.seed + 1))
                row["theory_escape"] = escape_time_theory(depth, g, theta)
                law, fit = scaling_checks(
                    f"L = {depth}: ", s["alphas"], s["escape_times"], depth,
                    row["theory_escape"], config.scaling_rtol, config.slope_rtol,
                )
                row["fit_escape"] = float(fit.coefficients[0])
                row["loglog_slope"] = loglog_slope(s["alphas"], s["escape_times"])
            rows.append(row)
            checks.extend(_escape_claims(config, row) + law)
            x0, y = run.x0, run.check.image.path
            curves[depth] = {
                "t": np.asarray(x0.ts) if depth == 2 else np.asarray(x0.horizon - x0.ts),
                "x0_norm": np.asarray(x0.norms()),
                "closeness": np.asarray(sj.closeness(x0, y)),
            }
            task.advance(1, L=depth, s=s["speed"])
    fig1 = []
    if config.fig1_depths:
        with context.task("s* on the Fig. 1 problem (run_escape)", len(config.fig1_depths)) as t:
            for depth in config.fig1_depths:
                out = run_escape(EscapeConfig(
                    model="dln", problem="matrix_completion", depth=depth,
                    width=config.fig1_width, restarts=config.restarts, seed=config.seed,
                ))
                fig1.append(out)
                checks.extend(_fig1_claims(config, out))
                t.advance(1, L=depth)
    for row in rows:
        L = row["depth"]
        ratios = np.asarray(row["contraction_ratios"], float)
        inverse = np.asarray(row["inverse_contraction_ratios"], float)
        arrays[f"ratios_L{L}"] = Array(("iteration",), ratios, f"L = {L}: Ψ contraction ratios")
        arrays[f"inverse_ratios_L{L}"] = Array(
            ("iteration",), inverse, f"L = {L}: Ψ⁻¹ contraction ratios"
        )
        c = curves[L]
        arrays[f"path_time_L{L}"] = Array(
            ("grid",), c["t"], f"L = {L}: t (L = 2) or T − t (L > 2) on the path's grid"
        )
        arrays[f"x0_norm_L{L}"] = Array(("grid",), c["x0_norm"], f"L = {L}: ‖x₀(t)‖")
        arrays[f"closeness_L{L}"] = Array(("grid",), c["closeness"], f"L = {L}: ‖x₀ − Ψ(x₀)‖")
        if row["alphas"]:
            arrays[f"alphas_L{L}"] = Array(("alpha",), np.asarray(row["alphas"]), "α")
            arrays[f"simulation_distance_L{L}"] = Array(
                ("alpha",), np.asarray(row["simulation_distance"], float),
                f"L = {L}: max_t ‖Rθ_α(t_α + t) − Ψ(x₀)(t_Ψ + t)‖ / r",
            )
            arrays[f"escape_time_L{L}"] = Array(
                ("alpha",), np.asarray(row["escape_times"], float), f"L = {L}: t_α(r)"
            )
    values = {
        "depths": [_plain_row(r) for r in rows],
        "fig1": [
            {k: out[k] for k in ("k", "m", "s_star", "closed_form_s_star", "s_star_rel_diff",
                                 "kkt_residual", "converged", "seconds")}
            | {"depth": out["config"]["depth"], "width": out["config"]["width"]}
            for out in fig1
        ],
        "wall_time": time.perf_counter() - start,
    }
    outcome = Outcome(
        arrays=arrays,
        values=values,
        checks=checks,
        figures={"escape.png": lambda fig: plot_jacot_escape(arrays, values, fig)},
    )
    outcome.table = jacot_escape_table(values)
    return outcome


def _plain_row(row: dict) -> dict:
    return {k: v for k, v in row.items() if not isinstance(v, (np.ndarray, jax.Array))}


def _escape_claims(config: JacotEscapeConfig, row: dict) -> list:
    """SPEC §5 (closed form), Thm 5 / Thm 22 (SPEC §7) and SPEC §8 for one depth."""
    L, label = row["depth"], f"L = {row['depth']}: "
    checks = [
        check_close(
            f"{label}s* (sphere solver) vs L^{{−(L−2)/2}}σ₁(G)", row["s_star"],
            row["closed_form_s_star"], config.speed_rtol,
            note="SPEC §5; random restarts + Riemannian Newton reach a KKT residual ~1e−15, "
            "and s* is quadratic in the direction's error",
        ),
        check_at_most(
            f"{label}‖A_ρ* − (−L^{{−L/2}}u₁v₁ᵀ)‖ / ‖A‖ (sphere solver)", row["matrix_error"],
            1e-6, note="ρ* is the closed form up to rotation: its end-to-end matrix is unique "
            "when σ₁(G) is simple (the direction error is ~ KKT residual / gap)",
        ),
        check_equal(
            f"{label}(k, m) of the generic Taylor-term search", row["taylor_term_orders"],
            [L, 2 * L], note="the origin of a DLN is (L, 2L)-approximately homogeneous (SPEC §4)",
        ),
        check_equal(
            f"{label}Ψ(x₀) found (fixed point of Φ_C)", row["converged"], True,
            note=f"s = {row['speed']:.4g} above the theorem's threshold "
            f"{row['threshold_speed']:.4g}",
        ),
        check_at_most(
            f"{label}contraction ratio of Φ_C (max over iterations)",
            max(row["contraction_ratios"]), row["bound"],
            note="Lemma 24/26 leading-order bound (k = 2: s*/β; k > 2: (k−1)s*/(α s (k−2))) in "
            f"the weighted norm of exponent {row['exponent']:.4g} (SPEC §7)",
        ),
        check_at_most(
            f"{label}contraction ratio of Φ_H (Ψ⁻¹, max)", max(row["inverse_contraction_ratios"]),
            row["bound"], note="the same bound: H is the leading part of C (Thm 22)",
        ),
        check_at_most(
            f"{label}round trip max_t ‖Ψ⁻¹(Ψ(x₀)) − x₀‖/‖x₀‖", row["round_trip_error"],
            config.round_trip_max,
            note="on one grid the discrete Ψ⁻¹∘Ψ is the identity up to the iterations' "
            "stopping tolerance (≲ 1e−11)",
        ),
        check_at_most(
            f"{label}round trip through the engine's forward flow", row["round_trip_error_forward"],
            config.forward_round_trip_max,
            note="Ψ(x₀) replaced by the adaptive flow of C from x₀(t_min): limited by the "
            "4th-order quadrature of Φ on the path's grid",
        ),
        check_close(
            f"{label}closeness rate of ‖x₀ − Ψ(x₀)‖ (fitted)", row["fitted_rate"],
            row["theory_rate"], config.rate_rtol,
            note="Thm 22: O(e^{(m−1)st}) (k = 2) or O((T−t)^{−(m−k+1)/(k−2)}) (k > 2); a "
            "log-log fit over the small-‖x₀‖ part of the grid",
        ),
        check_close(
            f"{label}escape speed of Ψ(x₀) (fitted)", row["fitted_speed"], row["speed"], 1e-3,
            note="Thm 5: Ψ preserves the escape speed (fit of ‖Ψ(x₀)(t)‖ near the origin)",
        ),
    ]
    dist = np.asarray(row["simulation_distance"], float)
    if dist.size >= 2:
        checks.append(
            check_at_most(
                f"{label}distance to the simulation: ratio between consecutive α (max)",
                float(np.max(dist[1:] / dist[:-1])), 1.0,
                note="Thm 2: θ_α(t_α + ·) → R Ψ(x₀*) as α → 0; measured ≈ 0.5 per decade (L = "
                "2, 3), 0.6 per half decade (L = 4)",
            )
        )
    return checks


def _fig1_claims(config: JacotEscapeConfig, out: dict) -> list:
    L, w = out["config"]["depth"], out["config"]["width"]
    label = f"Fig. 1 problem, L = {L}, w = {w}: "
    return [
        check_equal(f"{label}(k, m) (generic Taylor search)", [out["k"], out["m"]], [L, 2 * L],
                    note="SPEC §4"),
        check_close(
            f"{label}s* (run_escape) vs L^{{−(L−2)/2}}σ₁(G)", out["s_star"],
            out["closed_form_s_star"], config.speed_rtol,
            note="SPEC §5: the generic Taylor term and sphere solver against the closed form",
        ),
    ]


def jacot_escape_table(values: dict) -> str:
    """One row per depth: s*, closed form, contraction ratio and bound, round trips, rates,
    simulation distances, and the escape-time law."""
    head = (
        f"{'L':>2} {'s*':>10} {'closed form':>11} {'ratio':>6} {'bound':>6} {'Ψ⁻¹∘Ψ':>8} "
        f"{'fwd':>8} {'rate':>8} {'theory':>8} {'sim. distance per α':>22} {'law':>9} "
        f"{'theory':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in values["depths"]:
        dist = ", ".join(f"{d:.3g}" for d in r["simulation_distance"])
        law = r.get("fit_escape", float("nan"))
        theory = r.get("theory_escape", float("nan"))
        lines.append(
            f"{r['depth']:>2} {r['s_star']:>10.6g} {r['closed_form_s_star']:>11.6g} "
            f"{max(r['contraction_ratios']):>6.3f} {r['bound']:>6.3f} "
            f"{r['round_trip_error']:>8.1e} {r['round_trip_error_forward']:>8.1e} "
            f"{r['fitted_rate']:>8.5g} {r['theory_rate']:>8.5g} {dist:>22} {law:>9.6g} "
            f"{theory:>9.6g}"
        )
    lines.append("law: slope of t_α vs log(1/α) (L = 2, theory 1/s*) or lim α^{L−2}t_α "
                 "(L > 2, theory T_H(θ̃))")
    for r in values["fig1"]:
        lines.append(
            f"Fig. 1 problem, L = {r['depth']}, w = {r['width']}: (k, m) = ({r['k']}, {r['m']}), "
            f"s* = {r['s_star']:.10g} vs closed form {r['closed_form_s_star']:.10g} "
            f"(rel. diff {r['s_star_rel_diff']:.1e})"
        )
    return "\n".join(lines)


def plot_jacot_escape(arrays: dict, values: dict, fig) -> None:
    """Per depth: contraction ratios of Ψ and Ψ⁻¹ against the bound; ‖x₀ − Ψ(x₀)‖ against ‖x₀‖
    (slope = rate/s for k = 2, (m−k+1) for k > 2 in these axes); the distance to the
    simulations against α; α^{L−2}t_α/T_H (L > 2) or s*t_α/log(1/α) (L = 2) against α."""
    get = {k: a.values for k, a in arrays.items()}
    fig.set_size_inches(16, 4.2)
    axes = fig.subplots(1, 4)
    colors = colormap("tab10")(np.arange(10))
    for i, r in enumerate(values["depths"]):
        L, c = r["depth"], colors[i % 10]
        ratios = get[f"ratios_L{L}"]
        axes[0].plot(np.arange(1, ratios.size + 1), ratios, "o-", ms=3, color=c, label=f"L = {L}")
        inverse = get[f"inverse_ratios_L{L}"]
        axes[0].plot(np.arange(1, inverse.size + 1), inverse, "--", color=c)
        axes[0].axhline(r["bound"], color=c, ls=":", lw=1)
        norms, close = get[f"x0_norm_L{L}"], get[f"closeness_L{L}"]
        good = close > 0
        axes[1].loglog(norms[good], close[good], color=c, label=f"L = {L}")
        mid = int(np.sum(good)) // 2  # the tail's closure pins the first points to 0
        ref = close[good][mid] * (norms[good] / norms[good][mid]) ** (L + 1)
        axes[1].loglog(norms[good], ref, ":", color=c)
        if f"alphas_L{L}" in get:
            a = get[f"alphas_L{L}"]
            axes[2].loglog(a, get[f"simulation_distance_L{L}"], "o-", color=c, label=f"L = {L}")
            t = get[f"escape_time_L{L}"]
            if L == 2:
                y = r["s_star"] * t / np.log(1 / a)
            else:
                y = a ** (L - 2) * t / r["theory_escape"]
            axes[3].semilogx(a, y, "o-", color=c, label=f"L = {L}")
    axes[0].set_title("contraction: Ψ —, Ψ⁻¹ --, bound ⋯")
    axes[0].set_xlabel("iteration n")
    axes[1].set_title("‖x₀ − Ψ(x₀)‖ (⋯ ∝ ‖x₀‖^{L+1}, Thm 5)")
    axes[1].set_xlabel("‖x₀(t)‖")
    axes[2].set_title("distance to θ_α(t_α + ·) (Thm 2)")
    axes[2].set_xlabel("α")
    axes[3].axhline(1.0, color="k", lw=0.5)
    axes[3].set_title("normalised escape time (→ 1)")
    axes[3].set_ylabel("s*t_α/log(1/α) (L = 2), α^{L−2}t_α/T_H (L > 2)")
    axes[3].set_xlabel("α")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("First escape of deep linear networks: Jacot et al. Thm 2, Thm 5, SPEC §8")


register(
    "jacot-escape",
    JacotEscapeConfig,
    "optimal escape speed vs closed form, Φ/Ψ of Thm 5, escape-time law and distance to "
    "simulations per depth (Jacot et al. Thm 2, 5)",
)(run_jacot_escape)
