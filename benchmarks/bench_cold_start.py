"""Cold start: what a new process pays before its first solve's result, with an empty
persistent compilation cache and with the cache the first process filled.

    python benchmarks/bench_cold_start.py [--quick] [--pairs 2] [--width 100] [--out PATH]

Problem: the default one (Jacot et al. Fig. 1, `DeepLinear` (10, w, w, w, 10), seed 1) at
α = 0.1, t1 = 500, 64 saves, the default solver. Each pair is two fresh processes sharing a
new cache folder (as `SADDLEJAX_CACHE_DIR` gives the CLI); each reports `import` (jax and
saddlejax), `first` (the first `gradient_flow` call: tracing, compiling or loading, solving),
`warm` (the same call again) and `whole` (the process until then, interpreter start excluded).
`first` − `warm` is what the cache cannot save plus what it does. `--quick`: one pair at w = 20.
"""

import json
import os
import subprocess
import sys
import tempfile

from _common import parser, print_table, write_json

CHILD = r"""
import json
import time
t0 = time.perf_counter()
import jax
import jax.random as jr
import saddlejax as sj
t_import = time.perf_counter() - t0
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
width = {width}
prob = sj.matrix_completion_problem(jr.key(0))
net = sj.nn.DeepLinear((10, width, width, width, 10), key=jr.key(1))
net = jax.block_until_ready(sj.init.scale(net, 0.1))
t1 = time.perf_counter()
sol = jax.block_until_ready(sj.gradient_flow(prob, net, 500.0, n_save=64))
t_first = time.perf_counter() - t1
t_whole = time.perf_counter() - t0
t2 = time.perf_counter()
jax.block_until_ready(sj.gradient_flow(prob, net, 500.0, n_save=64))
print(json.dumps({{"import": t_import, "first": t_first, "warm": time.perf_counter() - t2,
                  "whole": t_whole, "steps": int(sol.stats["num_steps"])}}))
"""


def one_process(width: int, cache: str) -> dict:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(width=width)], env=env, capture_output=True,
        text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = parser("cold and cached first solves of a new process")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--width", type=int, default=100)
    args = p.parse_args()
    if args.quick:
        args.pairs, args.width = 1, 20
    rows = []
    for pair in range(args.pairs):
        with tempfile.TemporaryDirectory() as cache:
            for cached in ("empty", "filled"):
                r = one_process(args.width, cache)
                rows.append(dict(pair=pair, cache=cached, **r))
                print(rows[-1], flush=True)
    table = [
        {"pair": r["pair"], "cache": r["cache"], "import s": f"{r['import']:.2f}",
         "first call s": f"{r['first']:.2f}", "warm call s": f"{r['warm']:.2f}",
         "whole s": f"{r['whole']:.2f}", "steps": r["steps"]}
        for r in rows
    ]
    print_table(table, list(table[0]), f"cold start, width {args.width}")
    write_json("cold_start", dict(width=args.width, rows=rows), args.out)


if __name__ == "__main__":
    sys.exit(main())
