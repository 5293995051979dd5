"""Escape directions at the origin: the leading Taylor term, the optimal escape speed and the
distinct escape directions found by the generic sphere solver, beside the closed forms of deep
linear networks (SPEC §4, §5, §9; Jacot et al. §4.2, Bantzis, Simon & Jacot, Kumar & Haupt).
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import saddlejax as sj

from ._checks import MAX_SEED, check_choice, check_int, check_params

MODELS = ("dln", "relu", "squared_relu")
PROBLEMS = ("matrix_completion", "teacher", "squared_relu_toy")
# (n_in, n_out) of each problem's data.
_SIZES = {"matrix_completion": (10, 10), "teacher": (8, 3), "squared_relu_toy": (2, 1)}

ESCAPE_PRESETS = {
    # Jacot et al. Fig. 1 problem: 10×10 rank-3 matrix completion, 50 % observed, L = 4, w = 100.
    "dln4": dict(model="dln", problem="matrix_completion", depth=4, width=100),
    "dln2": dict(model="dln", problem="matrix_completion", depth=2, width=20),
    "dln3": dict(model="dln", problem="matrix_completion", depth=3, width=20),
    # Bias-free deep ReLU net on synthetic Gaussian data (no data set is downloaded).
    "relu3": dict(model="relu", problem="teacher", depth=3, width=16),
    # Kumar & Haupt's squared-ReLU toy, one neuron (k = 2).
    "squared_relu": dict(model="squared_relu", problem="squared_relu_toy", depth=1, width=1),
}


@dataclasses.dataclass(frozen=True)
class EscapeConfig:
    """Settings of `run_escape`.

    `model`: "dln" (deep linear, `depth` ≥ 2 layers of hidden width `width`), "relu" (bias-free
    `DeepReLU`, `depth` ≥ 2) or "squared_relu" (`SquaredReLU` with `width` neurons on 2-D
    inputs, `depth` 1). `problem`: "matrix_completion" (10×10 rank 3, 50 % observed; an
    objective on end-to-end matrices, so for "dln" only), "teacher" (64 Gaussian inputs in R⁸,
    a tanh teacher with 3 outputs; not for "squared_relu", which takes 2-D inputs) or
    "squared_relu_toy" (Kumar & Haupt). `depth` ≤ 32 (the Taylor term is searched to order 2L).
    `restarts`: random starts on the sphere, in [1, 10⁴]; they run batched, so restarts × P ≤
    10⁸ (P the number of weights, at most 10⁷). `seed`: the key of the problem, the network and
    the starts, in [0, 2³²). `top`: how many distinct directions to report (≥ 1).

    Every field is checked here, before any work: a bad value raises a `ValueError` naming it.
    """

    model: str = "dln"
    problem: str = "matrix_completion"
    depth: int = 4
    width: int = 100
    restarts: int = 8
    seed: int = 0
    top: int = 5

    def __post_init__(self):
        check_choice("model", self.model, MODELS)
        check_choice("problem", self.problem, PROBLEMS)
        if self.model != "dln" and self.problem == "matrix_completion":
            raise ValueError(
                f"`model` {self.model!r} does not fit `problem` 'matrix_completion', an "
                "objective on end-to-end matrices (model 'dln' only); use model dln, or "
                "problem teacher or squared_relu_toy."
            )
        if self.model == "squared_relu" and self.problem != "squared_relu_toy":
            raise ValueError(
                f"`model` 'squared_relu' takes 2-D inputs and does not fit `problem` "
                f"{self.problem!r}; use problem squared_relu_toy."
            )
        if self.model == "squared_relu":
            check_int("depth", self.depth, 1, 1, why="squared_relu has one hidden layer")
        else:
            why = "L = 1 has no saddle at the origin; the Taylor term is searched to order 2L"
            check_int("depth", self.depth, 2, 32, why=why)
        check_int("width", self.width, 1)
        n_params = check_params(self.widths)
        check_int("restarts", self.restarts, 1, 10**4)
        if self.restarts * n_params > 10**8:
            raise ValueError(
                f"`restarts` {self.restarts} × {n_params:,} weights exceeds the 10⁸ numbers "
                "that the batched restarts are sized for; use fewer `restarts` or a smaller "
                "`width`."
            )
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("top", self.top, 1)

    @property
    def widths(self) -> tuple[int, ...]:
        """The layer sizes: (n_in, width, …, width, n_out) of the problem's data."""
        n_in, n_out = _SIZES[self.problem]
        if self.model == "squared_relu":
            return (n_in, self.width, n_out)
        return (n_in,) + (self.width,) * (self.depth - 1) + (n_out,)

    @classmethod
    def preset(cls, name: str, /, **overrides) -> "EscapeConfig":
        """The config of `ESCAPE_PRESETS[name]`, with `overrides` (None values ignored)."""
        if name not in ESCAPE_PRESETS:
            raise ValueError(f"unknown preset {name!r}; use one of {', '.join(ESCAPE_PRESETS)}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise ValueError(
                f"unknown escape setting(s) {sorted(unknown)}; the settings are {sorted(fields)}."
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**ESCAPE_PRESETS[name], **given})


def _problem(config: EscapeConfig, key):
    """The objective and its (n_in, n_out)."""
    if config.problem == "matrix_completion":
        return sj.matrix_completion_problem(key, n=10, rank=3, observed=0.5), (10, 10)
    if config.problem == "teacher":
        kx, kt = jr.split(key)
        x = jr.normal(kx, (64, 8))
        y = jnp.tanh(x @ jr.normal(kt, (8, 3)) / jnp.sqrt(8.0))
        return sj.SquareLoss(x, y), (8, 3)
    return sj.squared_relu_toy_problem(key), (2, 1)


def _origin(config: EscapeConfig, n_in: int, n_out: int, key):
    """The origin of the parameter space (a pytree of zeros) and the layer widths."""
    if config.model == "squared_relu":
        net = sj.nn.SquaredReLU(2, config.width, key=key)
        return jax.tree_util.tree_map(jnp.zeros_like, net), (2, config.width)
    widths = (n_in,) + (config.width,) * (config.depth - 1) + (n_out,)
    if config.model == "dln":
        return tuple(jnp.zeros((o, i)) for i, o in zip(widths[:-1], widths[1:])), widths
    return jax.tree_util.tree_map(jnp.zeros_like, sj.nn.DeepReLU(widths, key=key)), widths


def _dln_closed_form(problem, depth: int, speeds: list[float]) -> dict:
    """s* = L^{−(L−2)/2} σ_1(G) and, per speed found, the nearest closed-form speed (SPEC §5)."""
    g = sj.matrix_cost_gradient_at_zero(problem)
    closed = np.asarray(sj.dln_speeds(g, depth))
    s_closed = float(sj.dln_optimal_speed(g, depth))
    return {
        "closed_form_s_star": s_closed,
        "closed_form_speeds": [float(closed[np.argmin(np.abs(closed - s))]) for s in speeds],
    }


def run_escape(config: EscapeConfig) -> dict:
    """The Taylor term at the origin and the escape directions of `config`'s network.

    **Returns:** a dict of plain numbers: `config`, `widths`, `n_params`, the orders `k` and `m`
    and `taylor_route`, the optimal speed `s_star` and its `kkt_residual`, `converged` and
    `result` (its message, "" when converged), the `top` distinct directions' `speeds`,
    `kkt_residuals` and `multiplicities`, `seconds` per stage; for a DLN also
    `closed_form_s_star`, `s_star_rel_diff` and `closed_form_speeds`, for a ReLU net
    `sv_ratios` (σ₁/σ₂ of each layer of ρ*).
    """
    key = jr.key(config.seed)
    kp, kn = jr.split(key)
    problem, (n_in, n_out) = _problem(config, kp)
    origin, widths = _origin(config, n_in, n_out, kn)
    start = time.perf_counter()
    term = sj.taylor_term(problem, origin, max_order=max(8, 2 * config.depth))
    t_taylor = time.perf_counter() - start
    start = time.perf_counter()
    esc = sj.optimal_escape(
        term.H,
        term.order,
        origin,
        key=jr.fold_in(key, 1),
        n_restarts=config.restarts,
        invariant=sj.dln_invariant if config.model == "dln" else None,
        # A ReLU net's optimum may sit on a kink of H: a tight KKT residual is out of reach.
        **({"kkt_rtol": 1e-6} if config.model == "relu" else {}),
    )
    esc = jax.block_until_ready(esc)
    t_escape = time.perf_counter() - start
    n_show = min(config.top, esc.speeds.shape[0])
    out = {
        "config": dataclasses.asdict(config),
        "widths": list(widths),
        "n_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(origin))),
        "k": term.order,
        "m": term.next_order,
        "taylor_route": term.method,
        "s_star": float(esc.speed),
        "kkt_residual": float(esc.kkt_residual),
        "converged": bool(esc.result == sj.RESULTS.successful),
        "result": sj.RESULTS[esc.result],
        "speeds": [float(s) for s in esc.speeds[:n_show]],
        "kkt_residuals": [float(r) for r in esc.kkt_residuals[:n_show]],
        "multiplicities": [int(c) for c in esc.multiplicities[:n_show]],
        "seconds": {"taylor_term": t_taylor, "optimal_escape": t_escape},
    }
    if config.model == "dln":
        out.update(_dln_closed_form(problem, config.depth, out["speeds"]))
        out["s_star_rel_diff"] = abs(out["s_star"] - out["closed_form_s_star"]) / abs(
            out["closed_form_s_star"]
        )
    if config.model == "relu":
        _, ratios = sj.layer_sv_ratios(esc.direction.weights)
        out["sv_ratios"] = [float(r) for r in ratios]
    return out
