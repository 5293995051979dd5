"""The cost of looking past an event: a flow with `stop_at_event=False` (solve to the event,
then on to t1) against the same flow stopped at its event, cold (a fresh process, compile
included) and warm.

    python benchmarks/bench_event_continuation.py [--quick] [--width 20] [--seeds 3]

Problem: Jacot et al. Fig. 1 (10×10 rank-3 completion, half observed), `DeepLinear` of depth 4
and the given width at α = 1e−2, `EscapeRadius(4)`, 256 saves, t1 = 3·10⁴, the default solver.
Each mode runs in its own process (so that neither reuses the other's compiled parts): one
cold call, then three warm calls per seed.
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from _common import default_problem, parser, print_table, write_json

import saddlejax

T1 = 3e4


def one_mode(stop: bool, width: int, seeds: int) -> dict:
    widths = (10, width, width, width, 10)
    problem = default_problem(1e-2, widths)[0]
    nets = [default_problem(1e-2, widths, key=s)[1] for s in range(seeds)]
    kw = dict(event=saddlejax.EscapeRadius(4.0), stop_at_event=stop, n_save=256)
    start = time.perf_counter()
    sol = saddlejax.gradient_flow(problem, nets[0], T1, **kw)
    sol.loss.block_until_ready()
    cold = time.perf_counter() - start
    warm = []
    for _ in range(3):
        for net in nets:
            start = time.perf_counter()
            sol = saddlejax.gradient_flow(problem, net, T1, **kw)
            sol.loss.block_until_ready()
            warm.append(time.perf_counter() - start)
    return dict(stop_at_event=stop, cold_s=cold, warm_median_s=float(np.median(warm)),
                event_time=float(sol.event_time), steps=int(sol.stats["num_steps"]))


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--mode", choices=["stop", "continue"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    seeds = 1 if args.quick else args.seeds
    if args.mode is not None:  # the child process: one mode, printed as JSON
        print(json.dumps(one_mode(args.mode == "stop", args.width, seeds)))
        return
    rows = []
    for mode in ("stop", "continue"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--width", str(args.width),
             "--seeds", str(seeds)],
            check=True, capture_output=True, text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print_table(rows, ["stop_at_event", "cold_s", "warm_median_s", "event_time", "steps"],
                f"event continuation, width {args.width}")
    write_json("event_continuation", dict(width=args.width, seeds=seeds, rows=rows), args.out)


if __name__ == "__main__":
    main()
