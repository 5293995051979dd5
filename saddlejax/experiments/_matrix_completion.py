"""The main job: saddle-to-saddle dynamics of a deep linear network on matrix completion.

Jacot et al., Fig. 1 (SPEC §11): L = 4, w = 100, a 10×10 rank-3 matrix with half of its entries
observed, θ₀ = α·θ̃. As α → 0 the loss shows a staircase of plateaus (saddles of rank 0, 1, 2)
and the escape time from the origin scales like α^{−(L−2)} (SPEC §8), so α^{L−2}·t_α(r) → T_H(θ̃).
"""

import dataclasses
import json
import math
import time
from pathlib import Path

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
from ._plot import colormap, figure


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


def run_matrix_completion(
    config: MatrixCompletionConfig, *, progress: bool = True, checkpoint: str | Path | None = None
) -> dict:
    """Run the sweep over α × seeds and summarise it per α.

    **Arguments:** `config`; `progress`: print a line per finished chunk of seeds;
    `checkpoint`: a folder from which an interrupted run resumes (see `saddlejax.sweep`).

    **Returns:** a dict with `config`, `rows` (per α: escape time, α^{L−2}·t_α, plateaus, final
    loss and rank, median over seeds), `trajectories` (arrays: ts, loss, grad_norm, rank,
    event_time with axes (α, seed, time)) and `failures`.
    """
    problem = sj.matrix_completion_problem(
        jr.key(config.problem_seed), config.n, config.rank, config.observed
    )
    start = time.perf_counter()
    result = sj.sweep(
        problem,
        _draw(config.widths),
        config.t1,
        alphas=config.alphas,
        seeds=config.seeds,
        # On CPUs the seeds are looped over the host devices: a chunk of one seed per device
        # keeps them all busy and makes it the unit of checkpointing, so a run killed mid-α
        # loses at most one chunk. On accelerators an α's seeds form one vmapped batch.
        chunk_size=len(jax.devices()) if jax.default_backend() == "cpu" else None,
        solver=sj.solvers.solver_from_name(config.solver),
        rtol=config.rtol,
        n_save=config.n_save,
        observe=_matrix,
        event=sj.EscapeRadius(config.escape_radius),
        stop_at_event=False,
        checkpoint=checkpoint,
        progress=progress,
    )
    sol = result.solution
    ranks = np.asarray(sj.numerical_rank(sol.params, config.rank_tol))
    return {
        "config": dataclasses.asdict(config),
        "rows": _rows(config, result, ranks),
        "trajectories": {
            "alphas": np.asarray(result.alphas),
            "ts": np.asarray(sol.ts),
            "loss": np.asarray(sol.loss),
            "grad_norm": np.asarray(sol.grad_norm),
            "rank": ranks,
            "event_time": np.asarray(sol.event_time),
        },
        "failures": result.failures(),
        "wall_time": time.perf_counter() - start,
    }


def _rows(config: MatrixCompletionConfig, result, ranks: np.ndarray) -> list[dict]:
    """Per α, the medians over seeds of the escape time, α^{L−2}·t_α, the number of plateaus,
    the final loss and rank; the most steps of a seed; the wall time."""
    sol = result.solution
    ts, loss, event = np.asarray(sol.ts), np.asarray(sol.loss), np.asarray(sol.event_time)
    rows = []
    for i, alpha in enumerate(result.alphas):
        n_plateaus = [
            sj.detect_plateaus(ts[i, j], loss[i, j]).n_plateaus for j in range(len(result.seeds))
        ]
        scale = alpha ** (config.depth - 2)
        rows.append(
            {
                "alpha": float(alpha),
                "escape_time": float(np.median(event[i])),
                "scaled_escape_time": float(np.median(event[i]) * scale),
                "plateaus": int(np.median(n_plateaus)),
                "final_loss": float(np.median(loss[i, :, -1])),
                "final_rank": int(np.median(ranks[i, :, -1])),
                "steps": int(np.max(np.asarray(sol.stats["num_steps"])[i])),
                "wall_time": float(result.stats["wall_time"][i]),
            }
        )
    return rows


def matrix_completion_table(summary: dict) -> str:
    """The per-α rows of `run_matrix_completion` as a text table."""
    depth = summary["config"]["depth"]
    r = summary["config"]["escape_radius"]
    head = (
        f"{'α':>8} {f't_α(r={r:g})':>12} {f'α^{depth - 2}·t_α':>10} {'plateaus':>8} "
        f"{'final loss':>11} {'rank':>4} {'steps':>7} {'wall s':>7}"
    )
    lines = [head, "-" * len(head)]
    for row in summary["rows"]:
        lines.append(
            f"{row['alpha']:>8.3g} {row['escape_time']:>12.4g} {row['scaled_escape_time']:>10.4g} "
            f"{row['plateaus']:>8d} {row['final_loss']:>11.3e} {row['final_rank']:>4d} "
            f"{row['steps']:>7d} {row['wall_time']:>7.1f}"
        )
    return "\n".join(lines)


def save_matrix_completion(summary: dict, out: str | Path) -> list[Path]:
    """Write `summary.json` (config, rows, failures) and `trajectories.npz` into the folder
    `out`; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "trajectories.npz", **summary["trajectories"])
    meta = {k: v for k, v in summary.items() if k != "trajectories"}
    (out / "summary.json").write_text(json.dumps(meta, indent=2, default=str))
    return [out / "summary.json", out / "trajectories.npz"]


def plot_matrix_completion(summary: dict, path: str | Path) -> Path:
    """Loss, rank and ‖∇L‖ against α^{L−2}·t for every α and seed (Jacot et al. Fig. 1); needs
    matplotlib (the `plot` extra)."""
    traj, config = summary["trajectories"], summary["config"]
    depth = config["depth"]
    fig = figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    colors = colormap("viridis")(np.linspace(0, 0.85, len(traj["alphas"])))
    for i, alpha in enumerate(traj["alphas"]):
        scale = alpha ** (depth - 2)
        for j in range(traj["ts"].shape[1]):
            t = traj["ts"][i, j] * scale
            label = f"α = {alpha:g}" if j == 0 else None
            kw = dict(color=colors[i], lw=1.2, alpha=0.8, label=label)
            axes[0].semilogy(t, traj["loss"][i, j], **kw)
            axes[1].plot(t, traj["rank"][i, j], **kw)
            axes[2].semilogy(t, np.maximum(traj["grad_norm"][i, j], 1e-16), **kw)
    for ax, name in zip(axes, ("loss", f"rank (tol {config['rank_tol']:g})", "‖∇L‖")):
        ax.set_xlabel(f"α^{depth - 2} · t")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(
        f"Saddle-to-saddle: deep linear net (L = {depth}, w = {config['width']}), "
        f"{config['n']}×{config['n']} rank-{config['rank']} completion"
    )
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
