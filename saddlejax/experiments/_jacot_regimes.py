"""The training regimes of deep linear networks: NTK, mean-field and saddle-to-saddle.

Jacot, Ged, Şimşek, Hongler & Gabriel, *Saddle-to-Saddle Dynamics in Deep Linear Networks*,
Thm 1, §4, §6 and App. A (SPEC §1, §8, §11). Every entry of θ₀ is drawn N(0, σ²) with
σ² = w^{−γ} (w the hidden width): γ < 1 is the NTK (lazy) regime — θ₀ near a global minimum,
the NTK nearly fixed, no low-rank bias —, γ = 1 the mean-field (μP) limit, γ > 1 the
saddle-to-saddle regime — θ₀ near the saddle at the origin, plateaus that lengthen with w, the
rank learned one by one. θ₀ = α·θ̃ with θ̃ of unit-variance entries, so α = σ = w^{−γ/2}
(`saddlejax.init.alpha_from_gamma`), and the flow is integrated by `saddlejax.sweep`.

Three experiments are registered here:

- "training-regimes" (Fig. 2 and 5; preset `jacot-fig2`): the 5×5 teacher 10·diag(1, …, 5),
  L = 4, several widths per regime: the time of the first loss drop against w, the NTK's change,
  the rank, the nuclear norm and ‖∇L‖ along training, and the distances of Thm 1.
- "completion-vs-gamma" (Fig. 3; preset `jacot-fig3`): test error and rank at convergence
  against γ for 30×30 rank-1 matrix completion.
- "noisy-teacher" (Fig. 6; preset `jacot-fig6`): a rank-3 teacher with label noise, L = 2 and
  L = 4, NTK against saddle-to-saddle initialisation: incremental rank, the low-rank solution
  the saddle-to-saddle path passes through, ‖∇L‖ dips at saddles, sharper escapes when deep.

The horizons come from the theory (`time_scale`): the flow escapes the origin in a time
∝ α^{−(L−2)} (L > 2) or ∝ log(1/α) (L = 2; SPEC §8) at the per-layer scale σ√w of the draw,
i.e. ∝ w^{(γ−1)(L−2)/2}, or ∝ (γ−1)·log w; the lazy regime (γ < 1) trains faster still.
"""

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import saddlejax as sj

from ..analysis._crossings import first_crossing
from ._checks import MAX_SEED, check_choice, check_float, check_floats, check_int, check_params
from ._config import register
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

# ‖∇L‖ below this fraction of its largest value is the approach to a minimum (and then
# round-off), where its wiggles say nothing about saddles.
_GRAD_FLOOR = 1e-6


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def regime(gamma: float) -> str:
    """The regime of Jacot et al. Thm 1 for σ² = w^{−γ}: "NTK" (γ < 1), "mean-field" (γ = 1)
    or "saddle-to-saddle" (γ > 1)."""
    return "NTK" if gamma < 1 else "mean-field" if gamma == 1 else "saddle-to-saddle"


def time_scale(gamma: float, width: int, depth: int) -> float:
    """How long a DLN with σ² = w^{−γ} takes to train, as a function of the width (1 at γ = 1).

    The escape time from the origin is ∝ α^{−(L−2)} for L > 2 and ∝ log(1/α) for L = 2
    (SPEC §8), here at the per-layer scale σ√w = w^{−(γ−1)/2} of the draw along an escape
    direction: w^{(γ−1)(L−2)/2} for L > 2, 1 + (γ−1)·ln w for L = 2 and γ > 1. For γ < 1 the
    lazy regime trains faster, in a time ∝ 1/E[Θ] ∝ w^{−(1−γ)(L−1)} (Jacot et al. §4), but
    only once the NTK barely moves; at the widths a CPU reaches it still changes by ≫ 100 %
    on these targets, so the slower scale serves as the horizon for every γ (1 for L = 2 and
    γ ≤ 1).
    """
    if depth == 2:
        return 1.0 + max(gamma - 1, 0.0) * math.log(width)
    return float(width) ** ((gamma - 1) * (depth - 2) / 2)


def drop_time_exponent(gamma: float, depth: int) -> float:
    """The exponent e in (time of the first loss drop) ∝ w^e as w → ∞: −(1−γ)(L−1) for γ < 1
    (1/E[Θ], Jacot et al. §4), (γ−1)(L−2)/2 for γ ≥ 1 (the escape time of `time_scale`; 0 for
    L = 2 up to a logarithm)."""
    if gamma < 1:
        return (gamma - 1) * (depth - 1)
    return (gamma - 1) * (depth - 2) / 2


@functools.cache
def _draw(widths: tuple[int, ...]):
    """θ̃ ↦ a `DeepLinear` with N(0, 1) entries, so that α = σ = w^{−γ/2}. One function per
    widths, so that repeated sweeps reuse their compiled solve."""
    return lambda key: sj.nn.DeepLinear(widths, key=key, std=1.0)


def _matrix(model):
    return model.matrix()


def _alpha(width: int, gamma: float) -> float:
    return sj.init.alpha_from_gamma(width, gamma, 1.0)


def _check_gammas(name: str, gammas, depth: int) -> tuple[float, ...]:
    """Distinct γ ≥ 1 − 1/L (smaller γ makes A_θ₀ explode with the width, Jacot et al. §3)."""
    low = 1 - 1 / depth
    gammas = check_floats(name, gammas, -math.inf, math.inf)
    if not gammas:
        raise ValueError(f"`{name}` is empty; give at least one γ.")
    for g in gammas:
        if g < low:
            raise ValueError(
                f"`{name}` must be ≥ 1 − 1/L = {low:g} (a smaller γ makes A_θ₀ explode with "
                f"the width; Jacot et al. §3), got {g:g}."
            )
    return gammas


def _check_seeds(seeds) -> tuple[int, ...]:
    if isinstance(seeds, str) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"`seeds` must be a list of integers, got {seeds!r}.")
    seeds = tuple(check_int("seeds", s, 0, MAX_SEED) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must list at least one seed, each once, got {seeds}.")
    return seeds


def _check_ints(name: str, values, low: int) -> tuple[int, ...]:
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise ValueError(f"`{name}` must be a list of integers, got {values!r}.")
    out = tuple(check_int(name, v, low) for v in values)
    if not out:
        raise ValueError(f"`{name}` is empty; give at least one value.")
    return out


def _check_scales(widths, depth, gammas, name="widths"):
    """Every width's α = w^{−γ/2} must leave a flow speed ∝ α^{L−1} far from float64 underflow,
    as in `MatrixCompletionConfig`."""
    for w in widths:
        for g in gammas:
            if (depth - 1) * (g / 2) * math.log10(w) > 200:
                raise ValueError(
                    f"`{name}` {w} with γ = {g:g} gives α = w^(−γ/2) = {w ** (-g / 2):.3g}, "
                    f"too small for depth {depth}: the flow leaves α·θ̃ at a speed ∝ "
                    "α^(L−1), below float64's range; use a smaller width or γ."
                )


def _check_common(config):
    solver = config.solver.lower() if isinstance(config.solver, str) else config.solver
    check_choice("solver", solver, sj.solvers.SOLVER_NAMES)
    why = "float64 round-off cannot meet an rtol below 1e-14"
    check_float("rtol", config.rtol, 1e-14, 1.0, low_open=False, why=why)
    check_int("n_save", config.n_save, 8, 10**5)
    check_float("rank_tol", config.rank_tol, 0.0)
    check_int("problem_seed", config.problem_seed, 0, MAX_SEED)
    object.__setattr__(config, "seeds", _check_seeds(config.seeds))


def _flow_options(config, t1s, observe=_matrix, **extra) -> dict:
    """The options every sweep here shares. `dt0`: a first step far below every horizon; with
    the controller's own first step (diffrax's initial-step heuristic) the solve of L = 4,
    w = 10, γ = 0.75, seed 0 on the diagonal teacher ended at its first step with a non-finite
    state (measured), and the controller grows a small step up to tenfold per step."""
    return dict(
        solver=sj.solvers.solver_from_name(config.solver),
        rtol=config.rtol,
        observe=observe,
        dt0=1e-6 * min(t1s),
        progress=False,
        # On CPUs seeds are looped over the host devices (one per device and chunk, the unit of
        # checkpointing); on accelerators an α's seeds form one vmapped batch.
        chunk_size=jax.local_device_count() if jax.default_backend() == "cpu" else None,
        **extra,
    )


def _slope(x, y) -> float:
    """Least-squares slope of log y against log x (NaN when undefined)."""
    x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if x.size < 2 or not np.all(np.isfinite(y)):
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def crossing_time(ts: np.ndarray, loss: np.ndarray, level: float) -> np.ndarray:
    """The first time the loss falls to `level`, from the saved curve: log L interpolated
    linearly in log t between the last save above and the first at or below (+inf if never).
    Batched over leading axes. On the default save grid (geometric over six decades) it agrees
    with a root-found `LossBelow` event to 0.2 % (median) and 7 % (worst: a saddle-to-saddle
    drop, steep between two saves) on the Fig. 2 flows (measured), at no compile cost;
    `FlowSolution.time_below` is the save time itself."""
    ts, loss = np.asarray(ts, float), np.asarray(loss, float)
    out = np.full(loss.shape[:-1], np.inf)
    for idx in np.ndindex(*loss.shape[:-1]):
        t, _ = first_crossing(ts[idx], loss[idx], level, log_values=True, log_time=True)
        if np.isfinite(t):
            out[idx] = t
    return out


def _incremental(ranks: np.ndarray) -> np.ndarray:
    """Per trajectory (last axis time): the rank never decreases and grows by at most one
    between save points (Conjecture 3: each saddle adds one direction)."""
    steps = np.diff(ranks, axis=-1)
    return np.all((steps >= 0) & (steps <= 1), axis=-1)


def _useful(grad_norm: np.ndarray) -> np.ndarray:
    """Save points where ‖∇L‖ is above `_GRAD_FLOOR` × its largest value (and finite)."""
    g = np.where(np.isfinite(grad_norm), grad_norm, 0.0)
    return g > _GRAD_FLOOR * g.max()


def grad_dips(grad_norm: np.ndarray, factor: float = 10.0) -> int:
    """Number of dips of ‖∇L‖ along one trajectory: local minima at least `factor` below the
    lower of the maxima around them (scipy's peak prominence on log ‖∇L‖), above the floor of
    `_GRAD_FLOOR`. A dip towards 0 and back marks a saddle visited (Jacot et al. Fig. 5, 6)."""
    g = np.asarray(grad_norm, float)
    keep = _useful(g)
    if keep.sum() < 3:
        return 0
    from scipy.signal import find_peaks  # scipy's modules are imported where used (start-up)

    log_g = np.log(g[keep])
    dips, _ = find_peaks(-log_g, prominence=math.log(factor))
    return int(len(dips))


def grad_rebound(grad_norm: np.ndarray) -> float:
    """The largest relative rise of ‖∇L‖ above its running minimum, max_t ‖∇L(t)‖ /
    min_{s≤t} ‖∇L(s)‖ − 1, above the floor of `_GRAD_FLOOR`: 0 for a monotone decrease (the NTK
    regime, Jacot et al. Fig. 6), ≥ 9 when the flow leaves a saddle it approached (a dip)."""
    g = np.asarray(grad_norm, float)
    g = g[_useful(g)]
    if g.size < 2:
        return 0.0
    return float(np.max(g / np.minimum.accumulate(g)) - 1.0)


def peak_width(ts: np.ndarray, grad_norm: np.ndarray) -> float:
    """Full width at half maximum, in decades of t, of the highest peak of ‖∇L‖ at t > 0 (an
    escape from a saddle): how sharp an escape is (Jacot et al. Fig. 6). NaN without an
    interior peak."""
    ts, g = np.asarray(ts, float), np.asarray(grad_norm, float)
    inside = ts > 0
    ts, g = ts[inside], g[inside]
    from scipy.signal import find_peaks  # scipy's modules are imported where used (start-up)

    peaks, _ = find_peaks(np.log(np.maximum(g, 1e-300)), prominence=math.log(2))
    if not peaks.size:
        return float("nan")
    p = peaks[np.argmax(g[peaks])]
    half = g[p] / 2
    lo = p
    while lo > 0 and g[lo] > half:
        lo -= 1
    hi = p
    while hi < g.size - 1 and g[hi] > half:
        hi += 1
    if g[lo] > half or g[hi] > half:  # the peak runs into an end of the grid
        return float("nan")
    return float(np.log10(ts[hi] / ts[lo]))


def _failures(result) -> list[str]:
    return [f"α = {a:.4g}, seed {s}: {m}" for a, s, m in result.failures()]


def _log_time_axis(ax):
    ax.set_xscale("log")
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------------------------------------
# Fig. 2 and 5: the three regimes against the width
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegimesConfig:
    """Settings of "training-regimes" (Jacot et al. Fig. 2 and 5, Thm 1; SPEC §11).

    `depth`: L ≥ 3 (for L = 2 the plateau length grows only like log w). `widths`: the hidden
    widths w of the flows, distinct, ≥ 2, at most `MAX_PARAMS` weights each. `gammas`:
    σ² = w^{−γ}, distinct, ≥ 1 − 1/L; each is classified by `regime` (< 1 NTK, = 1 mean-field,
    > 1 saddle-to-saddle) and checked against that regime's claims. `seeds`: keys of θ̃.
    `distance_widths`: the widths at which the quantities of Thm 1 that need no flow are
    measured at θ₀ (the bounds on d_s and d_m, Θ(θ₀) against E[Θ]); draws are cheap, so these
    reach w = 1000 on any machine. `n_samples`, `problem_seed`: the Gaussian inputs of the
    teacher 10·diag(1, …, 5) (`diagonal_teacher_problem`). `t1_factor`: the flow runs to
    t1 = t1_factor·`time_scale`(γ, w, L); 0.25 brings every regime below 10⁻³·C(0) (the last of
    the five directions escapes ≈ 5× after the first, σ₁/σ₅ = 5). `rank_tol`: singular-value
    threshold of the rank (0.1, App. A). `solver`, `rtol`: as in `MatrixCompletionConfig`.
    `n_save`: saved times (the default grid, half geometric over six decades, half uniform).
    `ratio_atol`: tolerance, in decades, of the drop time's growth from the smallest width
    against (w/w_min)^e (e from `drop_time_exponent`; finite-width corrections at w = 10 and
    the spread over seeds are ≈ 0.05 decade). `root_find`: locate the drop time with a
    `LossBelow` event (exact; it adds to the solver's compile time, ≈ 2 s for Tsit5 and 11 s
    for the auto solver here) or interpolate it on the saved curve (`crossing_time`, within
    0.03 decade).
    """

    depth: int = 4
    widths: tuple[int, ...] = (10, 100, 1000)
    gammas: tuple[float, ...] = (0.75, 1.0, 2.0)
    seeds: tuple[int, ...] = tuple(range(10))
    distance_widths: tuple[int, ...] = (10, 30, 100, 300, 1000)
    n_samples: int = 100
    problem_seed: int = 0
    t1_factor: float = 0.25
    rank_tol: float = 0.1
    solver: str = "auto"
    rtol: float = 1e-6
    n_save: int = 256
    ratio_atol: float = 0.25
    root_find: bool = True

    def __post_init__(self):
        check_int("depth", self.depth, 3, 50, why="for L = 2 plateaus grow only like log w")
        for name in ("widths", "distance_widths"):
            widths = tuple(sorted(_check_ints(name, getattr(self, name), 2)))
            if len(set(widths)) != len(widths):
                raise ValueError(f"`{name}` lists a width twice, got {list(widths)}.")
            for w in widths:
                check_params((5,) + (w,) * (self.depth - 1) + (5,), name)
            object.__setattr__(self, name, widths)
        object.__setattr__(self, "gammas", _check_gammas("gammas", self.gammas, self.depth))
        _check_scales(self.widths, self.depth, self.gammas)
        check_int("n_samples", self.n_samples, 5, 10**6, why="C must have a unique minimiser")
        check_float("t1_factor", self.t1_factor, 0.0, 1e6)
        check_float("ratio_atol", self.ratio_atol, 0.0)
        if not isinstance(self.root_find, bool):
            raise ValueError(f"`root_find` must be true or false, got {self.root_find!r}.")
        _check_common(self)

    def t1(self, gamma: float, width: int) -> float:
        return self.t1_factor * time_scale(gamma, width, self.depth)


def run_regimes(config: RegimesConfig, context: RunContext | None = None) -> Outcome:
    """Sweep γ × widths × seeds on the diagonal teacher and check the regimes' claims.

    **Arguments:** `config`; `context`: progress bars and checkpoints (default: neither).

    **Returns:** an `Outcome` with arrays over (gamma, width, seed, time) — `ts`, `loss`,
    `grad_norm`, `rank`, `nuclear_norm` —, over (gamma, width, seed) `drop_time` (first t with
    C = C(0)/2), `ntk_change` (‖Θ(t1) − Θ(θ₀)‖/‖Θ(θ₀)‖), `plateaus`, over
    (gamma, distance_width, seed) the bounds `saddle_distance`, `minimum_distance` of Thm 1 at
    θ₀ and over (distance_width, seed) `ntk0_ratio`; values `rows` (per γ and w) and
    `exponents` (fitted in w).
    """
    context = context or RunContext(False)
    gammas, widths, seeds = config.gammas, config.widths, config.seeds
    problem = sj.diagonal_teacher_problem(jr.key(config.problem_seed), config.n_samples)
    # A* = the minimiser of C (the teacher: the labels carry no noise), for the bound on d_m.
    teacher = np.linalg.lstsq(np.asarray(problem.x), np.asarray(problem.y), rcond=None)[0].T
    c0 = float(problem.matrix_cost(jnp.zeros(teacher.shape)))
    start = time.perf_counter()
    with context.task("Thm 1 at θ₀", len(config.distance_widths)) as task:
        init = _init_measures(config, teacher, task)
    per_width, walls, failures = [], [], []
    with context.sweep("gradient flows", len(gammas) * len(widths), len(seeds)) as bar:
        for w in widths:
            shape = (5,) + (w,) * (config.depth - 1) + (5,)
            t1s = {_alpha(w, g): config.t1(g, w) for g in gammas}
            result = sj.sweep(
                problem,
                _draw(shape),
                lambda a, t1s=t1s: t1s[float(a)],
                alphas=list(t1s),
                seeds=seeds,
                n_save=config.n_save,
                **(dict(event=sj.LossBelow(c0 / 2), stop_at_event=False) if config.root_find
                   else {}),
                checkpoint=context.checkpoint(f"width-{w}"),
                on_chunk=bar.on_chunk,
                **_flow_options(config, list(t1s.values())),
            )
            per_width.append(_flow_measures(config, result, shape, c0 / 2))
            walls.append(result.stats["wall_time"])
            failures += _failures(result)
    get = {k: np.stack([m[k] for m in per_width], axis=1) for k in per_width[0]}
    get.update(init)
    tgs, dims_t = ("gamma", "width", "seed"), ("gamma", "width", "seed", "time")
    arrays = {
        "gammas": Array(("gamma",), np.asarray(gammas), "σ² = w^(−γ)"),
        "widths": Array(("width",), np.asarray(widths), "hidden width w of the flows"),
        "seeds": Array(("seed",), np.asarray(seeds), "keys of θ̃"),
        "distance_widths": Array(
            ("distance_width",), np.asarray(config.distance_widths), "widths of the θ₀ measures"
        ),
        "ts": Array(dims_t, get["ts"], "save times t"),
        "loss": Array(dims_t, get["loss"], "training loss C(A_θ(t))"),
        "grad_norm": Array(dims_t, get["grad_norm"], "‖∇L(θ(t))‖"),
        "rank": Array(dims_t, get["rank"], f"rank of A_θ(t), tol {config.rank_tol}"),
        "nuclear_norm": Array(dims_t, get["nuclear_norm"], "‖A_θ(t)‖_*"),
        "drop_time": Array(
            tgs, get["drop_time"],
            "first t with C(A_θ(t)) = C(0)/2 (" + ("root-found" if config.root_find else
                                                 "interpolated on the save grid") + ")",
        ),
        "ntk_change": Array(tgs, get["ntk_change"], "‖Θ(θ(t1)) − Θ(θ₀)‖_F / ‖Θ(θ₀)‖_F"),
        "plateaus": Array(tgs, get["plateaus"], "number of loss plateaus (detect_plateaus)"),
        "saddle_distance": Array(
            ("gamma", "distance_width", "seed"), get["saddle_distance"],
            "√(‖W_1‖²+‖W_L‖²) at θ₀: a bound on d_s (Thm 1)",
        ),
        "minimum_distance": Array(
            ("gamma", "distance_width", "seed"), get["minimum_distance"],
            "‖ΔW_L‖ that reaches A* from θ₀: a bound on d_m (Thm 1)",
        ),
        "ntk0_ratio": Array(
            ("distance_width", "seed"), get["ntk0_ratio"],
            "mean of Θ(θ₀)_{ij,ij} over E[Θ] = L·w^((1−γ)(L−1)) (the same for every γ)",
        ),
    }
    exponents = _regime_exponents(config, get)
    rows = _regime_rows(config, get, np.stack(walls, axis=1), c0)
    outcome = Outcome(
        arrays=arrays,
        values={
            "rows": rows,
            "exponents": exponents,
            "ntk0_ratio": np.median(get["ntk0_ratio"], axis=-1).tolist(),
            "c0": c0,
            "wall_time": time.perf_counter() - start,
        },
        checks=_regime_claims(config, get, exponents, c0),
        figures={"regimes.png": lambda fig: plot_regimes(arrays, config, fig)},
        failures=failures,
    )
    outcome.table = regimes_table(rows, exponents, get, config)
    return outcome


def _init_measures(config, teacher, task) -> dict:
    """Thm 1 at θ₀ = w^{−γ/2}·θ̃ for every γ, distance width and seed: the bounds on d_s and
    d_m, and Θ(θ̃) over its expectation (Θ is homogeneous of degree 2(L−1) in θ, as is E[Θ]
    in σ, so the ratio does not depend on γ)."""
    gammas, dwidths, seeds = config.gammas, config.distance_widths, config.seeds
    d_s = np.zeros((len(gammas), len(dwidths), len(seeds)))
    d_m = np.zeros_like(d_s)
    ratio = np.zeros((len(dwidths), len(seeds)))
    for j, w in enumerate(dwidths):
        shape = (5,) + (w,) * (config.depth - 1) + (5,)
        alphas = jnp.asarray([_alpha(w, g) for g in gammas])
        expected = sj.expected_dln_ntk(shape, 1.0)
        for s, seed in enumerate(seeds):
            diag, d_s[:, j, s], d_m[:, j, s] = _theta0_measures(
                shape, jr.key(seed), alphas, jnp.asarray(teacher)
            )
            ratio[j, s] = float(diag) / expected
        task.advance(1, w=w)
    return {"saddle_distance": d_s, "minimum_distance": d_m, "ntk0_ratio": ratio}


@functools.partial(jax.jit, static_argnums=0)
def _theta0_measures(shape, key, alphas, teacher):
    """The mean diagonal entry of Θ(θ̃) and, per α, the bounds on d_s and d_m at α·θ̃ (one
    compiled function per shape, instead of one per operation)."""
    theta = _draw(shape)(key)
    diag = jnp.mean(jnp.einsum("ijij->ij", sj.matrix_ntk(theta)))

    def bounds(alpha):
        theta0 = sj.init.scale(theta, alpha)
        return sj.saddle_distance_bound(theta0), sj.minimum_distance_bound(theta0, teacher)

    d_s, d_m = jax.vmap(bounds)(alphas)
    return diag, d_s, d_m


def _flow_measures(config, result, shape, level) -> dict:
    """Per (γ, seed) of one width: the saved curves, the drop time (the loss crosses `level`),
    the NTK's relative change from θ₀ to where the flow stopped, the plateaus."""
    sol = result.solution
    keys = jnp.stack([jr.key(s) for s in config.seeds])
    change = _ntk_changes(shape, keys, jnp.asarray(result.alphas), sol.stop_state)
    rank, nuclear = _matrix_measures(jnp.asarray(sol.params), config.rank_tol)
    ts, loss = np.asarray(sol.ts), np.asarray(sol.loss)
    n_g, n_s = loss.shape[:2]
    plateaus = np.array(
        [[sj.detect_plateaus(ts[i, s], loss[i, s]).n_plateaus for s in range(n_s)]
         for i in range(n_g)]
    )
    return {
        "ts": ts,
        "loss": loss,
        "grad_norm": np.asarray(sol.grad_norm),
        "rank": np.asarray(rank),
        "nuclear_norm": np.asarray(nuclear),
        "drop_time": np.asarray(sol.event_time) if config.root_find
        else crossing_time(ts, loss, level),
        "ntk_change": np.asarray(change),
        "plateaus": plateaus,
        "steps": np.asarray(sol.stats["num_steps"]),
    }


@functools.partial(jax.jit, static_argnums=0)
def _ntk_changes(shape, keys, alphas, final):
    """‖Θ(final) − Θ(α·θ̃)‖/‖Θ(α·θ̃)‖ per (α, seed), with Θ(α·θ̃) = α^{2(L−1)}·Θ(θ̃)."""
    base = jax.vmap(lambda key: sj.matrix_ntk(_draw(shape)(key)))(keys)
    start = alphas[:, None, None, None, None, None] ** (2 * (len(shape) - 2)) * base[None]
    return jax.vmap(jax.vmap(sj.ntk_change))(start, sj.matrix_ntk(final))


@functools.partial(jax.jit, static_argnums=1)
def _matrix_measures(matrices, rank_tol):
    return sj.numerical_rank(matrices, rank_tol), sj.nuclear_norm(matrices)


def _asymptotic(widths) -> slice:
    """The three largest widths (all if fewer): where Thm 1's rates have set in."""
    return slice(max(len(widths) - 3, 0), None)


def _regime_exponents(config, get) -> dict:
    """Per γ, exponents in w of the medians over seeds (least squares on log–log): the drop
    time and the NTK's change over the flows' widths, the d_s bound over all distance widths,
    the d_m bound over the three largest."""
    med = {k: np.median(get[k], axis=-1) for k in ("drop_time", "ntk_change",
                                                    "saddle_distance", "minimum_distance")}
    dw, big = np.asarray(config.distance_widths), _asymptotic(config.distance_widths)
    out = {}
    for i, gamma in enumerate(config.gammas):
        e_m, e_s = sj.distance_exponents(gamma, config.depth)
        out[f"{gamma:g}"] = {
            "regime": regime(gamma),
            "drop_time": _slope(config.widths, med["drop_time"][i]),
            "drop_time_theory": drop_time_exponent(gamma, config.depth),
            "ntk_change": _slope(config.widths, med["ntk_change"][i]),
            "saddle_distance": _slope(dw, med["saddle_distance"][i]),
            "saddle_distance_theory": e_s,
            "minimum_distance": _slope(dw[big], med["minimum_distance"][i][big]),
            "minimum_distance_theory": e_m,
        }
    return out


def _regime_claims(config, get, exponents, c0) -> list:
    """The checks of Jacot et al. Thm 1, §4, §6 and Fig. 2 and 5 (module docstring)."""
    gammas, widths, dwidths = config.gammas, config.widths, config.distance_widths
    seeds = config.seeds
    n, last = 5, len(widths) - 1
    checks = [
        check_at_most(
            "final loss / C(0), worst trajectory", float(np.max(get["loss"][..., -1]) / c0),
            1e-3, note="every flow trained to convergence (t1 from `time_scale`)",
        ),
        check_close(
            "Θ(θ₀) / E[Θ] at each distance width (median)",
            np.median(get["ntk0_ratio"], axis=-1), np.ones(len(dwidths)), 0.2,
            note="§4: E[Θ] = L·w^((1−γ)(L−1))·δδ, exact in expectation; a 10×10 product "
            "chain fluctuates by ~10 % at w = 10",
        ),
    ]
    big = _asymptotic(dwidths)
    for i, gamma in enumerate(gammas):
        kind, ex = regime(gamma), exponents[f"{gamma:g}"]
        tag = f"{kind} (γ = {gamma:g})"
        if len(dwidths) > 1:
            checks.append(
                check_abs(
                    f"{tag}: exponent of the d_s bound in w", ex["saddle_distance"],
                    ex["saddle_distance_theory"], 0.05,
                    note="Thm 1: d_s ≍ w^((1−γ)/2); E[bound²] = σ²(n₀+n_L)w exactly, the "
                    "median of ≥ 100 squares is within a few %",
                )
            )
        if gamma < 1 and len(dwidths[big]) > 1:
            checks.append(
                check_abs(
                    f"{tag}: exponent of the d_m bound in w ≥ {dwidths[big][0]}",
                    ex["minimum_distance"], ex["minimum_distance_theory"], 0.1,
                    note="Thm 1(1): d_m ≍ w^(−(1−γ)(L−1)/2); the smallest singular value of "
                    "the w×5 product W_{L−1}⋯W_1 reaches its w-scaling from below (−0.42 "
                    "over 100…1000, −0.45 over 30…300 with 10 seeds)",
                )
            )
    if len(widths) > 1:
        med_t = np.median(get["drop_time"], axis=-1)
        med_k = np.median(get["ntk_change"], axis=-1)
        w_ratio = np.log10(np.asarray(widths[1:]) / widths[0])
        for i, gamma in enumerate(gammas):
            kind, ex = regime(gamma), exponents[f"{gamma:g}"]
            tag = f"{kind} (γ = {gamma:g})"
            grown = np.log10(med_t[i, 1:] / med_t[i, 0])
            if kind == "NTK":
                checks.append(
                    check_at_most(
                        f"{tag}: log10 drop-time growth from w = {widths[0]} to "
                        f"{widths[-1]}", float(grown[-1]), 0.0,
                        note="Fig. 2a: no plateau that grows with w; training speeds up as "
                        f"E[Θ] grows (∝ w^{ex['drop_time_theory']:g} as w → ∞)",
                    )
                )
                checks.append(
                    check_at_most(
                        f"{tag}: NTK change at w = {widths[-1]} over at w = {widths[0]}",
                        float(med_k[i, -1] / med_k[i, 0]), 1.0,
                        note="§4, §6: the NTK is asymptotically fixed during training",
                    )
                )
            else:
                checks.append(
                    check_abs(
                        f"{tag}: log10 drop-time growth from w = {widths[0]} to "
                        f"{list(widths[1:])}", grown, ex["drop_time_theory"] * w_ratio,
                        config.ratio_atol,
                        note="Fig. 2b: plateau length constant in w" if kind == "mean-field"
                        else "Fig. 2c: plateaus lengthen with w, the escape time ∝ "
                        "(σ√w)^(−(L−2)) (SPEC §8)",
                    )
                )
            if kind == "mean-field":
                checks.append(
                    check_abs(
                        f"{tag}: log10 growth of the NTK's relative change from w = "
                        f"{widths[0]} to {list(widths[1:])}",
                        np.log10(med_k[i, 1:] / med_k[i, 0]), np.zeros(len(widths) - 1),
                        config.ratio_atol,
                        note="§6: the NTK and its change are of the same order in w (their "
                        "ratio, ≈ 150 on this teacher of norm 74, does not scale with w)",
                    )
                )
            if config.root_find and widths[-1] >= 10 * widths[0] and len(seeds) >= 5:
                spread = np.std(np.log10(get["drop_time"][i]), axis=-1)
                checks.append(
                    check_at_most(
                        f"{tag}: seed spread of log10 drop time, w = {widths[-1]} over "
                        f"w = {widths[0]}", float(spread[-1] / spread[0]), 1.0,
                        note="Fig. 2: the variation between seeds shrinks as w → ∞ (checked "
                        "over ≥ a decade in w with ≥ 5 seeds and root-found drop times, where "
                        "the change exceeds the sampling noise of a standard deviation)",
                    )
                )
    for i, gamma in enumerate(gammas):
        kind, tag = regime(gamma), f"{regime(gamma)} (γ = {gamma:g})"
        if kind == "saddle-to-saddle":
            checks.append(
                check_at_least(
                    f"{tag}: relative change of the NTK (smallest median over w)",
                    float(np.min(np.median(get["ntk_change"][i], axis=-1))), 100.0,
                    note="§6: Θ(θ₀) → 0 like w^((1−γ)(L−1)) while the trained NTK is O(1)",
                )
            )
            rank = get["rank"][i]
            bad = ~_incremental(rank) | (rank[..., 0] != 0) | (rank[..., -1] != n)
            checks.append(
                check_equal(
                    f"{tag}: trajectories whose rank does not go 0, 1, …, {n} one at a time",
                    int(np.sum(bad)), 0,
                    note="Fig. 5c top: one direction learned per saddle (Conjecture 3)",
                )
            )
            checks.append(
                check_at_least(
                    f"{tag}: loss plateaus at w = {widths[last]} (median)",
                    float(np.median(get["plateaus"][i, last])), 3,
                    note="Fig. 2c: a staircase of saddles (those close in level can merge on "
                    "the save grid)",
                )
            )
        if kind == "NTK":
            checks.append(
                check_at_least(
                    f"{tag}: rank of A_θ₀ at w = {widths[last]} (median)",
                    float(np.median(get["rank"][i, last, :, 0])), n - 1,
                    note="Fig. 5a: A_θ₀ has O(1) Gaussian entries, no low-rank start (a 5×5 "
                    "Gaussian matrix has σ_5 < 0.1 with probability ≈ 0.2)",
                )
            )
            checks.append(
                check_equal(
                    f"{tag}: loss plateaus at w = {widths[last]} (median)",
                    float(np.median(get["plateaus"][i, last])), 1.0,
                    note="Fig. 2a: linear convergence from the start, no saddle visited",
                )
            )
    return checks


def _regime_rows(config, get, walls, c0) -> list[dict]:
    """Per γ and flow width, medians over seeds."""
    rows = []
    for i, gamma in enumerate(config.gammas):
        for j, w in enumerate(config.widths):
            rows.append(
                {
                    "gamma": float(gamma),
                    "regime": regime(gamma),
                    "width": int(w),
                    "t1": config.t1(gamma, w),
                    "drop_time": float(np.median(get["drop_time"][i, j])),
                    "ntk_change": float(np.median(get["ntk_change"][i, j])),
                    "plateaus": float(np.median(get["plateaus"][i, j])),
                    "final_loss": float(np.median(get["loss"][i, j, :, -1]) / c0),
                    "final_rank": int(np.median(get["rank"][i, j, :, -1])),
                    "steps": int(np.max(get["steps"][i, j])),
                    "wall_time": float(walls[i, j]),
                }
            )
    return rows


def regimes_table(rows: list[dict], exponents: dict, get: dict, config: RegimesConfig) -> str:
    """The rows, the θ₀ measures and the exponents of `run_regimes` as text (medians over
    seeds)."""
    head = (
        f"{'γ':>5} {'regime':>16} {'w':>5} {'t1':>9} {'t_drop':>9} {'ΔΘ/Θ₀':>9} {'plat':>4} "
        f"{'C/C(0)':>9} {'rank':>4} {'steps':>6} {'wall s':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['gamma']:>5g} {r['regime']:>16} {r['width']:>5d} {r['t1']:>9.3g} "
            f"{r['drop_time']:>9.3g} {r['ntk_change']:>9.3g} {r['plateaus']:>4g} "
            f"{r['final_loss']:>9.2e} {r['final_rank']:>4d} "
            f"{r['steps']:>6d} {r['wall_time']:>7.1f}"
        )
    lines += ["", "at θ₀ (Thm 1): w, Θ(θ₀)/E[Θ], then per γ the bounds on d_s and d_m"]
    for j, w in enumerate(config.distance_widths):
        parts = [f"{w:>6d} {np.median(get['ntk0_ratio'][j]):>7.3f}"]
        for i, gamma in enumerate(config.gammas):
            parts.append(
                f"γ={gamma:g}: {np.median(get['saddle_distance'][i, j]):.3g}, "
                f"{np.median(get['minimum_distance'][i, j]):.3g}"
            )
        lines.append("  ".join(parts))
    lines += ["", "exponents in w (fitted / theory):"]
    for gamma, e in exponents.items():
        lines.append(
            f"  γ = {gamma:>4} ({e['regime']}): drop time {e['drop_time']:+.3f} / "
            f"{e['drop_time_theory']:+.3f}, NTK change {e['ntk_change']:+.3f}, d_s "
            f"{e['saddle_distance']:+.3f} / {e['saddle_distance_theory']:+.3f}, d_m "
            f"{e['minimum_distance']:+.3f} / {e['minimum_distance_theory']:+.3f}"
        )
    return "\n".join(lines)


def plot_regimes(arrays: dict, config: RegimesConfig, fig) -> None:
    """Jacot et al. Fig. 2 and 5: per regime (columns) the loss, rank, nuclear norm and ‖∇L‖
    (rows) against t for every width (colour) and seed."""
    get = {k: a.values for k, a in arrays.items()}
    gammas, widths = get["gammas"], get["widths"]
    fig.set_size_inches(4.6 * len(gammas), 11)
    axes = np.asarray(fig.subplots(4, len(gammas), squeeze=False))
    colors = colormap("viridis")(np.linspace(0, 0.85, len(widths)))
    names = ("loss", f"rank (tol {config.rank_tol:g})", "nuclear norm ‖A‖_*", "‖∇L‖")
    keys = ("loss", "rank", "nuclear_norm", "grad_norm")
    for i, gamma in enumerate(gammas):
        for j, w in enumerate(widths):
            for s in range(get["ts"].shape[2]):
                t = get["ts"][i, j, s]
                inside = t > 0
                for row, key in enumerate(keys):
                    label = f"w = {w}" if s == 0 and row == 0 else None
                    axes[row, i].plot(
                        t[inside], get[key][i, j, s][inside], color=colors[j], lw=1,
                        alpha=0.6, label=label,
                    )
        axes[0, i].set_title(f"{regime(gamma)}, γ = {gamma:g}")
        for row, name in enumerate(names):
            _log_time_axis(axes[row, i])
            axes[row, i].set_ylabel(name)
            if row in (0, 3):
                axes[row, i].set_yscale("log")
        axes[-1, i].set_xlabel("t")
        axes[0, i].legend()
    fig.suptitle(
        f"Training regimes of a deep linear net (L = {config.depth}), σ² = w^(−γ), teacher "
        "10·diag(1,…,5)"
    )


register(
    "training-regimes",
    RegimesConfig,
    "NTK, mean-field and saddle-to-saddle regimes of a deep linear net against the width "
    "(Jacot et al. Fig. 2 and 5, Thm 1)",
)(run_regimes)


# ---------------------------------------------------------------------------------------------
# Fig. 3: matrix completion at convergence against γ
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompletionGammaConfig:
    """Settings of "completion-vs-gamma" (Jacot et al. Fig. 3; SPEC §11).

    `n`, `rank`, `observed`: an n×n rank-`rank` matrix A* = UVᵀ (Gaussian factors) with an
    `observed` fraction of its entries known (`matrix_completion_problem`); seed s draws its
    own problem (key `fold_in(problem_seed, s)`) and its own θ̃ (key s), so the medians over
    seeds are over problems too. `depth`, `widths`: the DLN (n, w, …, w, n), L ≥ 2 (the paper
    does not give them; L = 4 as in its Figs 1, 2, 4). `gammas`: σ² = w^{−γ}, distinct, ≥
    1 − 1/L; the smallest below 1 is checked as the NTK regime, the largest above 1 as the
    saddle-to-saddle regime. `t1_factor`: t1 = t1_factor·`time_scale`(γ, w, L); 1000 is the
    paper's horizon at γ = 1 (20,000 steps at η₀ = 0.05) and the escape time grows with γ and
    w from there. `rank_tol`: 0.1 (App. A). `solver`, `rtol`: as in `MatrixCompletionConfig`.
    `n_save`: saved times per trajectory (the claims are about the end; the curves are kept
    for the figure). `low_error`: the bound on the saddle-to-saddle regime's test error
    relative to the zero predictor's.
    """

    n: int = 30
    rank: int = 1
    observed: float = 0.2
    problem_seed: int = 0
    depth: int = 4
    widths: tuple[int, ...] = (50, 200)
    gammas: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 2.0, 2.5)
    seeds: tuple[int, ...] = tuple(range(7))
    t1_factor: float = 1000.0
    rank_tol: float = 0.1
    solver: str = "auto"
    rtol: float = 1e-6
    n_save: int = 64
    low_error: float = 0.05

    def __post_init__(self):
        check_int("n", self.n, 2, 10**4)
        check_int("rank", self.rank, 1, self.n)
        check_float("observed", self.observed, 0.0, 1.0)
        check_int("depth", self.depth, 2, 50)
        widths = tuple(sorted(_check_ints("widths", self.widths, 2)))
        if len(set(widths)) != len(widths):
            raise ValueError(f"`widths` lists a width twice, got {list(widths)}.")
        for w in widths:
            check_params((self.n,) + (w,) * (self.depth - 1) + (self.n,), "widths")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "gammas", _check_gammas("gammas", self.gammas, self.depth))
        _check_scales(widths, self.depth, self.gammas)
        check_float("t1_factor", self.t1_factor, 0.0, 1e12)
        check_float("low_error", self.low_error, 0.0)
        _check_common(self)

    def t1(self, gamma: float, width: int) -> float:
        return self.t1_factor * time_scale(gamma, width, self.depth)


def _completion_errors(problem, matrices: np.ndarray) -> np.ndarray:
    """Mean squared error on the unobserved entries over that of the zero predictor (mean of
    A*² there): 1 means no better than predicting 0 (Jacot et al. Fig. 3)."""
    hidden = 1.0 - np.asarray(problem.mask)
    target = np.asarray(problem.target)
    zero = float((hidden * target**2).sum())
    return (hidden * (matrices - target) ** 2).sum((-2, -1)) / zero


def run_completion_gamma(
    config: CompletionGammaConfig, context: RunContext | None = None
) -> Outcome:
    """Flows for every width × γ × seed (each seed its own problem), and the test error and
    rank at convergence against γ.

    **Returns:** an `Outcome` with arrays over (width, gamma, seed) — `test_error` (relative to
    the zero predictor), `rank`, `train_loss` (over C(0)), all at t1 — and the curves `ts`,
    `loss`, `test_curve` over (width, gamma, seed, time); values `rows` (per width and γ).
    """
    context = context or RunContext(False)
    widths, gammas, seeds = config.widths, config.gammas, config.seeds
    n, depth = config.n, config.depth
    problems = [
        sj.matrix_completion_problem(
            jr.fold_in(jr.key(config.problem_seed), s), n, config.rank, config.observed
        )
        for s in seeds
    ]
    start = time.perf_counter()
    curves = {k: [] for k in ("ts", "loss", "test_curve", "rank_curve", "c0", "steps")}
    failures = []
    with context.sweep("gradient flows", len(widths) * len(gammas), len(seeds)) as bar:
        for w in widths:
            shape = (n,) + (w,) * (depth - 1) + (n,)
            t1s = {_alpha(w, g): config.t1(g, w) for g in gammas}
            per_seed = {k: [] for k in curves}
            for seed, problem in zip(seeds, problems):
                result = sj.sweep(
                    problem,
                    _draw(shape),
                    lambda a, t1s=t1s: t1s[float(a)],
                    alphas=list(t1s),
                    seeds=(seed,),
                    n_save=config.n_save,
                    checkpoint=context.checkpoint(f"width-{w}-seed-{seed}"),
                    on_chunk=bar.on_chunk,
                    **_flow_options(config, list(t1s.values())),
                )
                sol = result.solution
                matrices = np.asarray(sol.params)[:, 0]
                per_seed["ts"].append(np.asarray(sol.ts)[:, 0])
                per_seed["loss"].append(np.asarray(sol.loss)[:, 0])
                per_seed["test_curve"].append(_completion_errors(problem, matrices))
                per_seed["rank_curve"].append(
                    np.asarray(sj.numerical_rank(matrices, config.rank_tol))
                )
                c0 = float(problem.matrix_cost(jnp.zeros((n, n))))
                per_seed["c0"].append(np.full(len(gammas), c0))
                per_seed["steps"].append(np.asarray(sol.stats["num_steps"])[:, 0])
                failures += _failures(result)
            for k, v in per_seed.items():
                curves[k].append(np.stack(v, axis=1))  # (gamma, seed, ...)
    get = {k: np.stack(v) for k, v in curves.items()}  # (width, gamma, seed, ...)
    get["test_error"] = get["test_curve"][..., -1]
    get["rank"] = get["rank_curve"][..., -1]
    get["train_loss"] = get["loss"][..., -1] / get["c0"]
    dims, dims_t = ("width", "gamma", "seed"), ("width", "gamma", "seed", "time")
    arrays = {
        "widths": Array(("width",), np.asarray(widths), "hidden width w"),
        "gammas": Array(("gamma",), np.asarray(gammas), "σ² = w^(−γ)"),
        "seeds": Array(("seed",), np.asarray(seeds), "keys of θ̃ and of the problem"),
        "test_error": Array(
            dims, get["test_error"], "MSE on unobserved entries / that of the zero predictor, at t1"
        ),
        "rank": Array(dims, get["rank"], f"rank of A_θ(t1), tol {config.rank_tol}"),
        "train_loss": Array(dims, get["train_loss"], "C(A_θ(t1)) / C(0)"),
        "ts": Array(dims_t, get["ts"], "save times t"),
        "loss": Array(dims_t, get["loss"], "training loss C(A_θ(t))"),
        "test_curve": Array(dims_t, get["test_curve"], "relative test error along the flow"),
    }
    rows = [
        {
            "width": int(w),
            "gamma": float(g),
            "regime": regime(g),
            "t1": config.t1(g, w),
            "test_error": float(np.median(get["test_error"][j, i])),
            "test_error_std": float(np.std(get["test_error"][j, i])),
            "rank": float(np.median(get["rank"][j, i])),
            "train_loss": float(np.median(get["train_loss"][j, i])),
            "steps": int(np.max(get["steps"][j, i])),
        }
        for j, w in enumerate(widths)
        for i, g in enumerate(gammas)
    ]
    outcome = Outcome(
        arrays=arrays,
        values={"rows": rows, "wall_time": time.perf_counter() - start},
        checks=_completion_claims(config, get),
        figures={"completion_gamma.png": lambda fig: plot_completion_gamma(arrays, config, fig)},
        failures=failures,
    )
    outcome.table = completion_gamma_table(rows)
    return outcome


def _completion_claims(config, get) -> list:
    """Jacot et al. Fig. 3 and §6: small initialisation (large γ) finds the low-rank completion,
    the NTK regime neither a low rank nor a test error below the zero predictor's."""
    gammas, widths = np.asarray(config.gammas), config.widths
    checks = [
        check_at_most(
            "final train loss / C(0), worst trajectory", float(np.max(get["train_loss"])), 1e-3,
            note="every flow trained to convergence (t1 from `time_scale`)",
        )
    ]
    big = int(np.argmax(gammas))
    if gammas[big] > 1:
        g = gammas[big]
        checks.append(
            check_equal(
                f"saddle-to-saddle (γ = {g:g}): rank at convergence per width (median)",
                np.median(get["rank"][:, big], axis=-1), [config.rank] * len(widths),
                note="§6: the greedy low-rank algorithm stops at the lowest rank that fits",
            )
        )
        checks.append(
            check_at_most(
                f"saddle-to-saddle (γ = {g:g}): test error / zero predictor's per width "
                "(median)", np.median(get["test_error"][:, big], axis=-1), config.low_error,
                note="Fig. 3: → 0; a rank-r n×n matrix has r(2n−r) degrees of freedom, fewer "
                "than the observed entries, so the lowest-rank completion is A*",
            )
        )
    small = int(np.argmin(gammas))
    if gammas[small] < 1:
        g = gammas[small]
        checks.append(
            check_at_least(
                f"NTK (γ = {g:g}): test error / zero predictor's per width (median)",
                np.median(get["test_error"][:, small], axis=-1), 0.9,
                note="Fig. 3: the same as or worse than the zero predictor (lazy training "
                "leaves the unobserved entries near A_θ₀'s, which add their variance: → 2 at "
                "γ = 1 − 1/L as w → ∞)",
            )
        )
        checks.append(
            check_at_least(
                f"NTK (γ = {g:g}): rank at convergence per width (median)",
                np.median(get["rank"][:, small], axis=-1), 0.8 * config.n,
                note="Fig. 3 / §6: almost full rank, no low-rank bias",
            )
        )
    return checks


def completion_gamma_table(rows: list[dict]) -> str:
    """The rows of `run_completion_gamma` as a text table (medians over seeds)."""
    head = (
        f"{'w':>5} {'γ':>5} {'regime':>16} {'t1':>9} {'test/zero':>10} {'± std':>8} "
        f"{'rank':>5} {'C/C(0)':>9} {'steps':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['width']:>5d} {r['gamma']:>5g} {r['regime']:>16} {r['t1']:>9.3g} "
            f"{r['test_error']:>10.3g} {r['test_error_std']:>8.2g} {r['rank']:>5g} "
            f"{r['train_loss']:>9.2e} {r['steps']:>6d}"
        )
    return "\n".join(lines)


def plot_completion_gamma(arrays: dict, config: CompletionGammaConfig, fig) -> None:
    """Jacot et al. Fig. 3: test error (relative to the zero predictor) and rank at convergence
    against γ, mean ± one standard deviation over seeds, one line per width."""
    get = {k: a.values for k, a in arrays.items()}
    fig.set_size_inches(11, 4.2)
    axes = fig.subplots(1, 2)
    colors = colormap("viridis")(np.linspace(0, 0.85, len(get["widths"])))
    for j, w in enumerate(get["widths"]):
        for ax, key in zip(axes, ("test_error", "rank")):
            values = get[key][j].astype(float)
            ax.errorbar(
                get["gammas"], values.mean(-1), yerr=values.std(-1), color=colors[j],
                marker="o", capsize=3, label=f"w = {w}",
            )
    axes[0].axhline(1.0, color="0.4", ls=":", lw=1, label="zero predictor")
    axes[0].set_ylabel("test error / zero predictor's")
    axes[1].set_ylabel(f"rank (tol {config.rank_tol:g})")
    for ax in axes:
        ax.axvline(1.0, color="0.7", lw=1)
        ax.set_xlabel("γ  (σ² = w^(−γ))")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"{config.n}×{config.n} rank-{config.rank} completion, {config.observed:.0%} observed, "
        f"L = {config.depth}: at convergence"
    )


register(
    "completion-vs-gamma",
    CompletionGammaConfig,
    "test error and rank at convergence against the initialisation scale γ, matrix completion "
    "(Jacot et al. Fig. 3)",
)(run_completion_gamma)


# ---------------------------------------------------------------------------------------------
# Fig. 6: a noisy low-rank teacher, shallow and deep, NTK against saddle-to-saddle
# ---------------------------------------------------------------------------------------------

_KINDS = ("NTK", "saddle-to-saddle")


@dataclasses.dataclass(frozen=True)
class NoisyTeacherConfig:
    """Settings of "noisy-teacher" (Jacot et al. Fig. 6, App. A; SPEC §11).

    `n`, `rank`, `noise`, `n_train`, `n_test`, `problem_seed`: the teacher W₀W₀ᵀ (n×`rank`,
    column i of variance i) with N(0, noise²) label noise on `n_train` Gaussian inputs and
    noiseless labels on `n_test` (`noisy_low_rank_problem`); the loss is the MSE
    C(A) = (1/N)‖AX − Y‖². `depths`, `widths`, `gammas`, `horizons`: one entry per network,
    the depth L ≥ 2, the width w, the small-initialisation γ (σ = w^{−γ/2}: the paper's
    σ = w^{−2} for L = 2 is γ = 4, σ = w^{−1} for L = 4 is γ = 2) and the horizon T (the
    paper's 100,000 and 1,500,000 steps at η = 10⁻³). Each network is also trained from the
    NTK initialisation σ = w^{−(L−1)/(2L)} (γ = 1 − 1/L). `seeds`: keys of θ̃ (the paper:
    "different runs yielded effectively the same figure"). `rank_tol`: 10⁻⁴ (App. A).
    `solver`, `rtol`: as in `MatrixCompletionConfig`; "auto" keeps ‖∇L‖ smooth on the stiff
    plateaus where an explicit solver's steps at its stability limit make it ripple.
    `n_save`: save times, t = 0 and a geometric grid over [10⁻⁶T, T]. `plateau_atol`: the
    tolerance, in decades, of the length of the plateau at the teacher's rank against theory.
    """

    n: int = 10
    rank: int = 3
    noise: float = 0.2
    n_train: int = 100
    n_test: int = 1000
    problem_seed: int = 0
    depths: tuple[int, ...] = (2, 4)
    widths: tuple[int, ...] = (50, 100)
    gammas: tuple[float, ...] = (4.0, 2.0)
    horizons: tuple[float, ...] = (100.0, 1500.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    rank_tol: float = 1e-4
    solver: str = "auto"
    rtol: float = 1e-6
    n_save: int = 512
    plateau_atol: float = 0.3

    def __post_init__(self):
        check_int("n", self.n, 2, 10**4)
        check_int("rank", self.rank, 1, self.n - 1, why="the noise directions must exist")
        check_float("noise", self.noise, 0.0)
        check_int("n_train", self.n_train, self.n, 10**6, why="C must have a unique minimiser")
        check_int("n_test", self.n_test, 1, 10**7)
        depths = _check_ints("depths", self.depths, 2)
        widths = _check_ints("widths", self.widths, 2)
        gammas = check_floats("gammas", self.gammas, 1.0, math.inf, why="small initialisation")
        horizons = tuple(
            check_float("horizons", t, 0.0, 1e12) for t in _as_tuple("horizons", self.horizons)
        )
        sizes = {len(depths), len(widths), len(gammas), len(horizons)}
        if len(sizes) != 1:
            raise ValueError(
                "`depths`, `widths`, `gammas` and `horizons` give one entry per network and "
                f"must have the same length, got {len(depths)}, {len(widths)}, {len(gammas)} "
                f"and {len(horizons)}."
            )
        if len(set(depths)) != len(depths):
            raise ValueError(f"`depths` lists a depth twice, got {list(depths)}.")
        for depth, w, g in zip(depths, widths, gammas):
            check_params((self.n,) + (w,) * (depth - 1) + (self.n,), "widths")
            _check_scales((w,), depth, (g, 1 - 1 / depth))
        for name, value in (("depths", depths), ("widths", widths), ("gammas", gammas),
                            ("horizons", horizons)):
            object.__setattr__(self, name, value)
        check_float("plateau_atol", self.plateau_atol, 0.0)
        _check_common(self)

    def networks(self):
        return list(zip(self.depths, self.widths, self.gammas, self.horizons))


def _as_tuple(name, values) -> tuple:
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise ValueError(f"`{name}` must be a list, got {values!r}.")
    return tuple(values)


def _first_time(ts: np.ndarray, hit: np.ndarray) -> float:
    """The first save time where `hit` holds (+inf if never)."""
    idx = np.flatnonzero(hit)
    return float(ts[idx[0]]) if idx.size else math.inf


def run_noisy_teacher(config: NoisyTeacherConfig, context: RunContext | None = None) -> Outcome:
    """Train each network from the NTK and the small initialisation and check Fig. 6's claims.

    **Returns:** an `Outcome` with arrays over (network, init, seed, time) — `ts`, `loss`,
    `test_loss`, `grad_norm`, `rank` — and over (network, init, seed) the test loss's minimum
    along the path (`best_test`), the rank there (`best_rank`), the times the rank first
    reaches the teacher's rank and one more (`t_rank`, `t_rank_next`), the ‖∇L‖ dips and
    largest rise (`grad_dips`, `grad_rebound`) and the width of its highest peak in decades
    (`peak_width`); values `rows` and the least-squares solution's test loss and singular
    values.
    """
    context = context or RunContext(False)
    problem = sj.noisy_low_rank_problem(
        jr.key(config.problem_seed), config.n, config.rank, config.noise, config.n_train,
        config.n_test,
    )
    train, test = problem.train, problem.test
    # The minimiser of C: least squares (n_train ≥ n inputs in general position).
    ols = np.linalg.lstsq(np.asarray(train.x), np.asarray(train.y), rcond=None)[0].T
    ols_test = float(test.matrix_cost(jnp.asarray(ols)))
    ols_sv = np.linalg.svd(ols, compute_uv=False)
    test_cost = jax.jit(jax.vmap(test.matrix_cost))
    start = time.perf_counter()
    n_net = len(config.depths)
    get = {}
    failures = []
    with context.sweep("gradient flows", 2 * n_net, len(config.seeds)) as bar:
        for k, (depth, w, gamma, horizon) in enumerate(config.networks()):
            shape = (config.n,) + (w,) * (depth - 1) + (config.n,)
            saveat = np.concatenate([[0.0], np.geomspace(1e-6 * horizon, horizon,
                                                          config.n_save - 1)])
            result = sj.sweep(
                train,
                _draw(shape),
                horizon,
                alphas=[_alpha(w, 1 - 1 / depth), _alpha(w, gamma)],
                seeds=config.seeds,
                saveat=saveat,
                checkpoint=context.checkpoint(f"depth-{depth}"),
                on_chunk=bar.on_chunk,
                **_flow_options(config, [horizon]),
            )
            sol = result.solution
            matrices = np.asarray(sol.params)
            measures = {
                "ts": np.asarray(sol.ts),
                "loss": np.asarray(sol.loss),
                "grad_norm": np.asarray(sol.grad_norm),
                "test_loss": np.asarray(
                    test_cost(jnp.asarray(matrices.reshape(-1, config.n, config.n)))
                ).reshape(matrices.shape[:-2]),
                "rank": np.asarray(sj.numerical_rank(matrices, config.rank_tol)),
                "steps": np.asarray(sol.stats["num_steps"]),
            }
            for key, value in measures.items():
                get.setdefault(key, []).append(value)
            failures += [f"L = {depth}: {line}" for line in _failures(result)]
    get = {k: np.stack(v) for k, v in get.items()}  # (network, init, seed, ...)
    get.update(_noisy_measures(config, get))
    dims, dims_t = ("network", "init", "seed"), ("network", "init", "seed", "time")
    arrays = {
        "depths": Array(("network",), np.asarray(config.depths), "depth L"),
        "widths": Array(("network",), np.asarray(config.widths), "hidden width w"),
        "gammas": Array(
            ("network", "init"),
            np.asarray([[1 - 1 / d, g] for d, g in zip(config.depths, config.gammas)]),
            "γ of the NTK and of the small initialisation, σ² = w^(−γ)",
        ),
        "seeds": Array(("seed",), np.asarray(config.seeds), "keys of θ̃"),
        "ts": Array(dims_t, get["ts"], "save times t"),
        "loss": Array(dims_t, get["loss"], "training loss (MSE, noisy labels)"),
        "test_loss": Array(dims_t, get["test_loss"], "test loss (MSE, noiseless labels)"),
        "grad_norm": Array(dims_t, get["grad_norm"], "‖∇L(θ(t))‖"),
        "rank": Array(dims_t, get["rank"], f"rank of A_θ(t), tol {config.rank_tol:g}"),
        "best_test": Array(dims, get["best_test"], "least test loss along the path"),
        "best_rank": Array(dims, get["best_rank"], "rank where the test loss is least"),
        "t_rank": Array(dims, get["t_rank"], f"first save time with rank ≥ {config.rank}"),
        "t_rank_next": Array(
            dims, get["t_rank_next"], f"first save time with rank ≥ {config.rank + 1}"
        ),
        "grad_dips": Array(dims, get["grad_dips"], "dips of ‖∇L‖ by ≥ 10× (saddles)"),
        "grad_rebound": Array(
            dims, get["grad_rebound"], "largest rise of ‖∇L‖ over its running minimum, relative"
        ),
        "peak_width": Array(dims, get["peak_width"], "FWHM of the highest ‖∇L‖ peak, decades"),
    }
    rows = _noisy_rows(config, get, ols_test)
    outcome = Outcome(
        arrays=arrays,
        values={
            "rows": rows,
            "least_squares_test": ols_test,
            "least_squares_singular_values": ols_sv.tolist(),
            "wall_time": time.perf_counter() - start,
        },
        checks=_noisy_claims(config, get, ols_test, ols_sv),
        figures={"noisy_teacher.png": lambda fig: plot_noisy_teacher(arrays, config, ols_test,
                                                                     fig)},
        failures=failures,
    )
    outcome.table = noisy_teacher_table(rows, ols_test, ols_sv, config)
    return outcome


def _noisy_measures(config, get) -> dict:
    """Per (network, init, seed): the best test loss along the path and the rank there, the
    times the rank reaches the teacher's rank and one more, ‖∇L‖ dips, rebound, peak width."""
    shape = get["loss"].shape[:3]
    out = {k: np.zeros(shape) for k in ("best_test", "best_rank", "t_rank", "t_rank_next",
                                        "grad_dips", "grad_rebound", "peak_width")}
    for idx in np.ndindex(*shape):
        ts, test, rank, g = (get[k][idx] for k in ("ts", "test_loss", "rank", "grad_norm"))
        best = int(np.argmin(test))
        out["best_test"][idx] = test[best]
        out["best_rank"][idx] = rank[best]
        out["t_rank"][idx] = _first_time(ts, rank >= config.rank)
        out["t_rank_next"][idx] = _first_time(ts, rank >= config.rank + 1)
        out["grad_dips"][idx] = grad_dips(g)
        out["grad_rebound"][idx] = grad_rebound(g)
        out["peak_width"][idx] = peak_width(ts, g)
    return out


def _noisy_claims(config, get, ols_test, ols_sv) -> list:
    """The claims of Jacot et al. Fig. 6 (see `run_noisy_teacher`), per network."""
    n, r = config.n, config.rank
    checks = []
    med = {k: np.median(get[k], axis=-1) for k in ("best_test", "best_rank", "grad_dips",
                                                   "peak_width")}
    # Escape times ∝ 1/(singular value of the gradient) at every depth (log(1/α)/s for L = 2,
    # 1/(s·α^(L−2)) for L > 2, SPEC §8), and at the rank-r saddle the gradient's top singular
    # value is that of the least-squares residual: the plateau at rank r lasts σ_r/σ_{r+1}.
    plateau_theory = float(np.log10(ols_sv[r - 1] / ols_sv[r]))
    dof = r * (2 * n - r) / n**2
    for k, (depth, w, _, _) in enumerate(config.networks()):
        tag = f"L = {depth}, w = {w}"
        ntk, small = 0, 1
        checks.append(
            check_equal(
                f"{tag}, NTK: final rank (median)", float(np.median(get["rank"][k, ntk, :, -1])),
                float(n), note="Fig. 6 black: full rank, the noise is fitted (no low-rank bias)",
            )
        )
        checks.append(
            check_at_least(
                f"{tag}, NTK: least test loss along the path / least squares'",
                float(med["best_test"][k, ntk] / ols_test), 0.9,
                note="the lazy path never passes a low-rank solution; it ends at the least-"
                "squares fit",
            )
        )
        checks.append(
            check_at_most(
                f"{tag}, NTK: largest relative rise of ‖∇L‖ (all seeds)",
                float(np.max(get["grad_rebound"][k, ntk])), 0.05,
                note="Fig. 6: ‖∇L‖ decreases to 0 monotonically; at finite width the NTK still "
                "grows a little at first (≤ 1 % measured at w = 50), while leaving a saddle "
                "multiplies ‖∇L‖ by ≥ 10",
            )
        )
        rank = get["rank"][k, small]
        checks.append(
            check_equal(
                f"{tag}, saddle-to-saddle: trajectories whose rank is not 0, 1, 2, … one at a "
                "time", int(np.sum(~_incremental(rank) | (rank[:, 0] != 0))), 0,
                note="Fig. 6: the rank increases incrementally, one saddle per direction",
            )
        )
        checks.append(
            check_equal(
                f"{tag}, saddle-to-saddle: rank where the test loss is least (median)",
                float(med["best_rank"][k, small]), float(r),
                note="the path passes the low-rank solution of the teacher's rank",
            )
        )
        checks.append(
            check_close(
                f"{tag}, saddle-to-saddle: least test loss / least squares'",
                float(med["best_test"][k, small] / ols_test), dof, 0.4,
                note=f"reduced-rank against full least squares: r(2n−r)/n² = {dof:.2f} of the "
                "degrees of freedom carry noise; one problem draw, hence the wide tolerance",
            )
        )
        plateau = np.log10(get["t_rank_next"][k, small] / get["t_rank"][k, small])
        checks.append(
            check_abs(
                f"{tag}, saddle-to-saddle: decades spent at rank {r} (median)",
                float(np.median(plateau)), plateau_theory, config.plateau_atol,
                note=f"log10(σ_{r}/σ_{r + 1}) of the least-squares fit: the noise directions "
                "escape ∝ 1/(their singular value) later",
            )
        )
        checks.append(
            check_at_least(
                f"{tag}, saddle-to-saddle: dips of ‖∇L‖ by ≥ 10× (median)",
                float(med["grad_dips"][k, small]), 1,
                note="Fig. 6: ‖∇L‖ falls towards 0 near a saddle and rises as the flow escapes",
            )
        )
    depths = np.asarray(config.depths)
    if len(depths) > 1:
        shallow, deep = int(np.argmin(depths)), int(np.argmax(depths))
        checks.append(
            check_at_most(
                f"highest ‖∇L‖ peak, L = {depths[deep]} over L = {depths[shallow]} (FWHM in "
                "decades of t)", float(med["peak_width"][deep, 1] / med["peak_width"][shallow, 1]),
                1.0,
                note="Fig. 6: sharper peaks when deep; an escape is a finite-time blow-up for "
                "L > 2, an exponential for L = 2 (SPEC §5)",
            )
        )
    return checks


def _noisy_rows(config, get, ols_test) -> list[dict]:
    rows = []
    for k, (depth, w, gamma, horizon) in enumerate(config.networks()):
        for i, kind in enumerate(_KINDS):
            rows.append(
                {
                    "depth": int(depth),
                    "width": int(w),
                    "init": kind,
                    "gamma": float(1 - 1 / depth if i == 0 else gamma),
                    "horizon": float(horizon),
                    "final_train": float(np.median(get["loss"][k, i, :, -1])),
                    "final_test": float(np.median(get["test_loss"][k, i, :, -1])),
                    "best_test": float(np.median(get["best_test"][k, i])),
                    "best_rank": float(np.median(get["best_rank"][k, i])),
                    "final_rank": float(np.median(get["rank"][k, i, :, -1])),
                    "t_rank": float(np.median(get["t_rank"][k, i])),
                    "t_rank_next": float(np.median(get["t_rank_next"][k, i])),
                    "grad_dips": float(np.median(get["grad_dips"][k, i])),
                    "peak_width": float(np.median(get["peak_width"][k, i])),
                    "steps": int(np.max(get["steps"][k, i])),
                }
            )
    return rows


def noisy_teacher_table(rows, ols_test, ols_sv, config) -> str:
    """The rows of `run_noisy_teacher` as a text table (medians over seeds)."""
    head = (
        f"{'L':>2} {'w':>4} {'init':>16} {'γ':>5} {'T':>7} {'train':>8} {'test':>8} "
        f"{'best test':>9} {'@rank':>5} {'rank':>4} {f't(r≥{config.rank})':>9} "
        f"{f't(r≥{config.rank + 1})':>9} {'dips':>4} {'peak dec':>8} {'steps':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['depth']:>2d} {r['width']:>4d} {r['init']:>16} {r['gamma']:>5.3g} "
            f"{r['horizon']:>7.4g} {r['final_train']:>8.4f} {r['final_test']:>8.4f} "
            f"{r['best_test']:>9.4f} {r['best_rank']:>5g} {r['final_rank']:>4g} "
            f"{r['t_rank']:>9.3g} {r['t_rank_next']:>9.3g} {r['grad_dips']:>4g} "
            f"{r['peak_width']:>8.3f} {r['steps']:>6d}"
        )
    sv = ", ".join(f"{s:.3g}" for s in ols_sv)
    lines += ["", f"least squares: test loss {ols_test:.4f}, singular values {sv}"]
    return "\n".join(lines)


def plot_noisy_teacher(arrays: dict, config: NoisyTeacherConfig, ols_test: float, fig) -> None:
    """Jacot et al. Fig. 6: per network (rows) the train (solid) and test (dashed) loss, the
    rank and ‖∇L‖ against t, NTK initialisation in black, small initialisation in colour."""
    get = {k: a.values for k, a in arrays.items()}
    n_net = len(get["depths"])
    fig.set_size_inches(15, 3.8 * n_net)
    axes = np.asarray(fig.subplots(n_net, 3, squeeze=False))
    colors = ("tab:red", "tab:blue", "tab:green", "tab:purple")
    for k in range(n_net):
        for i, kind in enumerate(_KINDS):
            color = "black" if i == 0 else colors[k % len(colors)]
            for s in range(get["ts"].shape[2]):
                t = get["ts"][k, i, s]
                inside = t > 0
                label = f"{kind} (γ = {get['gammas'][k, i]:.3g})" if s == 0 else None
                kw = dict(color=color, lw=1, alpha=0.7)
                axes[k, 0].plot(t[inside], get["loss"][k, i, s][inside], label=label, **kw)
                axes[k, 0].plot(t[inside], get["test_loss"][k, i, s][inside], ls="--", **kw)
                axes[k, 1].plot(t[inside], get["rank"][k, i, s][inside], **kw)
                axes[k, 2].plot(t[inside], get["grad_norm"][k, i, s][inside], **kw)
        axes[k, 0].axhline(ols_test, color="0.5", ls=":", lw=1, label="least squares (test)")
        names = ("loss (train —, test --)", f"rank (tol {config.rank_tol:g})", "‖∇L‖")
        for j, name in enumerate(names):
            _log_time_axis(axes[k, j])
            axes[k, j].set_title(f"L = {get['depths'][k]}, w = {get['widths'][k]}: {name}")
            if j != 1:
                axes[k, j].set_yscale("log")
        axes[k, 0].legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("t")
    fig.suptitle(
        f"Noisy rank-{config.rank} teacher ({config.n}×{config.n}, noise {config.noise:g}): "
        "NTK against saddle-to-saddle initialisation"
    )


register(
    "noisy-teacher",
    NoisyTeacherConfig,
    "shallow and deep linear nets on a noisy low-rank teacher, NTK against small "
    "initialisation (Jacot et al. Fig. 6)",
)(run_noisy_teacher)
