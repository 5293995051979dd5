"""Is the cost α-independent on every trajectory? Wall time at a small α over wall time at
α = 0.1, over random instances of the default problem family.

    python benchmarks/bench_instances.py [--quick] [--n 20] [--alphas 1e-1 1e-3]
                                         [--t1-factor 4] [--meta-seed 0]
                                         [--versus tsit5 ...] [--repeat 3]

An instance is `matrix_completion_problem(jr.key(problem_seed), n=10, rank=3, observed=ρ)` with
ρ uniform in [0.3, 0.6] and `DeepLinear((10, 100, 100, 100, 10), key=jr.key(init_seed))`
scaled by α, the seeds and ρ drawn from `numpy.random.default_rng(meta_seed)` (instance i is
the same for every `--n`). The default instance (problem key 0, ρ = 0.5, init key 1), whose
first escape at α = 1e−2 and 1e−3 leaves for the drift branch (σ₁ of the end-to-end matrix
growing to ≈ 3·10⁴; benchmarks/README.md, "Known limits"), is added as a labelled extra row
and kept out of the summary over random instances.

Default solver of `gradient_flow` (the auto-switching one), rtol 1e−6, t1 = 500 at α ≥ 0.1
(`--t1-base`), else `t1_factor`·α⁻² (4: all three plateaus of the default instance; some random
instances are then still on an earlier plateau, see `same_level`), max_steps 200,000,
`throw=False` (a failure is a row with ok = False and its message in the JSON). All instances
share shapes and options, so the solve compiles once per process: every row's `compile_s` is
its warm-up call (t1·1e−9), ≈ 10 s for the first row and milliseconds after, which the summary
checks.

`--versus NAME ...` runs each instance and α also with each solver NAME (any may carry
Krylov options: `--versus auto:deflate=0,recycle=0 tsit5`), right after the main one, and
reports the wall ratio main ÷ NAME per instance (paired runs: a machine whose speed drifts
between two separate runs of the whole bench moves both sides of each ratio alike);
`--repeat K` times each solve K times and keeps the best.
"""

import statistics

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _common import (
    parser,
    print_table,
    scalar_stats,
    solver_named,
    timed_flow,
    to_float,
    write_json,
)

import saddlejax
from saddlejax import RESULTS

WIDTHS = (10, 100, 100, 100, 10)
DRIFT_SV1 = 100.0  # max σ₁ above this: the drift branch (the rank-1 saddle has σ₁ = 22.16)
LEVEL_RTOL = 0.1  # final losses of the two α this close: the runs end on the same plateau
DEFAULT_INSTANCE = dict(label="default", problem_seed=0, observed=0.5, init_seed=1)


def draw_instances(n: int, meta_seed: int = 0) -> list[dict]:
    """`n` random instances (ρ, problem seed, init seed), drawn in order from `meta_seed`."""
    rng = np.random.default_rng(meta_seed)
    out = []
    for i in range(n):
        observed = float(rng.uniform(0.3, 0.6))
        problem_seed = int(rng.integers(0, 2**31 - 1))
        init_seed = int(rng.integers(0, 2**31 - 1))
        out.append(
            dict(label=str(i), problem_seed=problem_seed, observed=observed, init_seed=init_seed)
        )
    return out


def instance(inst: dict, alpha: float):
    """(problem, α·θ̃) of an instance; the same shapes for every instance and α."""
    problem = saddlejax.matrix_completion_problem(
        jr.key(inst["problem_seed"]), n=10, rank=3, observed=inst["observed"]
    )
    net = saddlejax.nn.DeepLinear(WIDTHS, key=jr.key(inst["init_seed"]))
    return problem, saddlejax.init.scale(net, alpha)


def t1_of(alpha: float, t1_factor: float, t1_base: float = 500.0, depth=len(WIDTHS) - 1) -> float:
    """`t1_base` (500) at α ≥ 0.1, else t1_factor·α^{−(L−2)}."""
    return t1_base if alpha >= 0.1 else t1_factor * alpha ** (-(depth - 2))


def top_singular_values(model):
    """The four largest singular values of the end-to-end matrix (saved along the path).
    One module-level function, so that the jitted solve is reused across calls."""
    return jnp.linalg.svd(model.matrix(), compute_uv=False)[:4]


def solver_from_spec(spec: str):
    """A solver name, optionally with Krylov options: "auto", "auto:deflate=0,recycle=0",
    "auto:deflate_above=0"."""
    name, _, options = spec.partition(":")
    kwargs = dict(item.split("=") for item in options.split(",")) if options else {}
    return solver_named(name, **{k: _number(v) for k, v in kwargs.items()})


def _number(text: str) -> int | float:
    """An option's value: an int where it reads as one ("16"), else a float ("0.03", "1e-2")."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def run_one(
    inst: dict, alpha: float, *, t1_factor, t1_base, rtol, max_steps, show_keys=False,
    solver="auto", repeat=1,
) -> dict:
    problem, params0 = instance(inst, alpha)
    t1 = t1_of(alpha, t1_factor, t1_base)
    sol, wall, compile_s = timed_flow(
        problem,
        params0,
        t1,
        rtol=rtol,
        max_steps=max_steps,
        throw=False,
        observe=top_singular_values,
        solver=solver_from_spec(solver),
        repeat=repeat,
    )
    if show_keys:
        print(f"sol.stats keys: {sorted(sol.stats)}", flush=True)
    st = scalar_stats(sol)
    accepted = int(st["num_accepted_steps"])
    implicit = int(st.get("implicit_steps_accepted", -1))
    hvps = int(st["hvp_evals"])
    ok = bool(sol.successful)
    sv1 = sol.params[:, 0]
    return dict(
        instance=inst["label"],
        problem_seed=inst["problem_seed"],
        observed=inst["observed"],
        init_seed=inst["init_seed"],
        alpha=alpha,
        solver=solver,
        t1=t1,
        ok=ok,
        result="successful" if ok else str(RESULTS[sol.result]),
        stop_time=to_float(sol.stop_time),
        wall_s=wall,
        compile_s=compile_s,
        steps=int(st["num_steps"]),
        accepted=accepted,
        rejected=int(st["num_rejected_steps"]),
        implicit=implicit,
        explicit=int(st.get("explicit_steps_accepted", -1)),
        grad_evals=int(st["grad_evals"]),
        hvp_evals=hvps,
        hvp_per_implicit=hvps / implicit if implicit > 0 else float("nan"),
        final_loss=to_float(sol.loss[-1]),
        max_sv1=float(jnp.max(jnp.where(jnp.isfinite(sv1), sv1, -jnp.inf))),  # saves reached
    )


def run(
    instances, alphas, *, t1_factor=4.0, t1_base=500.0, rtol=1e-6, max_steps=200_000,
    solvers=("auto",), repeat=1,
) -> list[dict]:
    """Rows of every instance × α × solver, the solvers of one instance and α back to back."""
    rows = []
    for inst in instances:
        for alpha in alphas:
            for solver in solvers:
                row = run_one(
                    inst,
                    alpha,
                    t1_factor=t1_factor,
                    t1_base=t1_base,
                    rtol=rtol,
                    max_steps=max_steps,
                    show_keys=not rows,
                    solver=solver,
                    repeat=repeat,
                )
                rows.append(row)
                if not row["ok"]:
                    print(f"FAILED: instance {inst['label']}, α = {alpha:g}, {solver}: "
                          f"{row['result']}")
                print({k: v for k, v in row.items() if k != "result"}, flush=True)
    return rows


def versus(rows: list[dict], solver: str, other: str) -> dict:
    """Per α over the random instances: wall(`solver`) ÷ wall(`other`) of the paired runs
    (median, worst, best, and the instance of the worst)."""
    walls = {(r["instance"], r["alpha"], r["solver"]): r["wall_s"] for r in rows}
    out = {}
    for alpha in dict.fromkeys(r["alpha"] for r in rows):
        ratios = {
            label: walls[label, alpha, solver] / walls[label, alpha, other]
            for label, a, s in walls
            if a == alpha and s == solver and label != DEFAULT_INSTANCE["label"]
        }
        worst = max(ratios, key=ratios.get)
        out[f"{alpha:g}"] = dict(
            median=statistics.median(ratios.values()),
            worst=ratios[worst],
            worst_instance=worst,
            best=min(ratios.values()),
            ratios=ratios,
        )
    return out


def per_instance(rows: list[dict], alphas) -> list[dict]:
    """One row per instance: the wall-time ratio of the smallest α to the largest, and the
    small-α run's counters and max σ₁ (drift: above `DRIFT_SV1`); `same_level`: both runs end
    at the same loss within `LEVEL_RTOL` (else the small-α run stopped on another plateau, or
    the two took different branches, and the ratio compares different stretches of the path)."""
    big, small = max(alphas), min(alphas)
    out = []
    for label in dict.fromkeys(r["instance"] for r in rows):
        by_alpha = {r["alpha"]: r for r in rows if r["instance"] == label}
        b, s = by_alpha[big], by_alpha[small]
        out.append(
            dict(
                instance=label,
                observed=s["observed"],
                ok=b["ok"] and s["ok"],
                wall_big=b["wall_s"],
                wall_small=s["wall_s"],
                ratio=s["wall_s"] / b["wall_s"],
                loss_big=b["final_loss"],
                loss_small=s["final_loss"],
                same_level=abs(s["final_loss"] - b["final_loss"]) <= LEVEL_RTOL * b["final_loss"],
                steps_small=s["accepted"],
                implicit_small=s["implicit"],
                hvp_per_implicit=s["hvp_per_implicit"],
                max_sv1=s["max_sv1"],
                drift=s["max_sv1"] > DRIFT_SV1,
            )
        )
    return out


def summarise(inst_rows: list[dict], rows: list[dict]) -> dict:
    random_rows = [r for r in inst_rows if r["instance"] != DEFAULT_INSTANCE["label"]]
    ratios = [r["ratio"] for r in random_rows]
    worst = max(random_rows, key=lambda r: r["ratio"])
    later = [r["compile_s"] for r in rows[1:]]
    same = [r for r in random_rows if r["same_level"]]
    return dict(
        instances=len(random_rows),
        median_ratio=statistics.median(ratios),
        worst_ratio=worst["ratio"],
        best_ratio=min(ratios),
        worst_instance=worst["instance"],
        worst_steps=worst["steps_small"],
        worst_implicit=worst["implicit_small"],
        worst_hvp_per_implicit=worst["hvp_per_implicit"],
        drift_branch=sum(r["drift"] for r in random_rows),
        drift_instances=[r["instance"] for r in random_rows if r["drift"]],
        same_level=len(same),
        median_ratio_same_level=statistics.median(r["ratio"] for r in same) if same else None,
        worst_ratio_same_level=max(r["ratio"] for r in same) if same else None,
        other_level_instances=[r["instance"] for r in random_rows if not r["same_level"]],
        failures=sum(not r["ok"] for r in rows),
        first_compile_s=rows[0]["compile_s"],
        max_later_warmup_s=max(later) if later else float("nan"),
        default=next((r for r in inst_rows if r["instance"] == DEFAULT_INSTANCE["label"]), None),
    )


COLUMNS = [
    "instance",
    "observed",
    "alpha",
    "solver",
    "t1",
    "ok",
    "wall_s",
    "compile_s",
    "accepted",
    "rejected",
    "implicit",
    "explicit",
    "grad_evals",
    "hvp_evals",
    "hvp_per_implicit",
    "final_loss",
    "max_sv1",
]
INSTANCE_COLUMNS = [
    "instance",
    "observed",
    "ok",
    "wall_big",
    "wall_small",
    "ratio",
    "loss_big",
    "loss_small",
    "same_level",
    "steps_small",
    "implicit_small",
    "hvp_per_implicit",
    "max_sv1",
    "drift",
]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=None, help="random instances (default 20; quick 3)")
    p.add_argument("--alphas", nargs="+", type=float, default=[1e-1, 1e-3])
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument(
        "--solver", default="auto", help="a name of saddlejax.solvers.SOLVER_NAMES, or auto-rodas5p"
    )
    p.add_argument(
        "--t1-factor", type=float, default=None, help="t1 = factor·α^-2, α < 0.1 (4; quick 0.5)"
    )
    p.add_argument("--t1-base", type=float, default=500.0, help="t1 at α ≥ 0.1")
    p.add_argument("--max-steps", type=int, default=200_000)
    p.add_argument("--meta-seed", type=int, default=0, help="numpy seed drawing the instances")
    p.add_argument("--no-default", action="store_true", help="leave out the default instance")
    p.add_argument(
        "--versus", nargs="+", default=[], help="other solvers, each run paired with --solver"
    )
    p.add_argument("--repeat", type=int, default=1, help="time each solve K times, keep the best")
    args = p.parse_args(argv)
    n = args.n if args.n is not None else (3 if args.quick else 20)
    t1_factor = args.t1_factor if args.t1_factor is not None else (0.5 if args.quick else 4.0)
    instances = draw_instances(n, args.meta_seed)
    if not args.no_default:
        instances.append(dict(DEFAULT_INSTANCE))
    print("instances:", instances, flush=True)
    rows = run(
        instances,
        args.alphas,
        t1_factor=t1_factor,
        t1_base=args.t1_base,
        rtol=args.rtol,
        max_steps=args.max_steps,
        solvers=(args.solver, *args.versus),
        repeat=args.repeat,
    )
    print_table(rows, COLUMNS, "Runs (wall and compile in s; compile_s = warm-up call)")
    paired = {other: versus(rows, args.solver, other) for other in args.versus}
    for other, by_alpha in paired.items():
        for alpha, v in by_alpha.items():
            print(
                f"α = {alpha}: {args.solver} ÷ {other} wall, median {v['median']:.3g}, "
                f"worst {v['worst']:.3g} (instance {v['worst_instance']}), best {v['best']:.3g}",
                flush=True,
            )
    main_rows = [r for r in rows if r["solver"] == args.solver]  # the α-ratio: main solver's
    inst_rows = per_instance(main_rows, args.alphas)
    small, big = min(args.alphas), max(args.alphas)
    title = f"Per instance: ratio = wall(α={small:g}) / wall(α={big:g}), counters at α={small:g}"
    print_table(inst_rows, INSTANCE_COLUMNS, title)
    summary = summarise(inst_rows, main_rows)
    print(
        f"Summary over {summary['instances']} random instances: ratio median "
        f"{summary['median_ratio']:.3g}, worst {summary['worst_ratio']:.3g} (instance "
        f"{summary['worst_instance']}: {summary['worst_steps']} steps, "
        f"{summary['worst_implicit']} implicit, {summary['worst_hvp_per_implicit']:.3g} HVPs "
        f"per implicit step), best {summary['best_ratio']:.3g}; drift branch (max σ₁ > "
        f"{DRIFT_SV1:g}): {summary['drift_branch']} {summary['drift_instances']}; failed runs: "
        f"{summary['failures']}; compile {summary['first_compile_s']:.3g} s, later warm-up "
        f"calls ≤ {summary['max_later_warmup_s']:.3g} s",
        flush=True,
    )
    if summary["same_level"]:
        print(
            f"Ending on the same plateau at both α (final loss within {LEVEL_RTOL:g}): "
            f"{summary['same_level']} instances, ratio median "
            f"{summary['median_ratio_same_level']:.3g}, worst "
            f"{summary['worst_ratio_same_level']:.3g}; on another level: "
            f"{summary['other_level_instances']}",
            flush=True,
        )
    if summary["default"] is not None:
        d = summary["default"]
        print(
            f"Default instance: ratio {d['ratio']:.3g} ({d['wall_small']:.3g} s against "
            f"{d['wall_big']:.3g} s), max σ₁ {d['max_sv1']:.4g}, drift {d['drift']}",
            flush=True,
        )
    path = write_json(
        "instances",
        dict(
            rtol=args.rtol,
            t1_factor=t1_factor,
            t1_base=args.t1_base,
            level_rtol=LEVEL_RTOL,
            max_steps=args.max_steps,
            meta_seed=args.meta_seed,
            alphas=args.alphas,
            drift_sv1=DRIFT_SV1,
            instances=instances,
            versus=paired,
            summary=summary,
            per_instance=inst_rows,
            rows=rows,
        ),
        args.out,
    )
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
