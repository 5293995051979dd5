"""The deep-linear chain's drops against small-α flows on random draws of one problem.

    python benchmarks/bench_chain_draws.py [--draws 0,0 0,1 1,0 2,0 3,0 1,1 2,1 3,1]
                                           [--alphas 1e-3 1e-4] [--width 10] [--quick]

Problem: the `chain-jacot-fig1` preset's (10×10 rank-3 completion, 50 % observed, depth 4) at
`width` (10: its quick mode), drawn as `seed,problem_seed` (θ̃ and the chain's probes; the
data). Per draw: `saddle_chain` (the part carried to each later saddle handed over at the
`alphas`, `carry_alphas`), then per α the flow from α·θ̃ (rtol α/100, as the preset's
flows: a later plateau's length is set by a part of size ~α carried through the escapes) to
1.5 × the chain's last predicted drop, saved densely near each predicted drop. Reported: each
drop's predicted ÷ simulated time − 1 (crossings half-way between the chain's saddle levels),
the chain's prediction at each α against the flow at that α.
"""

import time

import jax
import jax.random as jr
import numpy as np
from _common import parser, print_table, write_json

import saddlejax as sj
from saddlejax.analysis._crossings import crossing_times
from saddlejax.experiments._saddle_chain import (
    SaddleChainConfig,
    jacot_fig1_problem,
    plateau_middles,
    save_times,
)


def draw_rows(seed: int, problem_seed: int, width: int, alphas) -> list[dict]:
    config = SaddleChainConfig(problem="jacot-fig1", width=width, seed=seed,
                               problem_seed=problem_seed)
    problem, init = jacot_fig1_problem(config)
    start = time.perf_counter()
    chain = sj.saddle_chain(problem, init, key=jr.key(seed), carry_alphas=alphas)
    chain_s = time.perf_counter() - start
    print(f"draw ({seed}, {problem_seed}): chain {chain_s:.1f} s, losses {chain.losses}, "
          f"stop {chain.stop_reason[:40]}", flush=True)
    levels = chain.losses
    mids = 0.5 * (levels[:-1] + levels[1:])[: chain.n_arrived]
    rows = []
    for alpha in alphas:
        drops = chain.drop_times(alpha)
        t1 = 1.5 * float(drops[-1])
        saveat = save_times(drops, plateau_middles(drops, t1), t1, 2000, 300)
        start = time.perf_counter()
        sol = sj.gradient_flow(problem, sj.init.scale(init, alpha), t1, saveat=saveat,
                               rtol=alpha / 100, max_steps=400_000, throw=False)
        simulated = crossing_times(np.asarray(sol.ts), np.asarray(sol.loss), mids,
                                   np.asarray(sol.grad_norm))
        errors = drops / simulated - 1
        row = dict(draw=f"({seed}, {problem_seed})", alpha=alpha, chain_s=chain_s,
                   ok=bool(sol.successful), flow_s=time.perf_counter() - start,
                   saddles=len(chain.saddles), stop=chain.stop_reason.split(":")[0])
        row.update({f"drop{j + 1}": float(e) for j, e in enumerate(errors)})
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--draws", nargs="+",
                   default=["0,0", "0,1", "1,0", "2,0", "3,0", "1,1", "2,1", "3,1"])
    p.add_argument("--alphas", type=float, nargs="+", default=[1e-3, 1e-4])
    p.add_argument("--width", type=int, default=10)
    args = p.parse_args(argv)
    if args.quick:  # one draw, one α: a smoke test of seconds
        args.draws, args.alphas = ["0,1"], [1e-3]
    jax.config.update("jax_enable_x64", True)
    rows = []
    for draw in args.draws:
        seed, problem_seed = (int(v) for v in draw.split(","))
        rows += draw_rows(seed, problem_seed, args.width, args.alphas)
    columns = ["draw", "alpha", "drop1", "drop2", "drop3", "ok", "chain_s", "flow_s"]
    for row in rows:
        row.update({c: row.get(c, float("nan")) for c in columns})
    print_table(rows, columns, "predicted ÷ simulated drop time − 1")
    write_json("chain_draws", dict(width=args.width, rows=rows), args.out)


if __name__ == "__main__":
    main()
