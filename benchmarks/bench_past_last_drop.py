"""Where a flow's cost goes after the last drop of the saddle chain, and why it grows as α falls.

    python benchmarks/bench_past_last_drop.py [--quick] [--width 20] [--alphas 1e-3 1e-4]

The `chain-jacot-fig1` problem (Jacot et al. Fig. 1: 10×10 rank-3 completion, half observed,
DLN (10, w, w, w, 10), problem and init seed 0): `saddle_chain` predicts the drops, then the
default solver runs the flow from α·θ̃ to 3× the last predicted drop (rtol 1e−8, the
preset's), with `record_steps=True`; its wall is timed after a compiling warm-up call.
t_d is the flow's own last drop (where L crosses halfway between the last two chain levels).
Per decade of t − t_d it reports the accepted steps, and at the decade's end ‖θ‖, L and
λ_max(∇²L) (power iteration on the nearest of 2,000 saves, where that lies within 10 % of
t − t_d of the decade's end; else NaN).

What it shows: past the last drop the loss has its infimum at infinity (the mask leaves the
rank-3 completion underdetermined), so ‖θ‖ keeps growing and ∇²L stiffens, at a pace set by
t − t_d alone, whatever α. Where two flows overlap they take the same steps per decade to
within 1.3× (the smaller α's atol = rtol·RMS(θ₀) is tighter); a horizon of 3·t_d ∝ α⁻² covers
two more decades of that divergence per decade of α.
"""

import jax.random as jr
import numpy as np
from _common import parser, print_table, scalar_stats, timed_flow, write_json

import saddlejax as sj
from saddlejax.experiments import lambda_max

HORIZON = 3.0  # the preset's: flows run to 3 × the last predicted drop
RTOL = 1e-8  # the preset's


def flow_past_last_drop(problem, init, alpha, drops, levels):
    """The flow to HORIZON × the last predicted drop, its own last drop t_d, and rows per
    decade of t − t_d."""
    t1 = HORIZON * float(drops[-1])
    saves = np.geomspace(0.5 * drops[-1], t1, 2000)
    sol, wall, _ = timed_flow(
        problem, sj.init.scale(init, alpha), t1, saveat=saves, rtol=RTOL, record_steps=True,
        max_steps=400_000,
    )
    steps = {k: np.asarray(v) for k, v in sol.steps.items()}
    done = np.isfinite(steps["t"])
    t, loss, norm = steps["t"][done], steps["loss"][done], steps["norm"][done]
    mid = 0.5 * (levels[-2] + levels[-1])
    crossed = (loss < mid) & (t > 0.5 * drops[-1])
    if not crossed.any():
        raise SystemExit(f"α = {alpha:g}: the flow did not make the last drop by t1 = {t1:.4g} "
                         f"({sol.result}); nothing to measure past it")
    t_d = float(t[np.argmax(crossed)])
    ts = np.asarray(sol.ts)
    rows = []
    edges = [-np.inf, -100.0, 100.0] + [10.0**k for k in range(4, 11)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (t - t_d > lo) & (t - t_d <= hi)
        if not inside.any():
            continue
        end = float(t[inside][-1])
        i = int(np.argmin(np.abs(ts - end)))
        near = abs(ts[i] - end) <= 0.1 * abs(end - t_d)  # else the save is another state
        rows.append(dict(
            alpha=alpha, window=f"({lo:.0e}, {hi:.0e}]", steps=int(inside.sum()),
            norm=float(norm[inside][-1]), loss=float(loss[inside][-1]),
            lam_max=lambda_max(problem, sol.params_at(i)) if near else float("nan"),
        ))
    stats = scalar_stats(sol)
    implicit = stats.get("implicit_steps_accepted", 0.0)
    summary = dict(
        alpha=alpha, t_d=t_d, t1=t1, wall=wall,
        result="successful" if sol.successful else str(sj.RESULTS[sol.result]),
        accepted=stats["num_accepted_steps"], implicit=implicit,
        hvp_per_implicit=stats["hvp_evals"] / implicit if implicit else float("nan"),
    )
    return summary, rows


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=None, help="hidden width (default 20; quick 10)")
    p.add_argument("--alphas", type=float, nargs="+", default=None,
                   help="initialisation scales (default 1e-3 1e-4; quick 1e-2 1e-3)")
    args = p.parse_args()
    width = args.width or (10 if args.quick else 20)
    alphas = args.alphas or ([1e-2, 1e-3] if args.quick else [1e-3, 1e-4])
    problem = sj.matrix_completion_problem(jr.key(0), n=10, rank=3, observed=0.5)
    init = sj.nn.DeepLinear((10, width, width, width, 10), key=jr.key(0))
    chain = sj.saddle_chain(problem, init, key=jr.key(0))
    levels = np.asarray(chain.losses)
    summaries, rows = [], []
    for alpha in alphas:
        drops = np.asarray(chain.drop_times(alpha))
        summary, part = flow_past_last_drop(problem, init, alpha, drops, levels)
        summaries.append(summary)
        rows += part
        print(f"α = {alpha:g}: {summary}", flush=True)
    print_table(summaries, ["alpha", "t_d", "t1", "wall", "accepted", "implicit",
                            "hvp_per_implicit", "result"], "the flows")
    print_table(rows, ["alpha", "window", "steps", "norm", "loss", "lam_max"],
                "per decade of t − t_d")
    payload = dict(width=width, alphas=alphas, rtol=RTOL, flows=summaries, windows=rows)
    path = write_json("past_last_drop", payload, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
