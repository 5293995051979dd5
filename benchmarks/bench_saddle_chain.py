"""The α → 0 chain of saddles against the small-α flows it predicts: cost and accuracy.

    python benchmarks/bench_saddle_chain.py [--quick] [--seeds 0 1 2] [--alphas 1e-3 1e-4]
                                            [--instances N]

Problem: Jacot et al. Fig. 1 (the default problem: 10×10 rank-3 completion, 50 % observed,
`DeepLinear((10, 100, 100, 100, 10))`, P = 22,000), one initialisation θ̃ per seed; `--quick`
uses width 20. Per seed: `saddle_chain` (cold: the first call in the process, compile
included; warm: a second call), `greedy_low_rank` for the saddle losses, and the flow from α·θ̃
at each α (AutoStiff, rtol 1e−6; cold and warm). Reported: the chain's losses against greedy and
against the flows' plateau levels, predicted against simulated drop times (half-way between
consecutive saddle levels), the flow's loss at t1 = 3 × the last predicted drop against the
chain's last point, and wall(chain) ÷ wall(flow at the smallest α).

`--instances N`: instead of seeds of the one problem, the first N random instances of
`bench_instances.py`'s family (mask density ρ uniform in [0.3, 0.6], random problem and init
seeds), one chain and one flow per α each (the first calls compile; the others reuse them),
greedy up to the chain's last rank, summarised by the median and worst agreement over the
instances whose chain reaches a minimum.
"""

import time

import jax
import jax.random as jr
import numpy as np
from _common import parser, print_table, write_json
from bench_instances import draw_instances

import saddlejax
from saddlejax.analysis._crossings import crossing_times
from saddlejax.experiments._saddle_chain import plateau_middles, save_times


def crossings(ts, loss, grad_norm, levels) -> np.ndarray:
    """The flow's half-way crossings between consecutive saddle levels."""
    return crossing_times(ts, loss, 0.5 * (levels[:-1] + levels[1:]), grad_norm)


def timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def run_seed(
    problem, width, seed, alphas, *, warm_repeat=True, cap_greedy=False, greedy=True, **label
) -> dict:
    net = saddlejax.nn.DeepLinear((10, width, width, width, 10), key=jr.key(seed))
    chain, cold = timed(
        lambda: saddlejax.saddle_chain(problem, net, key=jr.key(0), carry_alphas=alphas)
    )
    warm = float("nan")
    if warm_repeat:
        _, warm = timed(
            lambda: saddlejax.saddle_chain(problem, net, key=jr.key(0), carry_alphas=alphas)
        )
    # `cap_greedy`: greedy stops where the chain stopped; a stage past a drift runs to its
    # horizon (minutes) and has no chain saddle to be compared with.
    width_cap = max(1, chain.losses.size - 1) if cap_greedy else None
    row = dict(
        **label, seed=seed, chain_cold_s=cold, chain_warm_s=warm, ranks=chain.ranks.tolist(),
        losses=chain.losses.tolist(), stop=chain.stop_reason,
        arrived=chain.stop_reason in ("minimum", "loss_floor"), greedy_rel=float("nan"),
    )
    if greedy:
        out, row["greedy_s"] = timed(
            lambda: saddlejax.greedy_low_rank(problem, 4, max_width=width_cap)
        )
        row["greedy_losses"] = out.losses.tolist()
        n = min(len(chain.losses), len(out.losses))
        row["greedy_rel"] = float(np.max(np.abs(chain.losses[:n] / out.losses[:n] - 1)))
    for alpha in alphas:
        predicted = chain.drop_times(alpha)
        params0 = saddlejax.init.scale(net, alpha)
        t1 = 3 * predicted[-1]
        # Dense near each predicted drop, so that the crossings are the flow's, not the save
        # grid's (4,000 saves spread over [0, t1] move a drop by up to 0.2 %).
        saveat = save_times(predicted, plateau_middles(predicted, t1), t1, 2000, 300)
        sol, flow_cold = timed(
            lambda: saddlejax.gradient_flow(problem, params0, t1, saveat=saveat, throw=False)
        )
        flow_warm = flow_cold
        if warm_repeat:
            _, flow_warm = timed(
                lambda: saddlejax.gradient_flow(problem, params0, t1, saveat=saveat, throw=False)
            )
        ts, loss = np.asarray(sol.ts), np.asarray(sol.loss)
        simulated = crossings(ts, loss, np.asarray(sol.grad_norm), chain.losses)
        mids = np.concatenate([[0.5 * simulated[0]], 0.5 * (simulated[:-1] + simulated[1:])])
        levels = np.interp(mids, ts, loss)
        row[f"drop_rel_{alpha:g}"] = np.abs(predicted / simulated - 1).tolist()
        row[f"level_rel_{alpha:g}"] = float(np.max(np.abs(levels / chain.losses[:-1] - 1)))
        # Where the flow stands at t1, against the chain's last point (past a drift the flow
        # goes on to escapes the chain does not follow).
        row[f"flow_end_loss_{alpha:g}"] = float(loss[-1])
        row[f"flow_cold_s_{alpha:g}"] = flow_cold
        row[f"flow_warm_s_{alpha:g}"] = flow_warm
        row[f"flow_ok_{alpha:g}"] = bool(sol.result == saddlejax.RESULTS.successful)
    smallest = f"{min(alphas):g}"
    row["cold_ratio"] = cold / row[f"flow_cold_s_{smallest}"]
    row["warm_ratio"] = warm / row[f"flow_warm_s_{smallest}"]
    return row


def summarise_instances(rows, alphas) -> None:
    """Median and worst over the instances whose chain reaches a minimum; the others counted."""
    arrived = [r for r in rows if r["arrived"]]
    print(f"\n{len(arrived)} of {len(rows)} chains reach a minimum; stopped: "
          + ", ".join(f"{r['instance']} ({r['stop'].split(':')[0]})" for r in rows
                      if not r["arrived"]))
    if not arrived:
        return
    stats = {"chain vs greedy losses": [r["greedy_rel"] for r in arrived],
             "chain wall s (after the first)": [r["chain_cold_s"] for r in rows[1:]]}
    for a in alphas:
        stats[f"max drop error α={a:g}"] = [max(r[f"drop_rel_{a:g}"]) for r in arrived]
        stats[f"level error α={a:g}"] = [r[f"level_rel_{a:g}"] for r in arrived]
        stats[f"flow wall s α={a:g}"] = [r[f"flow_warm_s_{a:g}"] for r in rows]
    for name, v in stats.items():
        if v:
            print(f"{name:34s} median {np.median(v):.3g}  worst {np.max(v):.3g}")


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--alphas", type=float, nargs="+", default=[1e-3, 1e-4])
    p.add_argument("--instances", type=int, default=0)
    p.add_argument("--no-greedy", action="store_true",
                   help="skip greedy_low_rank (its drifting stages take minutes per instance)")
    args = p.parse_args()
    width = 20 if args.quick else 100
    rows = []
    if args.instances:
        for inst in draw_instances(args.instances):
            problem = saddlejax.matrix_completion_problem(
                jr.key(inst["problem_seed"]), 10, 3, inst["observed"]
            )
            rows.append(run_seed(
                problem, width, inst["init_seed"], args.alphas, warm_repeat=False,
                cap_greedy=True, greedy=not args.no_greedy, instance=inst["label"],
                observed=inst["observed"],
            ))
            print(rows[-1], flush=True)
        summarise_instances(rows, args.alphas)
    else:
        problem = saddlejax.matrix_completion_problem(jr.key(0), 10, 3, 0.5)
        for seed in args.seeds:
            rows.append(run_seed(problem, width, seed, args.alphas, greedy=not args.no_greedy))
            print(rows[-1], flush=True)
    smallest = f"{min(args.alphas):g}"
    table = [
        dict(
            seed=r["seed"], ranks=str(r["ranks"]), greedy_rel=f"{r['greedy_rel']:.1e}",
            **{f"max drop err α={a:g}": f"{max(r[f'drop_rel_{a:g}']):.2%}" for a in args.alphas},
            **{f"level err α={a:g}": f"{r[f'level_rel_{a:g}']:.2%}" for a in args.alphas},
            **{f"flow L(t1) α={a:g}": f"{r[f'flow_end_loss_{a:g}']:.5g}" for a in args.alphas},
            chain_cold_s=f"{r['chain_cold_s']:.1f}", chain_warm_s=f"{r['chain_warm_s']:.1f}",
            flow_cold_s=f"{r[f'flow_cold_s_{smallest}']:.1f}",
            flow_warm_s=f"{r[f'flow_warm_s_{smallest}']:.1f}",
            cold_ratio=f"{r['cold_ratio']:.2f}", warm_ratio=f"{r['warm_ratio']:.2f}",
        )
        for r in rows
    ]
    print_table(table, list(table[0]), f"saddle chain vs flows, width {width}")
    write_json(
        "saddle_chain" + ("_quick" if args.quick else "")
        + (f"_instances{args.instances}" if args.instances else ""),
        dict(width=width, alphas=args.alphas, rows=rows),
        args.out,
    )


if __name__ == "__main__":
    main()
