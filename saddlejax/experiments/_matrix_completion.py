"""The main job: saddle-to-saddle dynamics of a deep linear network on matrix completion.

Jacot et al., Fig. 1 (SPEC §11): L = 4, w = 100, a 10×10 rank-3 matrix with half of its entries
observed, θ₀ = α·θ̃. As α → 0 the loss shows a staircase of plateaus (saddles of rank 0, 1, 2)
whose levels are the losses of the greedy low-rank algorithm's saddles (Conjecture 3, §5.3), the
rank grows one by one, and the escape time from the origin scales like α^{−(L−2)} (SPEC §8), so
α^{L−2}·t_α(r) → T_H(θ̃). Registered as the experiment "matrix-completion" (presets
`jacot-fig1`, the default of `saddlejax run`).
"""

import dataclasses
import math
import time

import jax
import jax.random as jr
import numpy as np

import saddlejax as sj

from ._checks import (
    MAX_SEED,
    check_choice,
    check_float,
    check_floats,
    check_int,
    check_params,
)
from ._config import register
from ._plot import colormap
from ._progress import RunContext
from ._record import Array, Outcome, check_at_least, check_at_most, check_equal


@dataclasses.dataclass(frozen=True)
class MatrixCompletionConfig:
    """Settings of the main job; the defaults finish in a few minutes on 2 CPU cores.

    `n`, `rank`, `observed`, `problem_seed`: the problem, an n×n rank-`rank` matrix with an
    `observed` fraction of its entries known (`matrix_completion_problem`).
    `width`, `depth`: the deep linear network (n, width, …, width, n) of L = `depth` ≥ 2 layers
    (for L = 1 the origin is not a saddle), at most `MAX_PARAMS` = 10⁷ weights.
    `alphas`: the scales of θ₀ = α·θ̃, distinct and in (0, 1) (small initialisation), with
    α^{L−1} ≥ 10⁻²⁰⁰: the flow leaves α·θ̃ at a speed ∝ α^{L−1}, which must stay far from
    float64 underflow. `seeds`: the keys of θ̃, distinct ints in [0, 2³²).
    `t1_factor`: the flow runs to t1 = t1_factor / α^{L−2} (the plateaus scale like α^{−(L−2)}).
    `solver`: one of `saddlejax.solvers.SOLVER_NAMES` (a name, so that the config is plain data
    in summary.json). "auto" (Tsit5 near the origin, Rosenbrock–CG on the stiff plateaus, where
    λ_max(∇²L) reaches ~10³ on this problem): α = 0.01 in ~4,000 steps where Tsit5 needs > 2·10⁵.
    `rtol`: in [10⁻¹⁴, 1) (below, float64 round-off cannot meet it).
    `greedy`: also run the greedy low-rank algorithm (its saddles overlaid, their losses checked
    against the plateau levels). `scaled_time_rtol`: the tolerance of the check that α^{L−2}·t_α
    is the same at every α (its limit is approached at rate O(α^{…}), SPEC §8: 0.1 holds from
    α ≤ 0.1 on this problem); `greedy_rtol`: of plateau level against greedy saddle loss.
    `escape_radius`: r of the escape time t_α(r) = first t with ‖θ(t)‖ = r. It must exceed the
    start α‖θ̃‖ for every α (`init_norm` ≈ 14.8 for the defaults) and lie below the norm where the
    flow ends (`final_norm` ≈ 6.2); a radius the flow still misses gives t_α = inf, which the CLI
    reports. `rank_tol`: the singular-value threshold of the numerical rank. `n_save`: saved
    times per trajectory.

    Every field is checked here, before any work: a bad value raises a `ValueError` naming it.
    """

    n: int = 10
    rank: int = 3
    observed: float = 0.5
    width: int = 100
    depth: int = 4
    alphas: tuple[float, ...] = (0.1, 0.03, 0.01)
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    problem_seed: int = 0
    t1_factor: float = 15.0
    escape_radius: float = 4.0
    rank_tol: float = 0.1
    solver: str = "auto"
    rtol: float = 1e-6
    n_save: int = 512
    greedy: bool = True
    scaled_time_rtol: float = 0.1
    greedy_rtol: float = 0.1

    def __post_init__(self):
        check_int("n", self.n, 1)
        check_int("rank", self.rank, 1, self.n)
        check_float("observed", self.observed, 0.0, 1.0, high_open=False)
        check_int("problem_seed", self.problem_seed, 0, MAX_SEED)
        check_int("width", self.width, 1)
        check_int("depth", self.depth, 2, 100, why="L = 1 has no saddle at the origin")
        check_params(self.widths)
        why = "θ₀ = α·θ̃ is a small initialisation"
        alphas = check_floats("alphas", self.alphas, 0.0, 1.0, why=why)
        if not alphas:
            raise ValueError("`alphas` is empty; give at least one α in (0, 1).")
        object.__setattr__(self, "alphas", alphas)
        smallest = min(alphas)
        if (self.depth - 1) * math.log10(smallest) < -200:
            floor = 10 ** (-200 / (self.depth - 1))
            raise ValueError(
                f"`alphas` has α = {smallest:g}, too small for `depth` {self.depth}: the flow "
                f"leaves α·θ̃ at a speed ∝ α^(L−1), below float64's range; use α ≥ {floor:.2g}."
            )
        if isinstance(self.seeds, str) or not hasattr(self.seeds, "__iter__"):
            raise ValueError(f"`seeds` must be a list of integers, got {self.seeds!r}.")
        seeds = tuple(check_int("seeds", s, 0, MAX_SEED) for s in self.seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"`seeds` must list at least one seed, each once, got {seeds}.")
        object.__setattr__(self, "seeds", seeds)
        check_float("t1_factor", self.t1_factor, 0.0, why="the flow runs to t1 = factor/α^(L−2)")
        t1 = self.t1(smallest)
        if not t1 < 1e300:
            raise ValueError(
                f"`t1_factor` {self.t1_factor:g} gives t1 = {t1:.3g} at α = {smallest:g}, "
                "beyond float64; use a smaller `t1_factor` or larger `alphas`."
            )
        check_float("rank_tol", self.rank_tol, 0.0)
        solver = self.solver.lower() if isinstance(self.solver, str) else self.solver
        check_choice("solver", solver, sj.solvers.SOLVER_NAMES)
        why = "float64 round-off cannot meet an rtol below 1e-14"
        check_float("rtol", self.rtol, 1e-14, 1.0, low_open=False, why=why)
        check_int("n_save", self.n_save, 2, 10**6)
        if not isinstance(self.greedy, bool):
            raise ValueError(f"`greedy` must be true or false, got {self.greedy!r}.")
        check_float("scaled_time_rtol", self.scaled_time_rtol, 0.0)
        check_float("greedy_rtol", self.greedy_rtol, 0.0)
        r = check_float("escape_radius", self.escape_radius, 0.0)
        start = max(alphas) * self.init_norm
        if not r > start:
            raise ValueError(
                f"`escape_radius` {r:g} must exceed the start norm α·‖θ̃‖ ≈ "
                f"{self.init_norm:.4g}·α of every α, but α = {max(alphas):g} of `alphas` "
                f"starts at ≈ {start:.4g} (t_α would be meaningless); use a larger "
                "`escape_radius` or smaller `alphas`."
            )
        if not r < self.final_norm:
            raise ValueError(
                f"`escape_radius` {r:g} is out of reach: the flow ends near ‖θ‖ ≈ "
                f"{self.final_norm:.3g} (a balanced minimiser of the target's size), so t_α "
                f"would be inf; use an `escape_radius` between {start:.3g} and "
                f"{self.final_norm:.3g}."
            )

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.n,) + (self.width,) * (self.depth - 1) + (self.n,)

    @property
    def init_norm(self) -> float:
        """The expected ‖θ̃‖ = √(P/w) of the `DeepLinear` draw (entries N(0, 1/w), P weights);
        the draws concentrate around it (within ~1 % for the default P = 22,000)."""
        w = self.widths
        return math.sqrt(sum(a * b for a, b in zip(w[:-1], w[1:])) / self.width)

    @property
    def final_norm(self) -> float:
        """≈ ‖θ‖ where the flow ends: √(L·k^{1−1/L}·(n²·rank)^{1/L}), k = min(rank, width), the
        norm of a balanced network whose end-to-end matrix has the target's expected Frobenius
        norm n·√rank spread over k equal singular values (by Hölder, an upper estimate for a
        rank-k completion; the flow from a small initialisation stays balanced). For the
        defaults, √(L·rank·n^{2/L}) ≈ 6.2."""
        k, depth = min(self.rank, self.width), self.depth
        return math.sqrt(depth * k ** (1 - 1 / depth) * (self.n**2 * self.rank) ** (1 / depth))

    def t1(self, alpha: float) -> float:
        return self.t1_factor / alpha ** max(self.depth - 2, 1)


def _draw(widths):
    return lambda key: sj.nn.DeepLinear(widths, key=key)


def _matrix(model):
    return model.matrix()


def _test_loss(problem, matrices: np.ndarray) -> np.ndarray:
    """Mean squared error on the unobserved entries (NaN when every entry is observed)."""
    hidden = 1.0 - np.asarray(problem.mask)
    if not hidden.any():
        return np.full(matrices.shape[:-2], np.nan)
    err = (matrices - np.asarray(problem.target)) ** 2
    return (err * hidden).sum((-2, -1)) / hidden.sum()


def run_matrix_completion(config: MatrixCompletionConfig, context: RunContext | None = None):
    """Run the sweep over α × seeds, the greedy low-rank algorithm, and check the claims.

    **Arguments:** `config`; `context`: progress bars and the checkpoint folder from which an
    interrupted run resumes (default: none of either).

    **Returns:** an `Outcome`: arrays over (alpha, seed, time) — `ts`, `loss`, `test_loss`
    (unobserved entries), `grad_norm`, `rank`, `nuclear_norm` — and (alpha, seed) `event_time`,
    `plateaus`, and `greedy_loss`/`greedy_rank` per greedy saddle; values `rows` (per α:
    escape time, α^{L−2}·t_α, plateaus, final loss and rank, median over seeds) and the checks.
    """
    context = context or RunContext(False)
    problem = sj.matrix_completion_problem(
        jr.key(config.problem_seed), config.n, config.rank, config.observed
    )
    start = time.perf_counter()
    with context.sweep("gradient flows", len(config.alphas), len(config.seeds)) as bar:
        result = sj.sweep(
            problem,
            _draw(config.widths),
            config.t1,
            alphas=config.alphas,
            seeds=config.seeds,
            # On CPUs the seeds are looped over the host devices: a chunk of one seed per
            # device keeps them all busy and makes it the unit of checkpointing, so a run
            # killed mid-α loses at most one chunk. On accelerators an α's seeds form one
            # vmapped batch.
            chunk_size=jax.local_device_count() if jax.default_backend() == "cpu" else None,
            solver=sj.solvers.solver_from_name(config.solver),
            rtol=config.rtol,
            n_save=config.n_save,
            observe=_matrix,
            event=sj.EscapeRadius(config.escape_radius),
            stop_at_event=False,
            checkpoint=context.checkpoint("sweep"),
            progress=False,
            on_chunk=bar.on_chunk,
        )
    sol = result.solution
    matrices = np.asarray(sol.params)
    ts, loss = np.asarray(sol.ts), np.asarray(sol.loss)
    grad_norm = np.asarray(sol.grad_norm)
    ranks = np.asarray(sj.numerical_rank(matrices, config.rank_tol))
    plateaus = [
        [sj.detect_plateaus(ts[i, j], loss[i, j]) for j in range(len(config.seeds))]
        for i in range(len(config.alphas))
    ]
    greedy = None
    if config.greedy:
        with context.task("greedy low-rank saddles", 1) as task:
            greedy = sj.greedy_low_rank(problem, config.depth, rank_tol=config.rank_tol)
            task.advance(1, saddles=len(greedy.saddles))
    arrays = {
        "alphas": Array(("alpha",), np.asarray(result.alphas), "initialisation scales α"),
        "seeds": Array(("seed",), np.asarray(result.seeds), "keys of θ̃"),
        "ts": Array(("alpha", "seed", "time"), ts, "save times t"),
        "loss": Array(("alpha", "seed", "time"), loss, "training loss C(A_θ(t))"),
        "test_loss": Array(
            ("alpha", "seed", "time"), _test_loss(problem, matrices),
            "mean squared error on the unobserved entries",
        ),
        "grad_norm": Array(("alpha", "seed", "time"), grad_norm, "‖∇L(θ(t))‖"),
        "rank": Array(
            ("alpha", "seed", "time"), ranks, f"rank of A_θ(t), singular values > {config.rank_tol}"
        ),
        "nuclear_norm": Array(
            ("alpha", "seed", "time"), np.asarray(sj.nuclear_norm(matrices)), "‖A_θ(t)‖_*"
        ),
        "event_time": Array(
            ("alpha", "seed"), np.asarray(sol.event_time),
            f"escape time t_α(r): first t with ‖θ(t)‖ = {config.escape_radius}",
        ),
        "plateaus": Array(
            ("alpha", "seed"), np.array([[p.n_plateaus for p in row] for row in plateaus]),
            "number of loss plateaus (detect_plateaus)",
        ),
    }
    if greedy is not None:
        arrays["greedy_loss"] = Array(("saddle",), greedy.losses, "loss of the greedy saddle ϑ^k")
        arrays["greedy_rank"] = Array(("saddle",), greedy.ranks, "rank of the greedy saddle ϑ^k")
    rows = _rows(config, result, ranks, plateaus)
    failures = [f"α = {a:g}, seed {s}: {m}" for a, s, m in result.failures()]
    outcome = Outcome(
        arrays=arrays,
        values={"rows": rows, "wall_time": time.perf_counter() - start},
        checks=_claims(config, arrays, plateaus, greedy),
        figures={"run.png": lambda fig: plot_matrix_completion(arrays, config, fig)},
        failures=failures,
        warnings=_unescaped(config, arrays["event_time"].values, result.failures()),
    )
    outcome.table = matrix_completion_table(rows, config)
    return outcome


def _unescaped(config, event: np.ndarray, failures) -> list[str]:
    """A warning per α where a seed that did not fail never reached ‖θ‖ = r (t_α = inf: the
    radius is out of reach, or t1 too short)."""
    failed = {(a, s) for a, s, _ in failures}
    out = []
    for i, alpha in enumerate(config.alphas):
        missed = [
            s for j, s in enumerate(config.seeds)
            if not np.isfinite(event[i, j]) and (alpha, s) not in failed
        ]
        if missed:
            r = config.escape_radius
            out.append(
                f"t_α(r = {r:g}) = inf at α = {alpha:g} for {len(missed)} of "
                f"{len(config.seeds)} seeds: the flow did not reach ‖θ‖ = {r:g} by t1 = "
                f"{config.t1(alpha):.4g}; raise `t1_factor`, or lower `escape_radius` (the flow "
                f"ends near ‖θ‖ ≈ {config.final_norm:.2g})"
            )
    return out


def _claims(config, arrays, plateaus, greedy) -> list:
    """The checks of Jacot et al. Fig. 1: the rank ends at the target's and never decreases
    (incremental learning), α^{L−2}·t_α is independent of α (SPEC §8), and at the smallest α a
    typical trajectory has a plateau at the loss of every greedy saddle below the minimum
    (Conjecture 3; a θ̃ whose first two directions escape together skips the rank-1 one)."""
    rank = arrays["rank"].values
    checks = []
    if config.width >= config.rank:
        checks.append(
            check_equal(
                "final rank (every α and seed)", sorted(set(rank[..., -1].ravel().tolist())),
                [config.rank], note="the target's rank",
            )
        )
    drops = int(np.sum(np.any(np.diff(rank, axis=-1) < 0, axis=-1)))
    checks.append(
        check_equal(
            "trajectories whose rank decreases", drops, 0,
            note="incremental learning: each saddle includes the previous one",
        )
    )
    event = arrays["event_time"].values
    alphas = arrays["alphas"].values
    if config.depth > 2 and len(alphas) > 1:
        scaled = np.median(event, axis=1) * alphas ** (config.depth - 2)
        spread = float((scaled.max() - scaled.min()) / np.mean(scaled))
        checks.append(
            check_at_most(
                "α^(L−2)·t_α, relative spread over α", spread, config.scaled_time_rtol,
                note="→ T_H(θ̃) as α → 0 (SPEC §8, Lemma 13)",
            )
        )
    if greedy is not None:
        i = int(np.argmin(alphas))
        saddles = greedy.losses[:-1]  # the last greedy point is the minimum
        visited = [
            sum(bool(np.any(np.abs(p.levels - c) <= config.greedy_rtol * c)) for c in saddles)
            for p in plateaus[i]
        ]
        checks.append(
            check_at_least(
                f"greedy saddles visited at α = {alphas[i]:g} (median over seeds)",
                float(np.median(visited)), len(saddles),
                note=f"a plateau within {config.greedy_rtol:g} of each greedy saddle's loss "
                f"ϑ⁰…ϑ^{len(saddles) - 1} (Conjecture 3, §5.3); fewer when α is too large for "
                "the plateaus to separate",
            )
        )
    return checks


def _rows(config: MatrixCompletionConfig, result, ranks: np.ndarray, plateaus) -> list[dict]:
    """Per α, the medians over seeds of the escape time, α^{L−2}·t_α, the number of plateaus,
    the final loss and rank; the most steps of a seed; the wall time."""
    sol = result.solution
    loss, event = np.asarray(sol.loss), np.asarray(sol.event_time)
    rows = []
    for i, alpha in enumerate(result.alphas):
        scale = alpha ** (config.depth - 2)
        rows.append(
            {
                "alpha": float(alpha),
                "escape_time": float(np.median(event[i])),
                "scaled_escape_time": float(np.median(event[i]) * scale),
                "plateaus": int(np.median([p.n_plateaus for p in plateaus[i]])),
                "final_loss": float(np.median(loss[i, :, -1])),
                "final_rank": int(np.median(ranks[i, :, -1])),
                "steps": int(np.max(np.asarray(sol.stats["num_steps"])[i])),
                "wall_time": float(result.stats["wall_time"][i]),
            }
        )
    return rows


def matrix_completion_table(rows: list[dict], config: MatrixCompletionConfig) -> str:
    """The per-α rows of `run_matrix_completion` as a text table."""
    depth, r = config.depth, config.escape_radius
    head = (
        f"{'α':>8} {f't_α(r={r:g})':>12} {f'α^{depth - 2}·t_α':>10} {'plateaus':>8} "
        f"{'final loss':>11} {'rank':>4} {'steps':>7} {'wall s':>7}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(
            f"{row['alpha']:>8.3g} {row['escape_time']:>12.4g} {row['scaled_escape_time']:>10.4g} "
            f"{row['plateaus']:>8d} {row['final_loss']:>11.3e} {row['final_rank']:>4d} "
            f"{row['steps']:>7d} {row['wall_time']:>7.1f}"
        )
    return "\n".join(lines)


def plot_matrix_completion(arrays: dict, config: MatrixCompletionConfig, fig) -> None:
    """Train loss, test loss (unobserved entries), rank and ‖∇L‖ against α^{L−2}·t for every α
    and seed, the greedy saddles' losses as dotted levels (Jacot et al. Fig. 1), into `fig`."""
    depth = config.depth
    fig.set_size_inches(19, 4.2)
    axes = fig.subplots(1, 4)
    alphas = arrays["alphas"].values
    colors = colormap("viridis")(np.linspace(0, 0.85, len(alphas)))
    get = {k: a.values for k, a in arrays.items()}
    for i, alpha in enumerate(alphas):
        scale = alpha ** (depth - 2)
        for j in range(get["ts"].shape[1]):
            t = get["ts"][i, j] * scale
            label = f"α = {alpha:g}" if j == 0 else None
            kw = dict(color=colors[i], lw=1.2, alpha=0.8)
            axes[0].semilogy(t, get["loss"][i, j], label=label, **kw)
            axes[1].semilogy(t, get["test_loss"][i, j], **kw)
            axes[2].plot(t, get["rank"][i, j], label=label, **kw)
            axes[3].semilogy(t, np.maximum(get["grad_norm"][i, j], 1e-16), **kw)
    for k, level in enumerate(get.get("greedy_loss", [])):
        label = "greedy saddles" if k == 0 else None
        axes[0].axhline(level, color="0.4", ls=":", lw=1, label=label)
    titles = (
        "training loss", "test loss (unobserved entries)", f"rank (tol {config.rank_tol:g})",
        "‖∇L‖",
    )
    for ax, name in zip(axes, titles):
        ax.set_xlabel(f"α^{depth - 2} · t")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(
        f"Saddle-to-saddle: deep linear net (L = {depth}, w = {config.width}), "
        f"{config.n}×{config.n} rank-{config.rank} completion"
    )


register(
    "matrix-completion",
    MatrixCompletionConfig,
    "deep linear network on matrix completion from θ₀ = α·θ̃: plateaus, ranks, escape times, "
    "greedy saddles (Jacot et al. Fig. 1)",
)(run_matrix_completion)
