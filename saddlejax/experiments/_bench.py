"""A quick benchmark of the engine on this machine (the full suite is `benchmarks/` of the
repository): the default problem (10×10 rank-3 completion, L = 4, w = 100) at a few α with the
automatic and the explicit solver, gradient descent at its largest stable step 1.9/λ_max(∇²L),
and 16 seeds by `sweep` and by `jax.vmap` against one trajectory after the other.

Protocol (as in `benchmarks/`): a warm-up call with the same static arguments, so compilation is
timed apart from the run; `jax.block_until_ready`; the solver overhead is the wall time over
(gradient evaluations × the time of one jitted gradient).
"""

import dataclasses
import math
import time
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PyTree

import saddlejax as sj

from ._checks import check_floats
from ._machine import gradient_seconds, machine_description

WIDTHS = (10, 100, 100, 100, 10)
N_SEEDS = 16


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Settings of `run_bench`: `alphas`, the scales of the initialisation α·θ̃, at least one,
    distinct, in (0, 1), with α³ ≥ 10⁻²⁰⁰ (L = 4: the flow leaves α·θ̃ at a speed ∝ α^{L−1}).

    Checked here, before any work: a bad value raises a `ValueError` naming the field.
    """

    alphas: tuple[float, ...] = (0.1, 0.01)

    def __post_init__(self):
        why = "θ₀ = α·θ̃ is a small initialisation"
        alphas = check_floats("alphas", self.alphas, 0.0, 1.0, why=why)
        if not alphas:
            raise ValueError("`alphas` is empty; give at least one α in (0, 1).")
        depth = len(WIDTHS) - 1
        if (depth - 1) * math.log10(min(alphas)) < -200:
            raise ValueError(
                f"`alphas` has α = {min(alphas):g}: the flow leaves α·θ̃ at a speed ∝ α^(L−1), "
                f"below float64's range for L = {depth}; use α ≥ {10 ** (-200 / (depth - 1)):.2g}."
            )
        object.__setattr__(self, "alphas", alphas)


@eqx.filter_jit
def _power_iteration(objective, params, iters):
    state, static = eqx.partition(params, eqx.is_inexact_array)
    grad = jax.grad(lambda s: objective(eqx.combine(s, static)))
    _, hvp = jax.linearize(grad, state)
    step = sj.solvers.power_iteration_step
    carry = step(hvp, sj.solvers.power_start(state))
    lam, _ = jax.lax.fori_loop(1, iters, lambda _, c: step(hvp, c[1]), carry)
    return lam


def lambda_max(objective: Callable, params: PyTree, *, iters: int = 100) -> float:
    """|λ|_max of ∇²L at `params` (its inexact-array leaves) by `iters` steps of power iteration
    on Hessian-vector products (`saddlejax.solvers.power_iteration_step`): the eigenvalue that
    bounds the stable step of gradient descent, η < 2/λ_max."""
    if iters < 1:
        raise ValueError(f"`iters` must be ≥ 1, got {iters}.")
    return float(_power_iteration(objective, params, int(iters)))


def _warm_and_time(fn: Callable):
    """(result, wall seconds, compile seconds): `fn(True)` is a warm-up with the same static
    arguments as the timed `fn(False)`."""
    start = time.perf_counter()
    jax.block_until_ready(fn(True))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(fn(False))
    return out, time.perf_counter() - start, compile_s


def _net(alpha: float):
    return sj.init.scale(sj.nn.DeepLinear(WIDTHS, key=jr.key(1)), alpha)


def _flow_row(problem, alpha: float, solver_name: str, t1: float):
    net, solver = _net(alpha), sj.solvers.solver_from_name(solver_name)

    def flow(warm):  # t1 is traced: the warm-up at a tiny t1 compiles the timed solve
        return sj.gradient_flow(
            problem, net, t1 * 1e-9 if warm else t1, solver=solver, max_steps=100_000
        )

    sol, wall, compile_s = _warm_and_time(flow)
    st = {k: float(jnp.asarray(v)) for k, v in sol.stats.items()}
    row = dict(
        method=f"flow {solver_name}",
        alpha=alpha,
        t1=t1,
        steps=int(st["num_steps"]),
        grad_evals=int(st["grad_evals"]),
        hvp_evals=int(st["hvp_evals"]),
        wall_s=wall,
        compile_s=compile_s,
        overhead=wall / (st["grad_evals"] * gradient_seconds(problem, net)),
        t_half=float(sol.time_below(0.5 * float(sol.loss[0]))),
        final_loss=float(sol.loss[-1]),
    )
    return sol, row


def _descent_row(problem, alpha: float, t1: float, flow: "sj.FlowSolution") -> dict:
    """Gradient descent to the same t1 at its largest stable step, λ_max taken along the flow
    (after the first drop, where it is largest)."""
    net = _net(alpha)
    lam = max(lambda_max(problem, flow.params_at(i)) for i in (-1, len(flow.ts) // 2))
    steps = max(int(round(t1 * lam / 1.9 / 256)), 1) * 256
    eta = t1 / steps

    def descent(_):  # `steps` is static (the scan length): the warm-up runs the same scan
        return sj.gradient_descent(problem, net, learning_rate=eta, steps=steps, throw=False)

    gd, wall, compile_s = _warm_and_time(descent)
    return dict(
        method="GD η = 1.9/λmax",
        alpha=alpha,
        t1=t1,
        steps=steps,
        grad_evals=steps,
        hvp_evals=0,
        wall_s=wall,
        compile_s=compile_s,
        overhead=wall / (steps * gradient_seconds(problem, net)),
        t_half=float(gd.time_below(0.5 * float(gd.loss[0]))),
        final_loss=float(gd.loss[-1]),
    )


def _batch_throughput(problem) -> dict:
    """Seconds per trajectory of 16 seeds (Tsit5, α = 0.1, t1 = 200: the first drop; all warm,
    so the ratios are throughput, not compile amortisation): one jitted solve after the other,
    `sweep` as it runs here (CPU: seeds spread over the host devices; accelerators: vmap), and
    a plain `jax.vmap`. On a CPU vmap is usually slower (the slowest member sets the batch's
    step count; batched dots cost more per member), which is why `sweep` loops there."""
    solver = diffrax.Tsit5()

    def draw(key):
        return sj.nn.DeepLinear(WIDTHS, key=key)

    def one(key):
        net = sj.init.scale(draw(key), 0.1)
        return sj.gradient_flow(problem, net, 200.0, solver=solver, n_save=16, throw=False).loss

    def by_sweep(_):
        seeds = range(N_SEEDS)
        options = dict(solver=solver, n_save=16, progress=False)
        return sj.sweep(problem, draw, 200.0, alphas=[0.1], seeds=seeds, **options).solution.loss

    keys = [jr.key(i) for i in range(N_SEEDS)]
    single, batched = jax.jit(one), jax.jit(jax.vmap(one))
    timings = {
        "alone": lambda _: [single(k) for k in keys],
        "sweep": by_sweep,
        "vmap": lambda _: batched(jnp.stack(keys)),
    }
    devices = jax.devices()
    return dict(
        per_trajectory_s={k: _warm_and_time(f)[1] / N_SEEDS for k, f in timings.items()},
        sweep_batching="loop" if all(d.platform == "cpu" for d in devices) else "vmap",
        devices=f"{len(devices)} {devices[0].platform} device(s)",
    )


def run_bench(alphas=(0.1, 0.01), *, progress: bool = True) -> dict:
    """Time the engine on the default problem at each α (t1 = 500 at α ≥ 0.1, else 2·α^{−2}):
    the automatic solver at every α, Tsit5 and gradient descent at α ≥ 0.1, then the batch
    throughput of 16 seeds. `alphas` as in `BenchConfig`.

    **Returns:** a dict: `machine` (`machine_description()`), `rows` (one per method and α:
    steps, gradient and Hessian-vector-product evaluations, wall and compile seconds, overhead,
    time at which the loss halves, final loss), `batch` (per-trajectory seconds one after the
    other, by `sweep` and by `jax.vmap`; how `sweep` batched here) and `wall_time_s`.
    """
    alphas = BenchConfig(alphas).alphas  # checked before any work
    start = time.perf_counter()
    machine = machine_description()
    if progress:
        print(f"saddlejax bench on {machine}", flush=True)
    problem = sj.matrix_completion_problem(jr.key(0))
    rows = []
    for alpha in alphas:
        t1 = 500.0 if alpha >= 0.1 else 2.0 * alpha**-2
        for name in ("auto", "tsit5") if alpha >= 0.1 else ("auto",):
            sol, row = _flow_row(problem, alpha, name, t1)
            rows.append(row)
            if progress:
                print(f"  {row['method']} α = {alpha}: {row['wall_s']:.2f} s", flush=True)
        if alpha >= 0.1:
            rows.append(_descent_row(problem, alpha, t1, sol))
    batch = _batch_throughput(problem)
    return dict(machine=machine, rows=rows, batch=batch, wall_time_s=time.perf_counter() - start)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return f"{v:.4g}" if v == 0 or 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """`rows` as a Markdown table of `columns` (a missing entry is blank; floats to 4 digits)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def bench_table(result: dict) -> str:
    """The rows of `run_bench` as a Markdown table, then the batch throughput line."""
    batch = result["batch"]
    per = batch["per_trajectory_s"]
    return markdown_table(result["rows"], list(result["rows"][0])) + (
        f"\n\n{N_SEEDS} seeds (tsit5, α = 0.1, t1 = 200, warm), per trajectory: "
        f"{per['alone']:.4f} s one after the other; `sweep` ({batch['sweep_batching']} over "
        f"{batch['devices']}) {per['sweep']:.4f} s (throughput × "
        f"{per['alone'] / per['sweep']:.2f}); jax.vmap {per['vmap']:.4f} s "
        f"(× {per['alone'] / per['vmap']:.2f})"
    )
