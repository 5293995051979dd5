"""ReLU flows that slide along a kink: the exact net by `gradient_flow` and by `sliding_flow`
(the Filippov flow, piece by piece), against `DeepReLU(..., smoothing=ε)`.

A gradient flow of a ReLU net can reach a kink where a preactivation is pushed to 0 from both
sides (a Filippov sliding mode). There the exact flow has no classical solution and an
adaptive solver's steps collapse. With `smoothing=ε` the kink is replaced by a softplus of
width ε‖wⱼ ⊙ h‖ (the net stays homogeneous) and the flow is smooth; as ε → 0 it
should converge to the sliding flow, whose reference here is gradient descent on the exact net
at a small step η (GD chatters across the kink with amplitude O(η)).

    python benchmarks/bench_relu_kinks.py [--quick] [--n 20] [--t1 5] [--solver auto]
                                          [--rtol 1e-8] [--no-smoothed]

Each draw: `DeepReLU((3, 6, 6, 6, 2))` scaled by 0.5, 12 Gaussian samples, Gaussian targets,
`SquareLoss`, seeds 0, 1, …; flows to t1 = 5 with the default solver (or `--solver`) at
rtol 1e−8 (or `--rtol`) and max_steps 20,000; GD at η = 1e−4 and 1e−5 in `lax.scan` (the
reference is η = 1e−5; its own error is judged by the distance between the two). Distances
are ‖θ_flow(t1) − θ_GD(t1)‖. Walls are warm (each smoothing compiles once, the first draw's call;
`sliding_flow` is timed on its second call). `--no-smoothed` runs the exact net only.
"""

import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from _common import parser, print_table, solver_named, timed_flow, write_json

import saddlejax as sj

SMOOTHINGS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
ETAS = (1e-4, 1e-5)


def draw(seed: int):
    k_net, k_x, k_y = jr.split(jr.key(seed), 3)
    net = sj.init.scale(sj.nn.DeepReLU((3, 6, 6, 6, 2), key=k_net), 0.5)
    loss = sj.SquareLoss(jr.normal(k_x, (12, 3)), jr.normal(k_y, (12, 2)))
    return net, loss


def smoothed(net, eps: float):
    out = sj.nn.DeepReLU((3, 6, 6, 6, 2), key=jr.key(0), smoothing=eps)
    return eqx.tree_at(lambda m: m.weights, out, net.weights)


def distance(a, b) -> float:
    """‖a − b‖ over the weights of two nets (smoothed or not)."""
    return float(jnp.sqrt(sum(jnp.sum((x - y) ** 2) for x, y in zip(a.weights, b.weights))))


def gradient_descent(loss, net, eta: float, t1: float):
    return sj.gradient_descent(loss, net, learning_rate=eta, steps=round(t1 / eta)).final_params


def flow(loss, net, t1: float, solver, rtol: float):
    sol, wall, _ = timed_flow(loss, net, t1, n_save=8, rtol=rtol, max_steps=20_000, solver=solver)
    return sol, bool(sol.result == sj.RESULTS.successful), wall


def sliding(loss, net, t1: float, rtol: float) -> dict:
    """`sliding_flow` on the exact net: ok, accepted steps, kink events, warm wall, final net."""
    def run():
        return sj.sliding_flow(loss, net, t1, n_save=8, rtol=rtol, max_steps=20_000)

    jax.block_until_ready(run())  # compiles (new shapes: once; the same shapes: cached)
    start = time.perf_counter()
    sol = jax.block_until_ready(run())
    wall = time.perf_counter() - start
    stats = {k: int(v) for k, v in sol.stats.items() if k not in ("rtol", "atol")}
    events = stats["kink_crossings"] + stats["slides_started"] + stats["slides_ended"]
    return dict(slide_ok=bool(sol.successful), slide_steps=stats["num_accepted_steps"],
                slide_events=events, slide_slides=stats["slides_started"], slide_wall=wall,
                final=sol.final_params)


def summarise(rows: list[dict], smoothings) -> dict:
    """Failures per setting; distances and steps over the successful flows (median, worst)."""
    exact = [r for r in rows if r["exact_ok"]]
    slid = [r for r in rows if r["slide_ok"]]
    summary = dict(
        draws=len(rows),
        exact_failures=len(rows) - len(exact),
        exact_dist_median=statistics.median(r["exact_dist"] for r in exact) if exact else None,
        exact_dist_worst=max(r["exact_dist"] for r in exact) if exact else None,
        exact_steps_median=statistics.median(r["exact_steps"] for r in exact) if exact else None,
        gd_error_median=statistics.median(r["gd_error"] for r in rows),
        gd_error_worst=max(r["gd_error"] for r in rows),
        sliding_failures=len(rows) - len(slid),
        sliding_dist_median=statistics.median(r["slide_dist"] for r in slid) if slid else None,
        sliding_dist_worst=max(r["slide_dist"] for r in slid) if slid else None,
        sliding_steps_median=statistics.median(r["slide_steps"] for r in slid) if slid else None,
        sliding_steps_worst=max(r["slide_steps"] for r in slid) if slid else None,
        sliding_events_median=statistics.median(r["slide_events"] for r in slid) if slid else None,
        sliding_wall_median=statistics.median(r["slide_wall"] for r in slid) if slid else None,
        draws_that_slide=sum(r["slide_slides"] > 0 for r in rows),
    )
    for eps in smoothings:
        ok = [r for r in rows if r[f"ok_{eps:g}"]]
        summary[f"{eps:g}"] = dict(
            failures=len(rows) - len(ok),
            dist_median=statistics.median(r[f"dist_{eps:g}"] for r in ok),
            dist_worst=max(r[f"dist_{eps:g}"] for r in ok),
            steps_median=statistics.median(r[f"steps_{eps:g}"] for r in ok),
            steps_worst=max(r[f"steps_{eps:g}"] for r in ok),
            wall_median=statistics.median(r[f"wall_{eps:g}"] for r in ok),
        )
    return summary


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=None, help="draws (default 20; quick 3)")
    p.add_argument("--t1", type=float, default=5.0)
    p.add_argument("--solver", default="auto", help="a name of saddlejax.solvers.SOLVER_NAMES")
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--no-smoothed", action="store_true", help="the exact net only")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    n = args.n if args.n is not None else (3 if args.quick else 20)
    smoothings = () if args.no_smoothed else SMOOTHINGS[1::2] if args.quick else SMOOTHINGS
    solver = solver_named(args.solver)
    rows = []
    for seed in range(n):
        net, loss = draw(seed)
        gd = {eta: gradient_descent(loss, net, eta, args.t1) for eta in ETAS}
        ref = gd[ETAS[-1]]
        sol, ok, wall = flow(loss, net, args.t1, solver, args.rtol)
        row = dict(
            seed=seed,
            exact_ok=ok,
            exact_steps=int(sol.stats["num_steps"]),
            exact_dist=distance(sol.final_params, ref) if ok else float("nan"),
            gd_error=distance(gd[ETAS[0]], ref),
        )
        slide = sliding(loss, net, args.t1, args.rtol)
        final = slide.pop("final")
        row.update(slide, slide_dist=distance(final, ref) if slide["slide_ok"] else float("nan"))
        for eps in smoothings:
            sol, ok, wall = flow(loss, smoothed(net, eps), args.t1, solver, args.rtol)
            row[f"ok_{eps:g}"] = ok
            row[f"steps_{eps:g}"] = int(sol.stats["num_accepted_steps"])
            row[f"wall_{eps:g}"] = wall
            row[f"dist_{eps:g}"] = distance(sol.final_params, ref) if ok else float("nan")
        rows.append(row)
        print(row, flush=True)
    columns = ["seed", "exact_ok", "exact_steps", "exact_dist", "gd_error", "slide_ok",
               "slide_steps", "slide_events", "slide_dist"] + [
        f"{k}_{eps:g}" for eps in smoothings for k in ("ok", "steps", "dist")
    ]
    print_table(rows, columns, f"ReLU kinks, t1 = {args.t1:g}")
    summary = summarise(rows, smoothings)
    print(summary)
    payload = dict(t1=args.t1, solver=args.solver, rtol=args.rtol, summary=summary, rows=rows)
    name = "relu_kinks" + ("" if args.solver == "auto" else f"_{args.solver}")
    name += "" if args.rtol == 1e-8 else f"_rtol{args.rtol:g}"
    name += "_exact" if args.no_smoothed else ""
    write_json(name, payload, args.out)


if __name__ == "__main__":
    main()
