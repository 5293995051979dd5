"""The deep-ReLU chain's two drops against exact-ReLU flows from α·θ̃ as α → 0.

    python benchmarks/bench_relu_chain_drops.py [--alphas 1e-7 1e-8 1e-9] [--seed 0]
                                                [--smoothing 1e-4] [--default-rtol]
                                                [--carry-etas 1e-2 1e-6 1e-8]

Problem: the `chain-deep-relu` preset (teacher (4, 4, 4, 2), student `DeepReLU((4, 8, 8, 2))`,
32 Gaussian samples). `saddle_chain(max_saddles=2)` predicts the two drops (0 → ϑ¹ → the loss
floor). Per α: `sliding_flow` from α·θ̃ at rtol = min(1e−8, α/100) — a later plateau's length
is set by the part of size ~α carried along, which an error control of rtol·|θ| ≫ α does not
resolve (`--default-rtol` adds a row at rtol 1e−8 to show it) — to 3.5 × the first drop,
continued past its stop on dense kink switching (at the kinks of units still of size α, early
in the second drop) by the flow of the same weights at kink smoothing `smoothing`
(`continue_smoothing`).
Reported: the flow's drop times (half-way between the chain's saddle levels) over the
chain's, and its loss on the ϑ¹ plateau against the chain's ϑ¹. `--carry-etas`: the chain's
second drop (÷ its first, at α = 1e−8) with other `carry_eta`s.
"""

import time

import jax
import jax.random as jr
import numpy as np
from _common import parser, print_table, write_json

import saddlejax as sj
from saddlejax.analysis._crossings import crossing_times
from saddlejax.experiments._saddle_chain import SaddleChainConfig, deep_relu_problem


def flow_drops(problem, init, alpha, chain, rtol, smoothing) -> dict:
    """The exact flow continued by the smoothed one (`continue_smoothing`), and the half-way
    crossings of both drops."""
    drops = chain.drop_times(alpha)
    levels = chain.losses
    mids = 0.5 * (levels[:-1] + levels[1:])
    near = np.linspace(0.95, 1.05, 2001) * drops[0]
    later = np.unique(np.r_[1.5, np.geomspace(2.0, 3.5, 3001)]) * drops[0]
    start = time.perf_counter()
    sol = sj.sliding_flow(problem, sj.init.scale(init, alpha), 3.5 * drops[0],
                          saveat=np.r_[near, later], rtol=rtol, max_steps=200_000,
                          continue_smoothing=smoothing)
    row = dict(alpha=alpha, rtol=rtol, wall_s=time.perf_counter() - start,
               ok=bool(sol.successful),
               stop_over_first=float(sol.stats["smoothed_from"]) / drops[0],
               exact_crossings=int(sol.stats["kink_crossings"]))
    ts, loss, grad = (np.asarray(a) for a in (sol.ts, sol.loss, sol.grad_norm))
    first = crossing_times(ts[: near.size], loss[: near.size], mids[:1], grad[: near.size])[0]
    row["first_drop_ratio"] = float(first / drops[0])
    row["plateau_rel"] = float(abs(loss[near.size] - levels[1]) / levels[1])
    tail = slice(near.size + 1, None)
    second = crossing_times(ts[tail], loss[tail], mids[1:2], grad[tail])[0]
    row["second_drop_ratio"] = float(second / drops[1])
    row["final_loss"] = float(loss[-1])
    return row


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--alphas", type=float, nargs="+", default=[1e-7, 1e-8, 1e-9])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoothing", type=float, default=1e-4)
    p.add_argument("--default-rtol", action="store_true")
    p.add_argument("--carry-etas", type=float, nargs="*", default=[])
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    config = SaddleChainConfig(problem="deep-relu", width=8, problem_seed=args.seed,
                               seed=args.seed)
    problem, init = deep_relu_problem(config)
    start = time.perf_counter()
    chain = sj.saddle_chain(problem, init, key=jr.key(args.seed), max_saddles=2)
    chain_s = time.perf_counter() - start
    print(f"chain: {chain_s:.1f} s, losses {chain.losses}, stop {chain.stop_reason}", flush=True)
    runs = [(a, min(1e-8, a / 100)) for a in args.alphas]
    if args.default_rtol:
        runs += [(a, 1e-8) for a in args.alphas if a / 100 < 1e-8]
    etas = []
    for eta in args.carry_etas:
        start = time.perf_counter()
        other = sj.saddle_chain(problem, init, key=jr.key(args.seed), max_saddles=2,
                                carry_eta=eta)
        drops = other.drop_times(1e-8)
        etas.append(dict(carry_eta=eta, second_over_first=float(drops[-1] / drops[0]),
                         chain_s=time.perf_counter() - start))
        print(etas[-1], flush=True)
    rows = []
    for alpha, rtol in runs:
        rows.append(flow_drops(problem, init, alpha, chain, rtol, args.smoothing))
        print(rows[-1], flush=True)
    print_table(rows, ["alpha", "rtol", "first_drop_ratio", "plateau_rel", "stop_over_first",
                       "second_drop_ratio", "final_loss", "wall_s"],
                f"flow drop time ÷ chain's (seed {args.seed})")
    payload = dict(seed=args.seed, smoothing=args.smoothing, chain_s=chain_s,
                   chain_losses=chain.losses.tolist(),
                   chain_drops_over_first=(chain.drop_times(1e-8)
                                           / chain.drop_times(1e-8)[0]).tolist(),
                   carry_etas=etas, rows=rows)
    write_json("relu_chain_drops", payload, args.out)


if __name__ == "__main__":
    main()
