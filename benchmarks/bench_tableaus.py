"""`AutoStiff` with RODAS4 (the default) against RODAS5P as its implicit method, paired: on
the same instances of `bench_instances.py`, at each α and rtol, one run of each solver back to
back in one process, so that machine load affects both alike.

    python benchmarks/bench_tableaus.py [--quick] [--instances 2 8 11 14 19]
                                        [--alphas 1e-1 1e-3] [--rtols 1e-6 1e-9]

RODAS5P (Steinebach 2023) is of order 5 with 8 stages (8 gradients and 8 CG solves a step)
against RODAS4's order 4 with 6: fewer, dearer implicit steps. Prints, per run, wall time,
implicit steps and HVPs per implicit step, and the wall ratio RODAS5P ÷ RODAS4.
"""

import statistics

from _common import parser, print_table, write_json
from bench_instances import draw_instances, run_one

SOLVERS = ("auto", "auto-rodas5p")
COLUMNS = [
    "instance", "alpha", "rtol", "wall_rodas4", "wall_rodas5p", "ratio", "implicit_rodas4",
    "implicit_rodas5p", "hvp_per_implicit_rodas4", "hvp_per_implicit_rodas5p", "loss_agree",
]


def compare(instances, alphas, rtols, *, t1_factor, max_steps) -> list[dict]:
    """One row per (instance, α, rtol): both solvers' wall, implicit steps and HVPs."""
    out = []
    for inst in instances:
        for rtol in rtols:
            for alpha in alphas:
                runs = {
                    s: run_one(
                        inst, alpha, t1_factor=t1_factor, t1_base=500.0, rtol=rtol,
                        max_steps=max_steps, solver=s,
                    )
                    for s in SOLVERS
                }
                a, b = runs["auto"], runs["auto-rodas5p"]
                row = dict(
                    instance=inst["label"], alpha=alpha, rtol=rtol,
                    wall_rodas4=a["wall_s"], wall_rodas5p=b["wall_s"],
                    ratio=b["wall_s"] / a["wall_s"],
                    implicit_rodas4=a["implicit"], implicit_rodas5p=b["implicit"],
                    hvp_per_implicit_rodas4=a["hvp_per_implicit"],
                    hvp_per_implicit_rodas5p=b["hvp_per_implicit"],
                    loss_agree=abs(a["final_loss"] - b["final_loss"])
                    <= 1e-3 * abs(a["final_loss"]),
                    ok=a["ok"] and b["ok"],
                )
                print(row, flush=True)
                out.append(row)
    return out


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--instances", nargs="+", type=int, default=None,
                   help="indices into bench_instances' random instances (default 2 8 11 14 19)")
    p.add_argument("--alphas", nargs="+", type=float, default=[1e-1, 1e-3])
    p.add_argument("--rtols", nargs="+", type=float, default=[1e-6, 1e-9])
    p.add_argument("--max-steps", type=int, default=200_000)
    args = p.parse_args(argv)
    which = args.instances or ([2] if args.quick else [2, 8, 11, 14, 19])
    drawn = draw_instances(max(which) + 1)
    rows = compare(
        [drawn[i] for i in which], args.alphas, args.rtols if not args.quick else [1e-6],
        t1_factor=0.5 if args.quick else 4.0, max_steps=args.max_steps,
    )
    print_table(rows, COLUMNS, "RODAS5P ÷ RODAS4 inside AutoStiff (wall in s)")
    summary = {}
    for rtol in sorted({r["rtol"] for r in rows}):
        for alpha in sorted({r["alpha"] for r in rows}):
            ratios = [r["ratio"] for r in rows if r["rtol"] == rtol and r["alpha"] == alpha]
            key = f"rtol={rtol:g}, alpha={alpha:g}"
            summary[key] = dict(median=statistics.median(ratios), best=min(ratios),
                                worst=max(ratios), n=len(ratios))
            print(f"{key}: RODAS5P ÷ RODAS4 wall median {summary[key]['median']:.3g}, "
                  f"best {summary[key]['best']:.3g}, worst {summary[key]['worst']:.3g} "
                  f"over {len(ratios)} instances", flush=True)
    bad = [r for r in rows if not (r["ok"] and r["loss_agree"])]
    print(f"runs failed or final losses apart by > 1e-3: {len(bad)}", flush=True)
    write_json("tableaus", dict(rows=rows, summary=summary, quick=args.quick), args.out)


if __name__ == "__main__":
    main()
