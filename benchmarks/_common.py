"""Shared helpers of the benchmarks: problems, solvers by name, timing, table and JSON output.
The machine description, the gradient and Hessian-vector-product timers, λ_max and the Markdown
table are the library's (`saddlejax.experiments`), shared with `saddlejax bench`.

Every benchmark follows the same protocol: a warm-up call (compile, timed separately),
`jax.block_until_ready`, a correctness check before timing, then the timed run.
"""

import argparse
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402

import saddlejax  # noqa: E402
from saddlejax.experiments import machine_description, markdown_table  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short version (seconds to minutes)")
    p.add_argument("--out", type=str, default=None, help="JSON output path")
    return p


def solver_named(name: str, **krylov):
    """The solver called `name` (`saddlejax.solvers.SOLVER_NAMES`, or "auto-rodas5p":
    `AutoStiff` with a RODAS5P implicit solver); for the Rosenbrock–Krylov ones (and "auto"
    through its implicit solver) with the `RosenbrockKrylov` options in `krylov` (`deflate`,
    `recycle`, `deflate_above`, `linear_factor`, ...), where given."""
    krylov = {k: v for k, v in krylov.items() if v is not None}
    tableaus = {
        "rodas3": saddlejax.RODAS3, "rodas4": saddlejax.RODAS4, "rodas5p": saddlejax.RODAS5P,
        "auto": saddlejax.RODAS4, "auto-rodas5p": saddlejax.RODAS5P,
    }
    if name not in tableaus or (not krylov and name in saddlejax.solvers.SOLVER_NAMES):
        return saddlejax.solvers.solver_from_name(name)
    implicit = saddlejax.RosenbrockKrylov(tableau=tableaus[name], **krylov)
    return saddlejax.AutoStiff(implicit=implicit) if name.startswith("auto") else implicit


def default_problem(alpha: float, widths=(10, 100, 100, 100, 10), key=1, problem_key=0):
    """The default problem: 10×10 rank-3 completion, 50 % observed, DeepLinear α·θ̃."""
    problem = saddlejax.matrix_completion_problem(jr.key(problem_key))
    net = saddlejax.nn.DeepLinear(widths, key=jr.key(key))
    return problem, saddlejax.init.scale(net, alpha)


def timeit(fn, *args, repeat: int = 1):
    """(result, best wall seconds) of `fn(*args)` with block_until_ready."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return out, best


def timed_flow(objective, params0, t1, *, repeat=1, **kwargs):
    """Run `gradient_flow` once at a tiny t1 (compile, timed) and then at t1 (timed)."""
    kwargs.setdefault("throw", False)
    warm = dict(kwargs)
    if kwargs.get("saveat") is not None:
        warm["saveat"] = jnp.asarray(kwargs["saveat"]) * 1e-9
    start = time.perf_counter()
    jax.block_until_ready(saddlejax.gradient_flow(objective, params0, t1 * 1e-9, **warm))
    compile_s = time.perf_counter() - start
    sol, wall = timeit(
        lambda: saddlejax.gradient_flow(objective, params0, t1, **kwargs), repeat=repeat
    )
    return sol, wall, compile_s


def drop_time(sol, fraction: float = 0.5) -> float:
    """First save time at which the loss falls below `fraction` of its initial value."""
    loss0 = float(sol.loss[0])
    return float(sol.time_below(fraction * loss0))


def write_json(name: str, payload: dict, out: str | None) -> Path:
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine_description(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def print_table(rows: list[dict], columns: list[str], title: str = "") -> str:
    """Print (and return) a Markdown table of `rows` restricted to `columns`."""
    text = (f"### {title}\n" if title else "") + markdown_table(rows, columns)
    print(text, flush=True)
    return text


def to_float(x) -> float:
    return float(jnp.asarray(x))


def scalar_stats(sol) -> dict:
    """A solution's scalar counters (`sol.stats` without its per-step arrays) as floats."""
    return {k: to_float(v) for k, v in sol.stats.items() if getattr(v, "ndim", 1) == 0}
