"""Sweep throughput: trajectories per second of a batch of seeds in one
`saddlejax.sweep` against one trajectory, against batch size and against the number of devices.

Problem: the default problem (widths 10-w-w-w-10) at α = 0.1, t1 = 500, Tsit5; --quick uses
width 30 and fewer seeds.

- `--platform cpu` (default): each device count runs in a fresh subprocess with
  XLA_FLAGS=--xla_force_host_platform_device_count=N (host devices sharing this machine's
  cores). `--batching loop` spreads the seeds over the devices by threads (what "auto" does on
  a CPU); `--batching vmap` vmaps within each device and `shard_map`s across them.
- `--platform gpu`: the accelerators JAX sees (all of them), batch sizes up to 1,024.

Every configuration checks seed 0 of the batch against a lone `gradient_flow` (relative loss
error < 1e−5) before it is timed, and times a second, warm call.

    python benchmarks/bench_sweep.py [--quick] [--platform gpu] [--batches 1 64 1024]
        [--devices 1 2 4 8] [--width 100] [--batching loop vmap]
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

width, batches, t1, batching = {width}, {batches}, {t1}, {batching!r}
solver = saddlejax.solvers.solver_from_name({solver!r})
problem = saddlejax.matrix_completion_problem(jr.key(0))
def draw(key):
    return saddlejax.nn.DeepLinear((10, width, width, width, 10), key=key)
def go(seeds):
    return saddlejax.sweep(problem, draw, t1, alphas=[0.1], seeds=seeds, progress=False,
                           n_save=32, solver=solver, batching=batching)
net = saddlejax.init.scale(draw(jr.key(0)), 0.1)
single = saddlejax.gradient_flow(problem, net, t1, n_save=32, solver=solver)
for batch in batches:
    seeds = list(range(batch))
    t = time.perf_counter(); res = go(seeds); first = time.perf_counter() - t  # compile + run
    assert not res.failures(), res.failures()
    err = float(jnp.max(jnp.abs(res.solution.loss[0, 0] - single.loss)) / single.loss[0])
    assert err < 1e-5, err
    steps = np.asarray(res.solution.stats["num_steps"]).reshape(-1)
    t = time.perf_counter(); res = go(seeds); wall = time.perf_counter() - t
    print(json.dumps(dict(devices=len(jax.devices()), platform=jax.devices()[0].platform,
                          device_kind=jax.devices()[0].device_kind, batch=batch, wall_s=wall,
                          compile_and_run_s=first, per_trajectory_s=wall / batch,
                          steps_mean=float(steps.mean()), steps_max=int(steps.max()),
                          check_err=err)), flush=True)
"""


def child(width, batches, t1, devices, *, platform="cpu", solver="tsit5", batching="auto"):
    """Run CHILD in a fresh process; one result dict per batch size."""
    env = dict(os.environ)
    if platform == "cpu":
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip()
        env["JAX_PLATFORMS"] = "cpu"
    code = CHILD.format(
        bench_dir=os.path.dirname(os.path.abspath(__file__)),
        width=width,
        batches=list(batches),
        t1=t1,
        solver=solver,
        batching=batching,
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        if not rows:
            raise RuntimeError(f"bench_sweep child failed: {out.stderr[-500:]}")
    return rows


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import parser, print_table, write_json

    p = parser(__doc__)
    p.add_argument("--platform", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--devices", type=int, nargs="+", default=None, help="host device counts")
    p.add_argument("--width", type=int, default=None)
    p.add_argument(
        "--batching", choices=["auto", "vmap", "loop"], nargs="+", default=["auto"],
        help="one or more; each runs every configuration",
    )
    args = p.parse_args(argv)
    width = args.width or (30 if args.quick else 100)
    t1 = 500.0
    if args.platform == "gpu":
        batches = args.batches or [1, 16, 64, 256, 1024]
        device_counts = [None]
    else:
        batches = args.batches or ([1, 16] if args.quick else [1, 8, 64])
        device_counts = args.devices or ([1, 2] if args.quick else [1, 2, 4])
    rows = []
    start = time.perf_counter()
    for batching in args.batching:
        for d in device_counts:
            # Several host devices: only the largest batch (one per device at least).
            bs = batches if d in (None, 1) else [max(batches[-1], d)]
            for r in child(width, bs, t1, d, platform=args.platform, batching=batching):
                rows.append(dict(width=width, batching=batching, **r))
                print(rows[-1], flush=True)
    one = rows[0]["per_trajectory_s"]
    for r in rows:
        r["throughput_vs_one"] = one / r["per_trajectory_s"]
    print_table(
        rows,
        [
            "platform",
            "width",
            "devices",
            "batch",
            "batching",
            "steps_max",
            "wall_s",
            "compile_and_run_s",
            "per_trajectory_s",
            "throughput_vs_one",
            "check_err",
        ],
        f"sweep throughput (total {time.perf_counter() - start:.0f} s)",
    )
    write_json(f"sweep_{args.platform}", {"rows": rows}, args.out)


if __name__ == "__main__":
    main()
