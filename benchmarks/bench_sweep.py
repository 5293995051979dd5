"""Sweep throughput (issue 5): trajectories per second of a vmapped batch of seeds against one
trajectory, and against the number of (simulated) host devices, each device count in a fresh
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N.

Problem: the default problem at α = 0.1, t1 = 500, Tsit5 (`saddlejax.sweep`); --quick uses
width 30 and fewer seeds.

    python benchmarks/bench_sweep.py [--quick]
"""

import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
sys.path.insert(0, {bench_dir!r})
import _common  # enables float64
import jax, jax.numpy as jnp, jax.random as jr, numpy as np
import saddlejax

width, batch, t1, solver = {width}, {batch}, {t1}, {solver!r}
problem = saddlejax.matrix_completion_problem(jr.key(0))
def init(key):
    return saddlejax.nn.DeepLinear((10, width, width, width, 10), key=key)
def go(seeds):
    return saddlejax.sweep(problem, init, t1, alphas=[0.1], seeds=seeds, progress=None,
                           n_save=32, solver=solver)
seeds = list(range(batch))
t = time.perf_counter(); res = go(seeds); first = time.perf_counter() - t   # compile + run
assert not res.failures(), res.failures()
# correctness: every seed's loss decreased and seed 0 matches a single gradient_flow
net = saddlejax.init.scale(init(jr.key(0)), 0.1)
single = saddlejax.gradient_flow(problem, net, t1, n_save=32, solver=solver)
err = float(jnp.max(jnp.abs(res.solution.loss[0, 0] - single.loss)) / single.loss[0])
assert err < 1e-5, err
t = time.perf_counter(); res = go(seeds); wall = time.perf_counter() - t
print(json.dumps(dict(devices=len(jax.devices()), batch=batch, wall_s=wall,
                      compile_and_run_s=first, per_trajectory_s=wall / batch,
                      check_err=err)))
"""


def child(width, batch, t1, devices, solver="tsit5"):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    code = CHILD.format(
        bench_dir=os.path.dirname(os.path.abspath(__file__)),
        width=width,
        batch=batch,
        t1=t1,
        solver=solver,
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import parser, print_table, write_json

    args = parser(__doc__).parse_args(argv)
    width = 30 if args.quick else 100
    t1 = 500.0
    batches = [1, 16] if args.quick else [1, 8, 64]
    rows = []
    start = time.perf_counter()
    for b in batches:
        r = child(width, b, t1, 1)
        rows.append(dict(kind="vmap batch", width=width, **r))
        print(rows[-1], flush=True)
    for d in [2] if args.quick else [2, 4]:
        b = batches[-1]
        r = child(width, b, t1, d)
        rows.append(dict(kind="devices", width=width, **r))
        print(rows[-1], flush=True)
    one = rows[0]["per_trajectory_s"]
    for r in rows:
        r["throughput_vs_one"] = one / r["per_trajectory_s"]
    print_table(
        rows,
        [
            "kind",
            "width",
            "devices",
            "batch",
            "wall_s",
            "compile_and_run_s",
            "per_trajectory_s",
            "throughput_vs_one",
            "check_err",
        ],
        f"sweep throughput (total {time.perf_counter() - start:.0f} s)",
    )
    write_json("sweep", {"rows": rows}, args.out)


if __name__ == "__main__":
    main()
