"""What a derivative of a gradient flow costs, against the forward solve (SPEC §1, §8).

1. The escape time t_α(r) of the default problem (L = 4, w = 100, Tsit5 to the event)
   differentiated in the whole 10×10 target matrix A* (one reverse-mode gradient, the event
   time by the implicit function theorem) and in log α (forward mode, one tangent), with the
   default `max_steps` = 10⁶ (checkpoints spread over 10⁶ steps) and with `max_steps` = 4096.
2. A loss functional Σᵢ L(θ(tᵢ)) through the first plateau with the default `AutoStiff`
   (implicit Rosenbrock–CG steps, their CG solves differentiated implicitly), in log α by
   reverse and by forward mode.
3. Memory: peak resident memory of a process that solves a 10⁵-step flow (Tsit5 on the default
   problem from α = 0.1 to t = 45,000, stability-limited after the escapes) and of one that
   differentiates it with checkpointed reverse mode (diffrax's `RecursiveCheckpointAdjoint`),
   each in its own process, beside what storing every step would take.

Walls are after compilation (a first call compiles; the second is timed).

    python benchmarks/bench_grad.py [--quick]
"""

import json
import resource
import subprocess
import sys
import time

import diffrax
import equinox as eqx
import numpy as np
from _common import default_problem, jax, jnp, parser, print_table, write_json

import saddlejax as sj


def _timed(fn, *args):
    """(output, wall of a second call, wall of the first: compile included)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start, first


def escape_time_costs(alpha, radius, widths, max_steps):
    problem, params0 = default_problem(1.0, widths=widths)

    def log_t(target, log_alpha, adjoint=diffrax.RecursiveCheckpointAdjoint()):
        sol = sj.gradient_flow(
            eqx.tree_at(lambda p: p.target, problem, target),
            sj.init.scale(params0, jnp.exp(log_alpha)),
            1e9,
            solver=diffrax.Tsit5(),
            rtol=1e-10,
            n_save=8,
            event=sj.EscapeRadius(radius),
            require_event=True,
            adjoint=adjoint,
            max_steps=max_steps,
        )
        return jnp.log(sol.event_time), sol.stats["num_steps"]

    x = (problem.target, jnp.log(alpha))
    (value, steps), forward, forward_first = _timed(jax.jit(log_t), *x)
    grad_fn = jax.jit(jax.grad(lambda t, a: log_t(t, a)[0]))
    grad, reverse, reverse_first = _timed(grad_fn, *x)
    jvp_fn = jax.jit(
        lambda t, a: jax.jvp(lambda b: log_t(t, b, diffrax.ForwardMode())[0], (a,), (1.0,))[1]
    )
    slope, tangent, tangent_first = _timed(jvp_fn, *x)
    return {
        "what": f"t_α(r={radius}), α={alpha:g}, max_steps={max_steps:g}",
        "steps": int(steps),
        "t_alpha": float(jnp.exp(value)),
        "forward_s": forward,
        "grad_A*_s": reverse,
        "grad/forward": reverse / forward,
        "jvp_logα_s": tangent,
        "jvp/forward": tangent / forward,
        "dlogt/dlogα": float(slope),
        "compile_forward_s": forward_first - forward,
        "compile_grad_s": reverse_first - reverse,
        "max|grad|": float(jnp.max(jnp.abs(grad))),
    }


def plateau_functional_costs(alpha, t1, widths):
    problem, params0 = default_problem(1.0, widths=widths)
    saveat = np.geomspace(1.0, t1, 32)

    def functional(log_alpha, adjoint=diffrax.RecursiveCheckpointAdjoint()):
        sol = sj.gradient_flow(
            problem,
            sj.init.scale(params0, jnp.exp(log_alpha)),
            t1,
            saveat=saveat,
            adjoint=adjoint,
        )
        return jnp.sum(sol.loss), sol.stats

    a = jnp.log(alpha)
    (value, stats), forward, _ = _timed(jax.jit(functional), a)
    grad_fn = jax.jit(jax.grad(lambda b: functional(b)[0]))
    grad, reverse, _ = _timed(grad_fn, a)
    jvp_fn = jax.jit(
        lambda b: jax.jvp(lambda c: functional(c, diffrax.ForwardMode())[0], (b,), (1.0,))[1]
    )
    tangent, forward_mode, _ = _timed(jvp_fn, a)
    return {
        "what": f"Σ L(tᵢ) to t={t1:g}, α={alpha:g}, auto",
        "steps": int(stats["num_steps"]),
        "implicit_steps": int(stats["implicit_steps_accepted"]),
        "forward_s": forward,
        "grad_logα_s": reverse,
        "grad/forward": reverse / forward,
        "jvp_logα_s": forward_mode,
        "jvp/forward": forward_mode / forward,
        "reverse-forward rel": float(abs(grad - tangent) / abs(grad)),
    }


def _memory_child(mode: str, t1: float) -> None:
    """Run in a child process: solve (mode 'solve') or differentiate (mode 'grad') a long
    Tsit5 flow of the default problem; print steps, wall and peak RSS as JSON."""
    problem, params0 = default_problem(0.1)

    def final_loss(scale):
        params = jax.tree_util.tree_map(lambda x: scale * x, params0)
        sol = sj.gradient_flow(
            problem, params, t1, solver=diffrax.Tsit5(), n_save=8, max_steps=400_000
        )
        return sol.loss[-1], sol.stats["num_steps"]

    fn = jax.jit(final_loss if mode == "solve" else jax.grad(final_loss, has_aux=True))
    start = time.perf_counter()
    out, steps = jax.block_until_ready(fn(1.0))
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "steps": int(steps), "wall_s": wall, "peak_MiB": peak_mib}))


def memory_costs(t1: float):
    rows = []
    for mode in ("solve", "grad"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", mode, "--t1", str(t1)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    state_mib = sum(x.size for x in jax.tree_util.tree_leaves(default_problem(0.1)[1])) * 8 / 2**20
    for row in rows:
        row["all steps stored, MiB"] = row["steps"] * state_mib
    return rows


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--memory-child", choices=("solve", "grad"), default=None)
    p.add_argument("--t1", type=float, default=45_000.0)  # ≈ 1.1·10⁵ Tsit5 steps
    args = p.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.t1)
        return
    widths = (10, 20, 20, 20, 10) if args.quick else (10, 100, 100, 100, 10)
    alphas = (0.05,) if args.quick else (0.01, 0.001)
    escape = [
        escape_time_costs(a, 1.0, widths, max_steps)
        for a in alphas
        for max_steps in (1_000_000, 4096)
    ]
    print_table(escape, list(escape[0]), "Escape time: reverse mode in A*, forward mode in α")
    plateau = [plateau_functional_costs(0.1, 400.0 if args.quick else 1000.0, widths)]
    print_table(plateau, list(plateau[0]), "Loss functional through a plateau (auto solver)")
    memory = memory_costs(3_000.0 if args.quick else args.t1)
    print_table(memory, list(memory[0]), "Peak memory of a long solve and of its gradient")
    name = "grad_quick" if args.quick else "grad"
    write_json(name, dict(escape=escape, plateau=plateau, memory=memory), args.out)


if __name__ == "__main__":
    main()
