"""Shared helpers of the benchmarks: problems, timing, machine name, table and JSON output.

Every benchmark follows the same protocol: a warm-up call (compile, timed separately),
`jax.block_until_ready`, a correctness check before timing, then the timed run.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402

import saddlejax  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"


def machine() -> str:
    """A one-line description of the hardware the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores visible, jax {jax.__version__} on "
        f"{dev.platform} ({dev.device_kind}), float64"
    )


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short version (seconds to minutes)")
    p.add_argument("--out", type=str, default=None, help="JSON output path")
    return p


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


def grad_time(objective, params, n: int = 500) -> float:
    """Seconds per gradient of `objective` at `params` (trainable part), measured inside one
    jitted `lax.fori_loop` of n gradient steps, so that dispatch overhead is excluded: the
    "time of one jitted gradient" of the solver-overhead ratio."""
    state, static = eqx.partition(params, eqx.is_inexact_array)
    g = jax.grad(lambda s: objective(eqx.combine(s, static)))

    @jax.jit
    def loop(s, n):
        def body(_, s):
            return jax.tree_util.tree_map(lambda a, b: a - 1e-12 * b, s, g(s))

        return jax.lax.fori_loop(0, n, body, s)

    jax.block_until_ready(loop(state, 1))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(loop(state, n))
        best = min(best, (time.perf_counter() - start) / n)
    return best


def hvp_time(objective, params, n: int = 300) -> float:
    """Seconds per Hessian-vector product as the Rosenbrock solvers apply it (the tangent map
    of one `jax.linearize` of the gradient), inside a jitted `lax.fori_loop`."""
    state, static = eqx.partition(params, eqx.is_inexact_array)
    g = jax.grad(lambda s: objective(eqx.combine(s, static)))

    @jax.jit
    def loop(s, n):
        _, lin = jax.linearize(g, s)

        def body(_, v):
            return jax.tree_util.tree_map(lambda a, b: a - 1e-12 * b, v, lin(v))

        return jax.lax.fori_loop(0, n, body, s)

    jax.block_until_ready(loop(state, 1))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(loop(state, n))
        best = min(best, (time.perf_counter() - start) / n)
    return best


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
    payload = {"benchmark": name, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def print_table(rows: list[dict], columns: list[str], title: str = "") -> str:
    """Print (and return) a Markdown table of `rows` restricted to `columns`."""

    def fmt(v):
        if isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                return str(v)
            if v == 0 or 1e-3 <= abs(v) < 1e5:
                return f"{v:.4g}"
            return f"{v:.3e}"
        return str(v)

    lines = []
    if title:
        lines.append(f"### {title}")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def to_float(x) -> float:
    return float(jnp.asarray(x))
