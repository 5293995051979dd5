"""What a benchmark measures against: the machine it ran on and the cost of one gradient or
Hessian-vector product there (the unit of the solver-overhead ratio)."""

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
from jaxtyping import PyTree


def machine_description() -> str:
    """One line naming the hardware and software the numbers were measured on: CPU model,
    visible cores, jax version, the default device and the float precision in use."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    precision = "float64" if jax.config.jax_enable_x64 else "float32"
    return (
        f"{cpu}, {os.cpu_count()} cores visible, jax {jax.__version__} on "
        f"{dev.platform} ({dev.device_kind}), {precision}"
    )


def _seconds_per_iteration(loop: Callable, state, n: int, repeat: int) -> float:
    """Best of `repeat` timings of `loop(state, n)` (n iterations inside one jitted
    `fori_loop`, so that dispatch overhead is excluded), divided by n; compiled first."""
    loop = jax.jit(loop)
    jax.block_until_ready(loop(state, 1))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(loop(state, n))
        best = min(best, (time.perf_counter() - start) / n)
    return best


def _descend(direction: Callable, x, n):
    """n tiny steps x ← x − 1e−12·direction(x): each iteration depends on the last, so the
    compiler cannot hoist `direction` out of the loop."""

    def step(_, x):
        return jax.tree_util.tree_map(lambda a, b: a - 1e-12 * b, x, direction(x))

    return jax.lax.fori_loop(0, n, step, x)


def _gradient(objective: Callable, params: PyTree):
    state, static = eqx.partition(params, eqx.is_inexact_array)
    return state, jax.grad(lambda s: objective(eqx.combine(s, static)))


def gradient_seconds(
    objective: Callable, params: PyTree, *, n: int = 300, repeat: int = 3
) -> float:
    """Seconds per gradient of `objective` at `params` (its inexact-array leaves): the "time of
    one jitted gradient" of the solver-overhead ratio wall ÷ (gradient evaluations × this)."""
    state, grad = _gradient(objective, params)
    return _seconds_per_iteration(lambda s, n: _descend(grad, s, n), state, n, repeat)


def hvp_seconds(objective: Callable, params: PyTree, *, n: int = 300, repeat: int = 3) -> float:
    """Seconds per Hessian-vector product as the Rosenbrock solvers apply it: the tangent map
    of one `jax.linearize` of the gradient at `params`, applied `n` times."""
    state, grad = _gradient(objective, params)

    def loop(s, n):
        _, hvp = jax.linearize(grad, s)
        return _descend(hvp, s, n)

    return _seconds_per_iteration(loop, state, n, repeat)
