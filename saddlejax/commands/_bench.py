"""`saddlejax bench`: a quick benchmark of the engine on this machine (issue 5).

The full suite lives in `benchmarks/` of the repository; this is its short version (about a
minute or two on a 2-core CPU): the default problem (10×10 rank-3 completion, L = 4, w = 100)
at α = 0.1 and 0.01 with the automatic and the explicit solver, gradient descent at its largest
stable step, and a 16-seed `sweep` and `jax.vmap` against one trajectory.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="quick benchmark of the gradient-flow engine on this machine",
        description="Times gradient flow on the default problem (L = 4, w = 100, 10×10 rank-3 "
        "completion) at α = 0.1 and 0.01: solver steps, gradient and Hessian-vector-product "
        "evaluations, wall and compile time, solver overhead (wall ÷ gradient evaluations × one "
        "gradient), against gradient descent at 1.9/λ_max, and 16 seeds by `sweep` and by "
        "vmap. Prints a table naming the machine; the full suite is in benchmarks/.",
    )
    p.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    p.add_argument(
        "--alphas", type=float, nargs="+", default=[0.1, 0.01], help="initialisation scales"
    )
    p.set_defaults(func=main)


def _machine() -> str:
    import os
    import platform
    from pathlib import Path

    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    return f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__}, {dev.platform}, float64"


def _grad_seconds(objective, params, n=300) -> float:
    import time

    import equinox as eqx
    import jax

    state, static = eqx.partition(params, eqx.is_inexact_array)
    g = jax.grad(lambda s: objective(eqx.combine(s, static)))

    @jax.jit
    def loop(s, n):
        def body(_, s):
            return jax.tree_util.tree_map(lambda a, b: a - 1e-12 * b, s, g(s))

        return jax.lax.fori_loop(0, n, body, s)

    jax.block_until_ready(loop(state, 1))
    start = time.perf_counter()
    jax.block_until_ready(loop(state, n))
    return (time.perf_counter() - start) / n


def _lambda_max(objective, params, iters=60) -> float:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    state, static = eqx.partition(params, eqx.is_inexact_array)
    x, unravel = ravel_pytree(state)
    grad = jax.grad(lambda x: objective(eqx.combine(unravel(x), static)))
    hvp = jax.jit(lambda v: jax.jvp(grad, (x,), (v,))[1])
    v = jnp.cos(jnp.arange(x.size) * 2.399963229728653)
    lam = 0.0
    for _ in range(iters):
        v = v / jnp.linalg.norm(v)
        w = hvp(v)
        lam = float(v @ w)
        v = w
    return lam


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if v == v and (v == 0 or 1e-3 <= abs(v) < 1e5) else f"{v:.3e}"
    return str(v)


def main(args) -> int:
    import json
    import time

    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import saddlejax

    start_all = time.perf_counter()
    print(f"saddlejax bench on {_machine()}", flush=True)
    problem = saddlejax.matrix_completion_problem(jr.key(0))
    rows = []

    def flow_row(alpha, solver, t1):
        net = saddlejax.init.scale(
            saddlejax.nn.DeepLinear((10, 100, 100, 100, 10), key=jr.key(1)), alpha
        )
        # Warm-up with the same static arguments (max_steps is one), so the timed call below
        # reuses the compiled solve: wall_s excludes compilation.
        start = time.perf_counter()
        jax.block_until_ready(
            saddlejax.gradient_flow(problem, net, t1 * 1e-9, solver=solver, max_steps=100_000)
        )
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        sol = jax.block_until_ready(
            saddlejax.gradient_flow(problem, net, t1, solver=solver, max_steps=100_000)
        )
        wall = time.perf_counter() - start
        st = {k: float(jnp.asarray(v)) for k, v in sol.stats.items()}
        tg = _grad_seconds(problem, net)
        loss0 = float(sol.loss[0])
        return (
            net,
            sol,
            dict(
                method=f"flow {solver}",
                alpha=alpha,
                t1=t1,
                steps=int(st["num_steps"]),
                grad_evals=int(st["grad_evals"]),
                hvp_evals=int(st.get("hvp_evals", 0)),
                wall_s=wall,
                compile_s=compile_s,
                overhead=wall / (st["grad_evals"] * tg),
                t_half=float(sol.time_below(0.5 * loss0)),
                final_loss=float(sol.loss[-1]),
            ),
        )

    for alpha in args.alphas:
        t1 = 500.0 if alpha >= 0.1 else 2.0 * alpha**-2
        solvers = ["auto", "tsit5"] if alpha >= 0.1 else ["auto"]
        for solver in solvers:
            net, sol, row = flow_row(alpha, solver, t1)
            rows.append(row)
            print(f"  {row['method']} α = {alpha}: {row['wall_s']:.2f} s", flush=True)
        if alpha >= 0.1:
            # Gradient descent at its largest stable step, λ_max taken after the first drop.
            lam = max(_lambda_max(problem, sol.params_at(i)) for i in (-1, len(sol.ts) // 2))
            eta = 1.9 / lam
            steps = int(round(t1 / eta / 256)) * 256
            eta = t1 / steps
            # `steps` is static (the scan length): warm up with the same number of steps.
            start = time.perf_counter()
            jax.block_until_ready(
                saddlejax.gradient_descent(
                    problem, net, learning_rate=eta, steps=steps, throw=False
                )
            )
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            gd = jax.block_until_ready(
                saddlejax.gradient_descent(
                    problem, net, learning_rate=eta, steps=steps, throw=False
                )
            )
            wall = time.perf_counter() - start
            rows.append(
                dict(
                    method="GD η = 1.9/λmax",
                    alpha=alpha,
                    t1=t1,
                    steps=steps,
                    grad_evals=steps,
                    hvp_evals=0,
                    wall_s=wall,
                    compile_s=compile_s,
                    overhead=wall / (steps * _grad_seconds(problem, net)),
                    t_half=float(gd.time_below(0.5 * float(gd.loss[0]))),
                    final_loss=float(gd.loss[-1]),
                )
            )

    # Batch throughput (α = 0.1, t1 = 200: the first drop; seeds 0-15; all warm: compile
    # excluded, so the ratios are throughput, not compile amortisation): the seeds one after
    # the other, `sweep` as it runs here (CPU: a loop over seeds spread over the host devices;
    # accelerators: vmap), and a plain `jax.vmap`. On a CPU vmap is usually < 1
    # (benchmarks/README.md: stragglers set the batch's step count; batched dots cost more per
    # member), which is why `sweep` loops there.
    def draw(key):
        return saddlejax.nn.DeepLinear((10, 100, 100, 100, 10), key=key)

    def one(key):
        net = saddlejax.init.scale(draw(key), 0.1)
        return saddlejax.gradient_flow(problem, net, 200.0, n_save=16, throw=False).loss

    def timed(fn, *a):
        jax.block_until_ready(fn(*a))  # compile
        start = time.perf_counter()
        jax.block_until_ready(fn(*a))
        return time.perf_counter() - start

    def sweep16():
        return saddlejax.sweep(
            problem, draw, 200.0, alphas=[0.1], seeds=range(16), n_save=16, progress=None
        ).solution.loss

    single = jax.jit(one)
    keys16 = [jr.key(i) for i in range(16)]

    def one_by_one():  # the obvious alternative: a Python loop of jitted single solves
        return [single(k) for k in keys16]

    per = {
        "alone": timed(one_by_one) / 16,
        "sweep": timed(sweep16) / 16,
        "vmap": timed(jax.jit(jax.vmap(one)), jnp.stack(keys16)) / 16,
    }
    devices = jax.devices()
    how = "loop" if all(d.platform == "cpu" for d in devices) else "vmap"
    keys = list(rows[0])
    print()
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(_fmt(r[k]) for k in keys) + " |")
    print(
        f"\n16 seeds (tsit5, α = 0.1, t1 = 200, warm), per trajectory: {per['alone']:.4f} s "
        f"one after the other; `sweep` ({how} over {len(devices)} {devices[0].platform} device(s)) "
        f"{per['sweep']:.4f} s (throughput × {per['alone'] / per['sweep']:.2f}); jax.vmap "
        f"{per['vmap']:.4f} s (× {per['alone'] / per['vmap']:.2f})"
    )
    print(f"total {time.perf_counter() - start_all:.0f} s; machine: {_machine()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(machine=_machine(), rows=rows, vmap_per_trajectory_s=per), fh, indent=2)
    return 0
