"""The α → 0 chain of saddles computed without small-α simulation, against small-α flows
(Jacot et al. Conjecture 3; SPEC §8).

`saddle_chain` follows the saddles ϑ⁰ = 0, ϑ¹, … that gradient flow from α·θ̃ visits as α → 0:
at each one the leading Taylor term on the directions the flow can leave by, the escape
direction that the flow from θ̃ takes, the escape path to the next critical point and the
plateau's length at scale α. Its predictions (the saddle levels, the drop times, the staircase)
are checked here against gradient flows from α·θ̃ at a few α: the flow's loss in the middle of
each predicted plateau against the saddle's loss, the flow's half-way crossings against the
predicted drop times (whose error must shrink as α decreases), and, on the problem of Jacot et
al. Fig. 1, the saddles against those of the greedy low-rank algorithm (§5.3). Registered as
"saddle-chain" (presets `chain-jacot-fig1`, `chain-deep-relu`, `chain-two-layer-tanh`).
"""

import dataclasses
import math
import time
import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

import saddlejax as sj

from ..analysis._crossings import crossing_times
from ._checks import MAX_SEED, check_choice, check_float, check_floats, check_int
from ._config import register
from ._plot import colormap
from ._progress import RunContext
from ._record import Array, Outcome, check_at_least, check_at_most, check_close, check_equal

PROBLEMS = ("jacot-fig1", "deep-relu", "two-layer-tanh")


@dataclasses.dataclass(frozen=True)
class SaddleChainConfig:
    """Settings of `run_saddle_chain` (Jacot et al. Conjecture 3; SPEC §8).

    `problem`: "jacot-fig1" (a deep linear net (n, width, …, width, n) of `depth` layers on n×n
    rank-`rank` matrix completion with an `observed` fraction known, Jacot et al. Fig. 1),
    "deep-relu" (a bias-free ReLU net (d, width, width, out) fitted to a ReLU teacher
    (d, 4, 4, out) on `n_samples` Gaussian inputs) or "two-layer-tanh" (a two-layer tanh net of
    `width` neurons and `out` outputs fitted to a three-neuron tanh teacher on `n_samples`
    Gaussian inputs in R^d). `problem_seed`: the key of the data; `seed`: the key of θ̃ and of
    the chain's probes.
    `smoothing`: the deep-relu student's `DeepReLU(smoothing=)` (0: exact kinks; ε > 0 lets the
    flows pass kinks they slide along).
    `alphas`: the scales of the flows from α·θ̃ checked against the chain, distinct, in
    (10⁻¹⁰, 1) (two-layer-tanh: (10⁻⁶⁰, 1), its plateaus last log(1/α)), sorted here largest
    first; also the chain's `carry_alphas` (its later plateaus are predicted at each).
    `radius`, `max_saddles`, `max_branches`, `loss_tol` (None: 1e−4·L(0)): of `saddle_chain`.
    `rtol`, `max_steps`: of the flows (a flow that reaches `max_steps` is a reported failure);
    where the origin's term has order k > 2 the flow at α uses min(`rtol`, α/100): the plateaus
    after the first escape are set by a part of size ~α carried through it, which an error
    control of rtol·|θ| ≫ α swamps once θ = O(1) (benchmarks/bench_relu_chain_drops.py).
    `continue_smoothing`: deep-relu with `smoothing` = 0 is integrated exactly (`sliding_flow`,
    the flows and the chain's paths); where such a flow stops on dense kink switching
    (`kink_events_dense`: kinks of units still tiny meeting at a corner), it goes on as the
    flow of the same weights at this smoothing (`continue_smoothing` of `sliding_flow` and
    `saddle_chain`); 0: not continued, a reported failure.
    `n_save`: the flows' evenly spread saves (more are added around each
    predicted drop: `n_window` on each side, geometrically closer to it, so that a crossing is
    located to a few percent of its distance from the prediction).
    `level_rtol`: of the flow's loss mid-plateau against the saddle's loss (smallest α);
    `greedy_rtol`: of the chain's saddle losses against the greedy algorithm's (jacot-fig1);
    `drop_rtol`: of the predicted drop times (smallest α); `shrink_atol`: the slack of "the
    drop-time error at the smallest α is not larger than at the largest".
    `warm_timing`: time the chain a second time, compiled, so that "the chain is faster than
    the smallest-α flow" is a check; otherwise that comparison includes the chain's compilation
    and is only reported.

    Every field is checked here, before any work: a bad value raises a `ValueError` naming it.
    """

    problem: str = "jacot-fig1"
    n: int = 10
    rank: int = 3
    observed: float = 0.5
    width: int = 20
    depth: int = 4
    d: int = 4
    out: int = 2
    n_samples: int = 32
    problem_seed: int = 0
    seed: int = 0
    smoothing: float = 0.0
    alphas: tuple[float, ...] = (1e-3, 1e-4)
    radius: float = 1e-3
    max_saddles: int = 10
    max_branches: int = 0
    loss_tol: float | None = None
    rtol: float = 1e-8
    max_steps: int = 1_000_000
    continue_smoothing: float = 1e-4
    n_save: int = 2000
    n_window: int = 300
    level_rtol: float = 0.01
    greedy_rtol: float = 0.01
    drop_rtol: float = 0.05
    shrink_atol: float = 1e-3
    warm_timing: bool = False

    def __post_init__(self):
        check_choice("problem", self.problem, PROBLEMS)
        check_int("n", self.n, 1, 1000)
        check_int("rank", self.rank, 1, self.n)
        check_float("observed", self.observed, 0.0, 1.0, high_open=False)
        check_int("width", self.width, 1, 1000)
        check_int("depth", self.depth, 2, 12, why="L = 1 has no saddle at the origin")
        check_int("d", self.d, 1, 1000)
        check_int("out", self.out, 1, 1000)
        check_int("n_samples", self.n_samples, 1, 10**5)
        check_int("problem_seed", self.problem_seed, 0, MAX_SEED)
        check_float("smoothing", self.smoothing, 0.0, 1.0, low_open=False, high_open=False)
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.problem == "two-layer-tanh":  # k = 2 at the origin
            low, why = 1e-60, ("θ₀ = α·θ̃ is a small initialisation; the flows' plateaus last "
                               "log(1/α), and the tiny-α flows are checked to 1e-60")
        else:
            low, why = 1e-10, ("θ₀ = α·θ̃ is a small initialisation, and a flow is simulated "
                               "at each α, over plateaus as long as α^{−(k−2)}: below 1e-10 "
                               "they are out of reach")
        alphas = check_floats("alphas", self.alphas, low, 1.0, why=why)
        if not alphas:
            raise ValueError("`alphas` is empty; give at least one α in (0, 1).")
        object.__setattr__(self, "alphas", tuple(sorted(alphas, reverse=True)))
        check_float("radius", self.radius, 0.0, 1.0, why="r₀ relative to ‖θ̃‖")
        check_int("max_saddles", self.max_saddles, 1, 100)
        check_int("max_branches", self.max_branches, 0, 100)
        if self.loss_tol is not None:
            check_float("loss_tol", self.loss_tol, 0.0)
        check_float("rtol", self.rtol, 1e-14, 1.0, low_open=False,
                    why="float64 round-off cannot meet an rtol below 1e-14")
        check_int("max_steps", self.max_steps, 1, 2**31 - 1)
        check_float("continue_smoothing", self.continue_smoothing, 0.0, 1.0, low_open=False,
                    high_open=False)
        check_int("n_save", self.n_save, 4, 10**6)
        check_int("n_window", self.n_window, 2, 10**5)
        for name in ("level_rtol", "greedy_rtol", "drop_rtol", "shrink_atol"):
            check_float(name, getattr(self, name), 0.0, 1.0)
        if not isinstance(self.warm_timing, bool):
            raise ValueError(f"`warm_timing` must be true or false, got {self.warm_timing!r}.")


# ---------------------------------------------------------------------------------------------
# the problems: one function each, (objective, θ̃)


def jacot_fig1_problem(config: SaddleChainConfig):
    """Jacot et al. Fig. 1: matrix completion by a deep linear net (n, width, …, width, n)."""
    problem = sj.matrix_completion_problem(
        jr.key(config.problem_seed), config.n, config.rank, config.observed
    )
    widths = (config.n,) + (config.width,) * (config.depth - 1) + (config.n,)
    return problem, sj.nn.DeepLinear(widths, key=jr.key(config.seed))


def deep_relu_problem(config: SaddleChainConfig):
    """A ReLU teacher (d, 4, 4, out) on Gaussian inputs, a ReLU student (d, width, width, out)."""
    k_x, k_teacher = jr.split(jr.key(config.problem_seed))
    x = jr.normal(k_x, (config.n_samples, config.d))
    teacher = sj.nn.DeepReLU((config.d, 4, 4, config.out), key=k_teacher, std=1.0)
    problem = sj.SquareLoss(x, jax.vmap(teacher)(x))
    widths = (config.d, config.width, config.width, config.out)
    return problem, sj.nn.DeepReLU(widths, key=jr.key(config.seed), smoothing=config.smoothing)


def two_layer_tanh_problem(config: SaddleChainConfig):
    """A three-neuron tanh teacher on Gaussian inputs in R^d, a tanh student of `width`, both
    with `out` outputs."""
    k_x, k_teacher = jr.split(jr.key(config.problem_seed))
    x = jr.normal(k_x, (config.n_samples, config.d))
    teacher = sj.nn.TwoLayer(config.d, 3, config.out, "tanh", key=k_teacher, std=(1.0, 1.0))
    problem = sj.SquareLoss(x, jax.vmap(teacher)(x))
    return problem, sj.nn.TwoLayer(config.d, config.width, config.out, "tanh",
                                   key=jr.key(config.seed), std=1.0)


PROBLEM_BUILDERS = {
    "jacot-fig1": jacot_fig1_problem,
    "deep-relu": deep_relu_problem,
    "two-layer-tanh": two_layer_tanh_problem,
}


# ---------------------------------------------------------------------------------------------
# the run


def _chain(config, problem, init):
    return sj.saddle_chain(
        problem, init, key=jr.key(config.seed), max_saddles=config.max_saddles,
        max_branches=config.max_branches, radius=config.radius, loss_tol=config.loss_tol,
        continue_smoothing=config.continue_smoothing or None, carry_alphas=config.alphas,
    )


def save_times(drops: np.ndarray, mids: np.ndarray, t1: float, n_save: int, n_window: int):
    """The flow's saves: `n_save` spread over [0, t1] (`default_save_times`), `n_window` on each
    side of every predicted drop, geometrically closer to it (from 0.5·t_d to 10⁻⁷·t_d away),
    and the middle of every predicted plateau."""
    from ..flow._options import default_save_times

    near = np.geomspace(1e-7, 0.5, n_window)
    parts = [default_save_times(0.0, t1, n_save), mids]
    for d in drops:
        parts += [d * (1 - near), d * (1 + near)]
    return np.clip(np.sort(np.concatenate(parts)), 0.0, t1)


class _Flow(NamedTuple):
    """A flow's saves, and why it is not a success (empty: it is)."""

    ts: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    failures: list
    continued_at: float | None = None


def kinked_flow(problem, params0, t1, saveat, rtol, max_steps, smoothing) -> _Flow:
    """The exact-ReLU flow from `params0` (`sliding_flow`) at the save times `saveat`, continued
    past a stop on dense kink switching (`kink_events_dense`) by the flow of the same weights
    with the kink smoothing `smoothing` (its `continue_smoothing`; 0: not continued)."""
    sol = sj.sliding_flow(problem, params0, t1, saveat=saveat, rtol=rtol, max_steps=max_steps,
                          continue_smoothing=smoothing or None)
    stop = float(sol.stats["smoothed_from"])
    ts, loss, grad = (np.asarray(a) for a in (sol.ts, sol.loss, sol.grad_norm))
    failures = [] if sol.successful else [
        f"sliding flow stopped at t = {float(sol.stop_time):.6g}: {sol.result}"]
    return _Flow(ts, loss, grad, failures, stop if math.isfinite(stop) else None)


def plateau_middles(drops: np.ndarray, t1: float) -> np.ndarray:
    """The middle of each predicted plateau: halfway between consecutive drops (0 before the
    first), the last one halfway between the last drop and t1."""
    edges = np.concatenate([[0.0], drops, [t1]])
    return 0.5 * (edges[:-1] + edges[1:])


def run_saddle_chain(config: SaddleChainConfig, context: RunContext | None = None) -> Outcome:
    """The chain of saddles, the small-α flows it predicts, and the checks (module docstring).

    **Returns:** an `Outcome`: per saddle `saddle_loss`, `saddle_rank`, `order`, `speed`,
    `hessian_index`; per (alpha, drop) `predicted_drop`, `simulated_drop`, `drop_error`; per
    (alpha, saddle) `plateau_loss` (the flow's loss mid-plateau) and `level_error`; per
    (alpha, time) the flows' `ts` and `loss` and the predicted `staircase`; for jacot-fig1
    `greedy_loss`, `greedy_rank`; the timings in `values`.
    """
    context = context or RunContext(False)
    problem, init = PROBLEM_BUILDERS[config.problem](config)
    with context.task("saddle chain", 1) as task:
        start = time.perf_counter()
        try:
            chain = jax.block_until_ready(_chain(config, problem, init))
        except (eqx.EquinoxRuntimeError, ValueError) as e:  # the chain stopped: report it
            seconds = time.perf_counter() - start
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            inner = [line for line in lines if line.startswith("equinox.EquinoxRuntimeError")]
            why = (inner or lines or [type(e).__name__])[0]
            failures = [f"saddle chain raised after {seconds:.1f} s: {why}"]
            return Outcome(values={"chain_seconds": seconds}, failures=failures)
        chain_seconds = time.perf_counter() - start
        task.advance(1, saddles=len(chain.saddles))
    warm_seconds = None
    if config.warm_timing:
        start = time.perf_counter()
        jax.block_until_ready(_chain(config, problem, init))
        warm_seconds = time.perf_counter() - start
    values = dict(chain_seconds=chain_seconds, chain_warm_seconds=warm_seconds,
                  stop_reason=chain.stop_reason, saddles=_saddle_rows(chain))
    failures = []
    n_drops = chain.n_arrived
    if chain.stop_reason.startswith("path_failed"):
        failures.append(f"saddle chain: {chain.stop_reason}")
    if n_drops == 0:
        failures.append("saddle chain: no escape from the origin, nothing to compare")
        return Outcome(values=values, failures=failures, table=saddle_chain_table(values))
    n_alpha = len(config.alphas)
    levels = chain.losses
    mids = 0.5 * (levels[:-1] + levels[1:])[:n_drops]
    try:
        predicted = np.array([chain.drop_times(a) for a in config.alphas])
    except ValueError as e:  # a plateau of unknown length: no time to compare
        failures.append(f"saddle chain: {e}")
        return Outcome(values=values, failures=failures, table=saddle_chain_table(values))
    simulated = np.full((n_alpha, n_drops), np.nan)
    plateau_loss = np.full((n_alpha, n_drops + 1), np.nan)
    ts_all, loss_all, flow_seconds = [], [], []
    # Past the last point the chain followed the flow goes on to escapes it did not compute
    # (on a ReLU net, along kinks that cost the solver its step limit): stop sooner there.
    ended = chain.saddles[n_drops].kind in ("minimum", "loss_floor")
    horizon = 3.0 if ended else 1.5
    single = n_drops == 1  # one escape compared: later ones are neither predicted nor checked
    order0 = chain.saddles[0].order
    exact_kinks = config.problem == "deep-relu" and config.smoothing == 0
    continued = []  # where exact-kink flows were continued by the smoothed net's
    with context.task("gradient flows", n_alpha) as task:
        for i, alpha in enumerate(config.alphas):
            t1 = horizon * float(predicted[i, -1])
            middles = plateau_middles(predicted[i], t1)
            saveat = save_times(predicted[i], middles, t1, config.n_save, config.n_window)
            rtol = config.rtol if order0 == 2 else min(config.rtol, alpha / 100)
            start = time.perf_counter()
            with warnings.catch_warnings():
                if single:  # the precision warning is about escapes after the first
                    warnings.simplefilter("ignore", sj.NumericalWarning)
                if exact_kinks:
                    flow = kinked_flow(problem, sj.init.scale(init, alpha), t1, saveat, rtol,
                                       config.max_steps, config.continue_smoothing)
                else:
                    sol = sj.gradient_flow(
                        problem, sj.init.scale(init, alpha), t1, saveat=saveat, rtol=rtol,
                        max_steps=config.max_steps, throw=False,
                    )
                    flow = _Flow(np.asarray(sol.ts), np.asarray(sol.loss),
                                 np.asarray(sol.grad_norm),
                                 [] if sol.successful else [f"gradient flow: {sol.result}"])
            flow_seconds.append(time.perf_counter() - start)
            task.advance(1, alpha=alpha)
            failures += [f"flow at α = {alpha:g}: {why}" for why in flow.failures]
            if flow.continued_at is not None:
                continued.append({"alpha": alpha, "time": flow.continued_at,
                                  "over_first_drop": flow.continued_at / predicted[i, 0]})
            ts, loss = flow.ts, flow.loss
            ts_all.append(ts)
            loss_all.append(loss)
            simulated[i] = crossing_times(ts, loss, mids, flow.grad_norm)
            plateau_loss[i] = np.interp(middles, ts, loss)
    drop_error = np.abs(simulated - predicted) / simulated
    level_error = np.abs(plateau_loss - levels[: n_drops + 1]) / np.abs(levels[: n_drops + 1])
    ts_all, loss_all = np.array(ts_all), np.array(loss_all)
    staircase = np.array([chain.staircase(a, ts) for a, ts in zip(config.alphas, ts_all)])
    deviation = np.array([chain.path_deviations(a) for a in config.alphas])  # (alpha, drop)
    greedy = None
    if config.problem == "jacot-fig1":
        with context.task("greedy low-rank saddles", 1) as task:
            start = time.perf_counter()
            greedy = sj.greedy_low_rank(problem, config.depth)
            values["greedy_seconds"] = time.perf_counter() - start
            task.advance(1)
    arrays = _arrays(config, chain, predicted, simulated, drop_error, deviation, plateau_loss,
                     level_error, ts_all, loss_all, staircase, greedy)
    values.update(
        flow_seconds=flow_seconds,
        drops=[
            {"alpha": a, "predicted": predicted[i].tolist(), "simulated": simulated[i].tolist(),
             "relative_error": drop_error[i].tolist(),
             "path_deviation": deviation[i].tolist()}
            for i, a in enumerate(config.alphas)
        ],
        plateaus=[
            {"alpha": a, "flow_loss": plateau_loss[i].tolist(),
             "relative_error": level_error[i].tolist()}
            for i, a in enumerate(config.alphas)
        ],
        continued_smoothed=continued,
    )
    rates = approach_rates(config.alphas, drop_error, chain)
    if rates is not None:
        values["approach_rate"] = {"measured": rates[0].tolist(), "predicted": rates[1].tolist()}
    if greedy is not None:
        values["greedy"] = {"losses": greedy.losses.tolist(), "ranks": greedy.ranks.tolist(),
                            "stop_reason": greedy.stop_reason}
    outcome = Outcome(
        arrays=arrays,
        values=values,
        checks=_claims(config, chain, drop_error, level_error, values, greedy),
        figures={"saddle_chain.png": lambda fig: plot_saddle_chain(arrays, config, fig)},
        failures=failures,
    )
    outcome.table = saddle_chain_table(values, config)
    return outcome


def _saddle_rows(chain) -> list[dict]:
    return [
        {"loss": float(s.loss), "rank": int(s.rank), "kind": s.kind, "order": s.order,
         "speed": float(s.speed), "hessian_index": int(s.hessian_index),
         "null_dim": s.null_dim, "multiplicity": int(s.multiplicity),
         "degenerate": bool(s.degenerate), "strict": s.strict, "gap": s.gap,
         "kink_distance": None if s.kink is None else s.kink.distance}
        for s in chain.saddles
    ]


def _arrays(config, chain, predicted, simulated, drop_error, deviation, plateau_loss,
            level_error, ts, loss, staircase, greedy) -> dict:
    n = len(chain.saddles)
    order = np.array([0 if s.order is None else s.order for s in chain.saddles])
    arrays = {
        "alphas": Array(("alpha",), np.asarray(config.alphas), "initialisation scales α"),
        "saddle_loss": Array(("saddle",), chain.losses, "L(ϑ^j) of the chain's points"),
        "saddle_rank": Array(("saddle",), chain.ranks, "the model's rank at ϑ^j"),
        "order": Array(("saddle",), order, "k of the leading term on the allowed directions "
                       "(0: not left)"),
        "speed": Array(("saddle",), chain.speeds, "optimal escape speed s* (0 at a minimum)"),
        "hessian_index": Array(("saddle",), np.array([s.hessian_index for s in chain.saddles]),
                               "negative eigenvalues of ∇²L(ϑ^j) (−1: not computed)"),
        "predicted_drop": Array(("alpha", "drop"), predicted, "chain.drop_times(α)"),
        "simulated_drop": Array(("alpha", "drop"), simulated,
                                "the flow's crossing of (L_j + L_{j+1})/2"),
        "drop_error": Array(("alpha", "drop"), drop_error, "|simulated − predicted|/simulated"),
        "path_deviation": Array(
            ("alpha", "drop"),
            deviation,
            "chain.path_deviations(α): how far off the chain's path the flow leaves the saddle "
            "(k = 2; NaN otherwise)",
        ),
        "plateau_loss": Array(("alpha", "saddle"), plateau_loss[:, :n],
                              "the flow's loss in the middle of each predicted plateau"),
        "level_error": Array(("alpha", "saddle"), level_error[:, :n],
                             "|plateau_loss − saddle_loss|/saddle_loss"),
        "ts": Array(("alpha", "time"), ts, "save times of the flows"),
        "loss": Array(("alpha", "time"), loss, "the flows' loss from α·θ̃"),
        "staircase": Array(("alpha", "time"), staircase, "chain.staircase(α, ts)"),
    }
    if greedy is not None:
        arrays["greedy_loss"] = Array(("greedy_saddle",), greedy.losses,
                                      "losses of the greedy low-rank algorithm's saddles")
        arrays["greedy_rank"] = Array(("greedy_saddle",), greedy.ranks, "their ranks")
    return arrays


def _claims(config, chain, drop_error, level_error, values, greedy) -> list:
    """Conjecture 3 made checkable: the plateaus sit at the chain's saddle levels, the drops
    happen at the predicted times (more closely as α → 0, and after k = 2 saddles at least at
    the rate α^(e·gap) the chain predicts), on jacot-fig1 the saddles are those
    of the greedy low-rank algorithm with ranks 0, 1, 2, …, and the chain costs less than one
    small-α flow."""
    checks = []
    keep = [j for j, s in enumerate(chain.saddles[: level_error.shape[1]])
            if s.kind != "loss_floor"]
    checks.append(
        check_at_most(
            f"|flow loss mid-plateau − L(ϑ^j)|/L(ϑ^j), α = {config.alphas[-1]:g} (max over "
            "saddles)", float(np.max(level_error[-1, keep])), config.level_rtol,
            note="the flow from α·θ̃ rests at the chain's saddles (Conjecture 3); a point at "
            "the loss floor, where the relative error is meaningless, is left out",
        )
    )
    checks.append(
        check_at_most(
            f"|simulated − predicted drop time|/simulated, α = {config.alphas[-1]:g} (max over "
            "drops)", float(np.max(drop_error[-1])), config.drop_rtol,
            note="plateau lengths α^{−(k−2)}·T (k > 2) or a·log(1/α) + b (k = 2) plus the "
            "escape paths' own clocks (SPEC §8); the error is O(α^{…}) and vanishes as α → 0",
        )
    )
    if len(config.alphas) > 1:
        checks.append(
            check_at_most(
                f"max drop-time error at α = {config.alphas[-1]:g} minus at α = "
                f"{config.alphas[0]:g}", float(np.max(drop_error[-1]) - np.max(drop_error[0])),
                config.shrink_atol,
                note="the prediction is the α → 0 limit: its error shrinks as α decreases "
                "(slack: the resolution of the crossing times)",
            )
        )
    rate = values.get("approach_rate")
    if rate is not None:
        checks.append(
            check_at_least(
                f"measured ÷ predicted rate at which the drop-time error falls, α = "
                f"{config.alphas[0]:g} → {config.alphas[-1]:g} (min over k = 2 drops)",
                float(np.min(np.array(rate["measured"]) / np.array(rate["predicted"]))), 0.8,
                note="the flows approach the chain's path as α^(e·gap) (`path_deviations`: "
                "the part along the next fastest unstable direction) or faster, where that part "
                "acts on the drop only at second order; drops whose error is under 1e-5 (the "
                "chain's own precision) are left out",
            )
        )
    if greedy is not None:
        # A point at the loss floor is where both stopped (the same `loss_tol`), not a saddle.
        n = min(len(chain.saddles), len(greedy.saddles))
        both = [j for j in range(n) if chain.saddles[j].kind == "saddle"]
        checks.append(
            check_close(
                "chain saddle losses vs greedy low-rank saddle losses", chain.losses[both],
                greedy.losses[both], config.greedy_rtol,
                note="Jacot et al. Conjecture 3: the saddles visited are those of the greedy "
                "low-rank algorithm (§5.3); the last points, where both stop at the loss "
                "floor, are left out",
            )
        )
        checks.append(
            check_equal(
                "ranks of the chain's points", chain.ranks.tolist(),
                list(range(len(chain.saddles))),
                note="the rank grows one by one (Jacot et al. Fig. 1: 0, 1, 2, 3)",
            )
        )
    flow = values["flow_seconds"][-1]
    if values["chain_warm_seconds"] is not None:
        checks.append(
            check_at_most(
                f"chain wall time (compiled) / flow wall time at α = {config.alphas[-1]:g}",
                values["chain_warm_seconds"] / flow, 1.0,
                note="the chain replaces small-α simulation at less than one flow's cost",
            )
        )
    return checks


def approach_rates(alphas, drop_error, chain, floor=1e-5):
    """Per drop from a k = 2 saddle whose `gap` is known and whose error at both the largest
    and the smallest α is above `floor`: the measured rate log(err₀/err₁)/log(α₀/α₁) and the
    predicted e·gap (`SaddleChain.path_deviations`), as two arrays; None where no drop has both."""
    if len(alphas) < 2:
        return None
    a0, a1 = alphas[0], alphas[-1]
    measured, predicted = [], []
    for j, s in enumerate(chain.saddles[: drop_error.shape[1]]):
        e0, e1 = drop_error[0, j], drop_error[-1, j]
        if s.deviation_exponent is None or not (e0 > floor and e1 > floor):
            continue
        measured.append(math.log(e0 / e1) / math.log(a0 / a1))
        predicted.append(s.deviation_exponent)
    return (np.array(measured), np.array(predicted)) if measured else None


def saddle_chain_table(values: dict, config: SaddleChainConfig | None = None) -> str:
    """Per saddle: loss, rank, kind, order k, speed s*, Hessian index, null dim, degenerate,
    gap, the distance to a kink with first-order descent (`ChainSaddle.kink`); per α the
    predicted and simulated drop times; the timings."""
    head = (f"{'j':>2} {'loss':>11} {'rank':>4} {'kind':<12} {'k':>2} {'s*':>10} "
            f"{'index':>5} {'null':>5} {'degen':>5} {'gap':>6} {'kink':>8}")
    lines = [f"saddle chain (stop: {values['stop_reason']})", head, "-" * len(head)]
    for j, s in enumerate(values["saddles"]):
        order = "-" if s["order"] is None else str(s["order"])
        null = "-" if s["null_dim"] is None else str(s["null_dim"])
        gap = "-" if s.get("gap") is None else f"{s['gap']:.3f}"
        kink = "-" if s.get("kink_distance") is None else f"{s['kink_distance']:.2g}"
        lines.append(
            f"{j:>2} {s['loss']:>11.5g} {s['rank']:>4d} {s['kind']:<12} {order:>2} "
            f"{s['speed']:>10.4g} {s['hessian_index']:>5d} {null:>5} "
            f"{str(s['degenerate']):>5} {gap:>6} {kink:>8}"
        )
    if "greedy" in values:
        g = values["greedy"]
        lines.append("greedy low-rank saddles: losses "
                     + ", ".join(f"{v:.5g}" for v in g["losses"])
                     + f"; ranks {g['ranks']}")
    for row in values.get("drops", []):
        lines.append(f"α = {row['alpha']:g}: drop times predicted / simulated (rel. error; "
                     "the flow's deviation from the chain, α^(e·gap))")
        devs = row.get("path_deviation") or [float("nan")] * len(row["predicted"])
        for p, s, e, d in zip(row["predicted"], row["simulated"], row["relative_error"], devs):
            dev = "" if not np.isfinite(d) else f"; {d:.2g}"
            err = f"{e:.2%}" if not e < 1e-4 else f"{e:.1e}"
            lines.append(f"   {p:>12.6g} / {s:>12.6g}  ({err}{dev})")
    if "approach_rate" in values:
        r = values["approach_rate"]
        lines.append("drop-time error ∝ α^rate, measured / predicted (e·gap): " + ", ".join(
            f"{m:.3f} / {p:.3f}" for m, p in zip(r["measured"], r["predicted"])))
    chain = f"chain {values['chain_seconds']:.1f} s (includes compilation)"
    if values.get("chain_warm_seconds") is not None:
        chain += f", {values['chain_warm_seconds']:.1f} s compiled"
    if config is not None and "flow_seconds" in values:
        flows = ", ".join(f"α = {a:g}: {t:.1f} s"
                          for a, t in zip(config.alphas, values["flow_seconds"]))
        chain += f"; flows {flows}"
        if values.get("chain_warm_seconds") is None:
            chain += " (timing comparison informational: the chain's includes compilation)"
    if "greedy_seconds" in values:
        chain += f"; greedy {values['greedy_seconds']:.1f} s"
    lines.append("wall time: " + chain)
    return "\n".join(lines)


def plot_saddle_chain(arrays: dict, config: SaddleChainConfig, fig) -> None:
    """Left: each α's flow loss (solid) beside the staircase the chain predicts (dashed),
    against log time, with the saddle levels dotted. Right: each drop's time error against α,
    with the chain's `path_deviations` (k = 2 saddles) dashed."""
    get = {k: a.values for k, a in arrays.items()}
    fig.set_size_inches(13, 4.5)
    axes = fig.subplots(1, 2, width_ratios=(2, 1))
    alphas = get["alphas"]
    colors = colormap("viridis")(np.linspace(0, 0.85, len(alphas)))
    for i, alpha in enumerate(alphas):
        t = get["ts"][i]
        pos = t > 0
        axes[0].loglog(t[pos], get["loss"][i][pos], color=colors[i], lw=1.5,
                       label=f"flow, α = {alpha:g}")
        axes[0].loglog(t[pos], get["staircase"][i][pos], color=colors[i], lw=1.5, ls="--",
                       label=f"chain prediction, α = {alpha:g}")
    drop_colors = colormap("plasma")(np.linspace(0, 0.8, get["drop_error"].shape[1]))
    for j, color in enumerate(drop_colors):
        axes[1].loglog(alphas, get["drop_error"][:, j], "o-", color=color, label=f"drop {j + 1}")
        if np.any(np.isfinite(get["path_deviation"][:, j])):
            axes[1].loglog(alphas, get["path_deviation"][:, j], "--", color=color,
                           label=f"drop {j + 1}: predicted deviation α^(e·gap)")
    for k, level in enumerate(get["saddle_loss"]):
        if level > 0:
            axes[0].axhline(level, color="0.5", ls=":", lw=0.8,
                            label="saddle levels" if k == 0 else None)
    axes[0].set_xlabel("t")
    axes[0].set_ylabel("loss")
    axes[0].set_title("loss from α·θ̃: flow (solid), chain staircase (dashed)")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("α")
    axes[1].set_title("|simulated − predicted drop time| / simulated")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Saddle chain (Jacot et al. Conjecture 3): {config.problem}, width "
                 f"{config.width}")


register(
    "saddle-chain",
    SaddleChainConfig,
    "the α → 0 chain of saddles without small-α simulation, against small-α flows: plateau "
    "levels, drop times, greedy saddles (Jacot et al. Conjecture 3)",
)(run_saddle_chain)
