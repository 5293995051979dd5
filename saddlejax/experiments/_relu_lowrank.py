"""The first escape direction of deep ReLU networks: low-rank bias and escape speed against depth
(Bantzis, Simon & Jacot, arXiv 2505.21722; SPEC §9).

At the origin a bias-free depth-L ReLU net is (L, 2L)-approximately homogeneous; its optimal
escape direction ρ* minimises H(θ) = Σ_i ⟨∂ℓ/∂f(0, y_i), f_θ(x_i)⟩ on the unit sphere and
s* = −L·H(ρ*) (SPEC §5). The paper's claims: the deeper layers of ρ* are nearly rank one
(σ₁(W_ℓ) ≥ ℓ^{1/4}σ_i(W_ℓ), i ≥ 2), and the optimal escape speed is non-decreasing in depth.

Normalisation. H is linear in each W_ℓ (ReLU is positively homogeneous), so on the sphere
Σ_ℓ‖W_ℓ‖² = 1 its minimum has balanced layers ‖W_ℓ‖² = 1/L (AM–GM on Π_ℓ‖W_ℓ‖), and
s* = L^{−(L−2)/2}·ŝ, with ŝ = −min H over nets whose every layer has unit Frobenius norm. For a
deep linear net ŝ = σ₁(G) at every depth; the library's s* (all parameters on one sphere, the
convention of Jacot et al.) falls like L^{−(L−2)/2} for both. "Non-decreasing in depth" is a
statement about ŝ, and that is what is checked: a width-1 chain of unit weights passes a
ReLU's non-negative output unchanged, so every depth realises the single-neuron value
ŝ₁ = max_{‖w‖=1}‖Σ_i g_i σ(wᵀx_i)‖ (g_i = −∂ℓ/∂f(0, y_i)), which is exactly ŝ at L = 2
(Cauchy–Schwarz over the neurons).

Data: the synthetic tanh teacher of `saddlejax escape` (64 Gaussian inputs in R⁸, 3 outputs);
the paper uses MNIST, which cannot be downloaded here. Registered as "relu-lowrank".
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import saddlejax as sj

from ._checks import MAX_SEED, check_float, check_int
from ._config import register
from ._escape import EscapeConfig, _problem
from ._plot import colormap
from ._progress import RunContext
from ._record import Array, Outcome, check_at_least, check_at_most, check_close, check_equal


@dataclasses.dataclass(frozen=True)
class ReluLowRankConfig:
    """Settings of `run_relu_lowrank` (SPEC §9).

    `depths`: the depths L ≥ 2 of the bias-free ReLU nets (8, width, …, width, 3), distinct, at
    most 12. `width`: the hidden width. `negative_slope`: 0 for ReLU, in [0, 1) (leaky ReLU).
    `problem_seed`: the key of the teacher data (the same data as `saddlejax escape --preset
    relu3 --seed problem_seed`). `seed`: the key of the sphere solver's random starts.
    `restarts`, `max_steps`: of `relu_optimal_escape` (Riemannian descent per restart). H is
    only piecewise smooth and ρ* sits on a kink, where the KKT residual stalls at ~1e−3: every
    restart competes (the best speed found is a lower bound of s*), and the KKT residual of the
    best is reported. `n_starts`: random unit vectors of the independent single-neuron search.
    Check tolerances: `speed_rtol` (comparisons of normalised speeds: the sphere solver's
    restarts land on local maxima up to 9e-4 below ŝ₁ on other data seeds, at the quick
    settings), `balance_atol` (|L‖W_ℓ‖² − 1|), `rank_rtol` (singular values below `rank_rtol`·σ₁
    do not count in the bottleneck rank).

    Every field is checked here, before any work: a bad value raises a `ValueError` naming it.
    """

    depths: tuple[int, ...] = (2, 3, 4, 5, 6)
    width: int = 32
    negative_slope: float = 0.0
    problem_seed: int = 0
    seed: int = 0
    restarts: int = 16
    max_steps: int = 3000
    n_starts: int = 1024
    speed_rtol: float = 2e-3
    balance_atol: float = 1e-2
    rank_rtol: float = 0.1

    def __post_init__(self):
        if isinstance(self.depths, str) or not hasattr(self.depths, "__iter__"):
            raise ValueError(f"`depths` must be a list of depths, got {self.depths!r}.")
        why = "L = 1 has no saddle at the origin"
        depths = tuple(check_int("depths", d, 2, 12, why=why) for d in self.depths)
        if not depths or len(set(depths)) != len(depths):
            raise ValueError(f"`depths` must list at least one depth, each once, got {depths}.")
        object.__setattr__(self, "depths", tuple(sorted(depths)))
        check_int("width", self.width, 1, 1000)
        check_float("negative_slope", self.negative_slope, 0.0, 1.0, low_open=False,
                    why="0 is ReLU, (0, 1) leaky ReLU")
        check_int("problem_seed", self.problem_seed, 0, MAX_SEED)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("restarts", self.restarts, 1, 10**3)
        check_int("max_steps", self.max_steps, 1, 10**6)
        check_int("n_starts", self.n_starts, 1, 10**6)
        check_float("speed_rtol", self.speed_rtol, 0.0, 1.0)
        check_float("balance_atol", self.balance_atol, 0.0, 1.0)
        check_float("rank_rtol", self.rank_rtol, 0.0, 1.0)

    def widths(self, depth: int) -> tuple[int, ...]:
        return (8,) + (self.width,) * (depth - 1) + (3,)


def teacher_problem(problem_seed: int):
    """The teacher data of `saddlejax escape` (`EscapeConfig(problem="teacher")`): the same key
    split as `run_escape`."""
    key, _ = jr.split(jr.key(problem_seed))
    problem, _ = _problem(EscapeConfig(model="relu", problem="teacher"), key)
    return problem


def single_neuron_speed(
    problem, negative_slope: float, *, key, n_starts: int, steps: int = 300
) -> float:
    """ŝ₁ = max_{‖w‖=1} ‖Σ_i g_i σ(wᵀx_i)‖, g_i = −∂ℓ/∂f(0, y_i): the optimal speed of a
    width-1 chain, by a method independent of the sphere solver and on R^{n_in} only.

    Projected (sub)gradient ascent on the sphere with steps 0.2/(1 + k/50) from `n_starts`
    random unit vectors (local maxima can be close: every start climbs), then an active-set
    polish of the best 32, since the maximiser sits on a kink: the samples with |wᵀx_i| small
    are put on their boundary wᵀx_i = 0, on which the objective is ‖M w‖ with
    M = Σ_{i: wᵀx_i > 0} g_i x_iᵀ (plus the leaky part), maximised by the top singular vector
    of M restricted to that subspace; a step is kept if it raises the value."""
    x = np.asarray(problem.x)
    g = -np.asarray(problem.output_gradient_at_zero())
    slope = negative_slope
    x_norm = np.linalg.norm(x, axis=1)

    def value(w):
        z = x @ w
        return np.linalg.norm(g.T @ np.where(z > 0, z, slope * z), axis=0)

    w = np.array(jr.normal(key, (x.shape[1], n_starts)))
    w /= np.linalg.norm(w, axis=0)
    for k in range(steps):
        z = x @ w
        c = g.T @ np.where(z > 0, z, slope * z)
        c = c / np.maximum(np.linalg.norm(c, axis=0), 1e-300)
        grad = x.T @ (np.where(z > 0, 1.0, slope) * (g @ c))
        grad -= w * np.sum(grad * w, axis=0)
        w = w + 0.2 / (1 + k / 50) * grad
        w /= np.linalg.norm(w, axis=0)
    best = 0.0
    for j in np.argsort(value(w))[-32:]:
        cur, cur_val = w[:, j], float(value(w[:, j : j + 1])[0])
        for tol in (1e-1, 3e-2, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
            for _ in range(10):
                z = x @ cur
                near = np.abs(z) < tol * x_norm
                scale = np.where(near, 0.0, np.where(z > 0, 1.0, slope))
                m = g.T @ (scale[:, None] * x)
                basis = np.linalg.svd(x[near])[2][int(near.sum()):].T if near.any() else None
                if basis is not None and basis.shape[1] == 0:
                    break
                mq = m if basis is None else m @ basis
                v = np.linalg.svd(mq)[2][0]
                new = v if basis is None else basis @ v
                new = new * np.sign(new @ cur) / np.linalg.norm(new)
                new_val = float(value(new[:, None])[0])
                if not new_val > cur_val:
                    break
                cur, cur_val = new, new_val
        best = max(best, cur_val)
    return best


def run_relu_lowrank(config: ReluLowRankConfig, context: RunContext | None = None) -> Outcome:
    """ρ* and s* of a deep ReLU net at every depth, per-layer spectra, and the checks of SPEC §9.

    **Returns:** an `Outcome`: per depth `speed` (s*, the library's convention), `normalised_speed`
    (ŝ = L^{(L−2)/2}s*), `kkt_residual`, `bottleneck_rank`; per (depth, layer) `sv_ratio`
    (σ₁/σ₂, NaN past L), `sv2_over_sv1`, `layer_norm_sq` (L‖W_ℓ‖²); per (depth, layer, index)
    the singular values; the single-neuron value ŝ₁ and the checks.
    """
    context = context or RunContext(False)
    start = time.perf_counter()
    problem = teacher_problem(config.problem_seed)
    k_solve, k_single = jr.split(jr.key(config.seed))
    results = []
    with context.task("optimal escape per depth", len(config.depths)) as task:
        for depth, key in zip(config.depths, jr.split(k_solve, len(config.depths))):
            res = sj.relu_optimal_escape(
                problem, config.widths(depth), config.negative_slope, key=key,
                n_restarts=config.restarts, max_steps=config.max_steps,
                # ρ* sits on a kink of H: every restart competes (module docstring)
                kkt_rtol=1.0,
            )
            results.append(jax.block_until_ready(res))
            task.advance(1, L=depth, s=float(res.speed))
    single = single_neuron_speed(
        problem, config.negative_slope, key=k_single, n_starts=config.n_starts
    )
    depths = np.asarray(config.depths)
    n_layers, n_sv = int(depths.max()), min(config.width, 8)
    speeds = np.asarray([float(r.speed) for r in results])
    normalised = speeds * depths ** ((depths - 2) / 2)
    ratios = np.full((depths.size, n_layers), np.nan)
    norms = np.full((depths.size, n_layers), np.nan)
    svals = np.full((depths.size, n_layers, n_sv), np.nan)
    bn_rank = np.zeros(depths.size, int)
    for i, r in enumerate(results):
        L = int(depths[i])
        for ell, (w, s) in enumerate(zip(r.direction.weights, r.singular_values)):
            s = np.asarray(s)
            ratios[i, ell] = s[0] / s[1] if s.size > 1 else np.nan
            norms[i, ell] = L * float(jnp.sum(w**2))
            svals[i, ell, : min(s.size, n_sv)] = s[:n_sv]
        bn_rank[i] = int(sj.bottleneck_rank(r.direction.weights, config.rank_rtol, relative=True))
    arrays = {
        "depths": Array(("depth",), depths, "network depth L"),
        "speed": Array(("depth",), speeds, "s* = −L·H(ρ*), ‖ρ*‖ = 1 (the library's convention)"),
        "normalised_speed": Array(
            ("depth",), normalised, "ŝ = L^{(L−2)/2}·s*: −min H over unit-norm layers"
        ),
        "kkt_residual": Array(
            ("depth",), np.asarray([float(r.kkt_residual) for r in results]),
            "‖∇H − (ρᵀ∇H)ρ‖ at ρ* (stalls on a kink of H)",
        ),
        "bottleneck_rank": Array(
            ("depth",), bn_rank, f"min_ℓ #{{σ_i(W_ℓ) > {config.rank_rtol}·σ₁(W_ℓ)}} of ρ*"
        ),
        "sv_ratio": Array(("depth", "layer"), ratios, "σ₁(W_ℓ)/σ₂(W_ℓ) of ρ* (NaN past L)"),
        "layer_norm_sq": Array(("depth", "layer"), norms, "L·‖W_ℓ‖² of ρ* (1 when balanced)"),
        "singular_values": Array(
            ("depth", "layer", "index"), svals, f"the {n_sv} largest singular values of W_ℓ"
        ),
    }
    rows = [
        {
            "depth": int(depths[i]),
            "speed": float(speeds[i]),
            "normalised_speed": float(normalised[i]),
            "kkt_residual": float(arrays["kkt_residual"].values[i]),
            "bottleneck_rank": int(bn_rank[i]),
            "sv_ratios": [float(v) for v in ratios[i, : depths[i]]],
            "layer_norm_sq": [float(v) for v in norms[i, : depths[i]]],
        }
        for i in range(depths.size)
    ]
    values = {"single_neuron_speed": single, "rows": rows,
              "wall_time": time.perf_counter() - start}
    outcome = Outcome(
        arrays=arrays,
        values=values,
        checks=_claims(config, rows, single),
        figures={"relu_lowrank.png": lambda fig: plot_relu_lowrank(arrays, values, config, fig)},
    )
    outcome.table = relu_lowrank_table(values)
    return outcome


def _claims(config: ReluLowRankConfig, rows: list, single: float) -> list:
    """SPEC §9 made checkable (module docstring): balanced layers, ŝ non-decreasing in L and at
    least the single-neuron value, ŝ(2) equal to it, the low-rank bound on the deeper layers and
    bottleneck rank 1."""
    tol = config.speed_rtol
    checks = [
        check_at_most(
            "max_ℓ |L·‖W_ℓ‖² − 1| of ρ* (all depths)",
            max(abs(v - 1) for r in rows for v in r["layer_norm_sq"]), config.balance_atol,
            note="H is linear in each layer: its minimum on the sphere is balanced (AM–GM), "
            "which gives s* = L^{−(L−2)/2}ŝ exactly",
        )
    ]
    norm = [r["normalised_speed"] for r in rows]
    if len(rows) > 1:
        steps = [b / a for a, b in zip(norm[:-1], norm[1:])]
        checks.append(
            check_at_least(
                "ŝ(L_next)/ŝ(L) for consecutive depths (min)", min(steps), 1 - tol,
                note="Bantzis et al.: the optimal escape speed is non-decreasing in depth, for "
                "the speed with unit-norm layers ŝ = L^{(L−2)/2}s* (the library's s* falls "
                "like L^{−(L−2)/2}); tolerance: the sphere solver's global search, whose "
                "restarts stop on kinks of H",
            )
        )
    checks.append(
        check_at_least(
            "ŝ(L)/ŝ₁ (min over depths)", min(norm) / single, 1 - tol,
            note="a width-1 chain realises the single-neuron value ŝ₁ at every depth, so "
            "ŝ(L) ≥ ŝ₁; ŝ₁ from an independent activation-pattern search",
        )
    )
    if rows[0]["depth"] == 2:
        checks.append(
            check_close(
                "ŝ(2) (sphere solver) vs ŝ₁ (single neuron)", norm[0], single, tol,
                note="Cauchy–Schwarz over the neurons: a two-layer escape direction is one "
                "neuron (or copies of it)",
            )
        )
    deep = [
        r["sv_ratios"][ell] / (ell + 1) ** 0.25
        for r in rows
        for ell in range(1, r["depth"])
        if np.isfinite(r["sv_ratios"][ell])
    ]
    if deep:
        checks.append(
            check_at_least(
                "σ₁(W_ℓ)/σ₂(W_ℓ) ÷ ℓ^{1/4}, layers ℓ ≥ 2 of ρ* (min over depths)", min(deep),
                1.0,
                note="Bantzis et al.: the deeper layers of ρ* are nearly rank one, σ₁ ≥ ℓ^{1/4}σ₂ "
                "(SPEC §9); a random direction has σ₁/σ₂ ≈ 1.1–1.5",
            )
        )
    checks.append(
        check_equal(
            f"bottleneck rank of ρ* (relative tolerance {config.rank_rtol:g}), per depth",
            [r["bottleneck_rank"] for r in rows], [1] * len(rows),
            note="the first escape leads to a saddle of bottleneck rank 1 (SPEC §9)",
        )
    )
    return checks


def relu_lowrank_table(values: dict) -> str:
    """Per depth: s* (library convention), ŝ = L^{(L−2)/2}s*, KKT residual, bottleneck rank and
    σ₁/σ₂ per layer."""
    head = f"{'L':>2} {'s*':>9} {'ŝ':>10} {'KKT':>8} {'BN':>3}  σ₁/σ₂ per layer ℓ = 1…L"
    lines = [head, "-" * (len(head) + 20)]
    for r in values["rows"]:
        sv = " ".join(f"{v:9.3g}" for v in r["sv_ratios"])
        lines.append(
            f"{r['depth']:>2} {r['speed']:>9.5g} {r['normalised_speed']:>10.7g} "
            f"{r['kkt_residual']:>8.1e} {r['bottleneck_rank']:>3d}  {sv}"
        )
    lines.append(f"single-neuron value ŝ₁ = {values['single_neuron_speed']:.7g}")
    return "\n".join(lines)


def plot_relu_lowrank(arrays: dict, values: dict, config: ReluLowRankConfig, fig) -> None:
    """s* and ŝ against depth (with ŝ₁); σ₂/σ₁ per layer for every depth against the bound
    ℓ^{−1/4}; the singular values of every layer of the deepest ρ*."""
    get = {k: a.values for k, a in arrays.items()}
    depths = get["depths"]
    fig.set_size_inches(15, 4.2)
    axes = fig.subplots(1, 3)
    axes[0].plot(depths, get["speed"], "o-", label="s* (‖ρ‖ = 1, library)")
    axes[0].plot(depths, get["normalised_speed"], "s-", label="ŝ = L^{(L−2)/2}s* (unit layers)")
    axes[0].axhline(values["single_neuron_speed"], color="0.5", ls=":", label="ŝ₁ (one neuron)")
    axes[0].set_xlabel("depth L")
    axes[0].set_title("optimal escape speed")
    axes[0].legend(fontsize=8)
    colors = colormap("viridis")(np.linspace(0, 0.85, depths.size))
    for i, L in enumerate(depths):
        layers = np.arange(1, L + 1)
        axes[1].semilogy(layers, 1 / get["sv_ratio"][i, :L], "o-", color=colors[i],
                         label=f"L = {L}")
    ell = np.arange(1, depths.max() + 1)
    axes[1].semilogy(ell, ell ** -0.25, "k--", label="bound ℓ^{−1/4} (ℓ ≥ 2)")
    axes[1].set_xlabel("layer ℓ")
    axes[1].set_title("σ₂(W_ℓ)/σ₁(W_ℓ) of ρ*")
    axes[1].legend(fontsize=7)
    L = int(depths[-1])
    sv = get["singular_values"][-1]
    for ell in range(L):
        s = sv[ell][np.isfinite(sv[ell])]
        axes[2].semilogy(np.arange(1, s.size + 1), s / s[0], "o-", label=f"ℓ = {ell + 1}")
    axes[2].set_xlabel("index i")
    axes[2].set_title(f"σ_i(W_ℓ)/σ₁(W_ℓ) of ρ*, L = {L}")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"Deep ReLU first escape (Bantzis, Simon & Jacot; SPEC §9): width {config.width}, "
        "tanh-teacher data (64 × 8 → 3)"
    )


register(
    "relu-lowrank",
    ReluLowRankConfig,
    "deep ReLU optimal escape direction per depth: per-layer σ₁/σ₂, escape speed against depth "
    "(Bantzis, Simon & Jacot)",
)(run_relu_lowrank)
