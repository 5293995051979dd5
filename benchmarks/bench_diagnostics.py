"""What the trajectory diagnostics give on the default problem (Jacot et al. Fig. 1; SPEC §8).

1. The greedy low-rank algorithm (flow version): its saddles ϑ⁰…ϑ³ (loss, rank, escape speed of
   the next neuron), against the plateau levels that `detect_plateaus` finds on small-α flows
   of the width-100 net (several seeds).
2. The Hessian at each greedy saddle, included into width 10: extreme eigenvalues and the
   saddle index (LOBPCG on HVPs).
3. Escape-time scaling: α²·t_α(r) over α and seeds, extrapolated to α → 0
   (`escape_time_scaling`), beside T_H(θ̃), the blow-up time of the Taylor flow from each
   seed's θ̃ (`blowup_time`).

    python benchmarks/bench_diagnostics.py [--quick]
"""

import time

import numpy as np
from _common import jr, parser, print_table, write_json

import saddlejax as sj


def greedy_vs_plateaus(problem, alphas, keys, t1_factor):
    start = time.perf_counter()
    greedy = sj.greedy_low_rank(problem, 4, epsilon=1e-2)
    greedy_wall = time.perf_counter() - start
    rows = []
    for alpha in alphas:
        for key in keys:
            net = sj.init.scale(sj.nn.DeepLinear((10, 100, 100, 100, 10), key=jr.key(key)), alpha)
            start = time.perf_counter()
            sol = sj.gradient_flow(problem, net, t1_factor / alpha**2, n_save=1024, throw=False)
            wall = time.perf_counter() - start
            stairs = sj.detect_plateaus(np.asarray(sol.ts), np.asarray(sol.loss))
            levels = np.asarray(stairs.levels)
            # Each greedy saddle above the loss floor against the nearest plateau level.
            targets = greedy.losses[: len(greedy.losses) - 1]
            rel = np.array([np.min(np.abs(levels / g - 1)) for g in targets])
            rows.append(
                {
                    "alpha": alpha,
                    "seed": key,
                    "plateau_levels": [float(x) for x in levels],
                    "max_rel_diff_to_greedy": float(rel.max()),
                    "drops_resolved": bool(np.all(stairs.resolved)),
                    "steps": int(sol.stats["num_steps"]),
                    "wall_s": wall,
                    "result": str(sol.result == sj.RESULTS.successful),
                }
            )
    saddles = [
        {
            "k": k,
            "loss": float(s.loss),
            "rank": int(s.rank),
            "grad_norm": float(s.grad_norm),
            "next_speed": float(s.speed),
        }
        for k, s in enumerate(greedy.saddles)
    ]
    return greedy, saddles, rows, greedy_wall


def saddle_spectra(problem, greedy, width=10):
    rows = []
    for k, saddle in enumerate(greedy.saddles):
        weights = sj.include_dln(saddle.weights, (10, width, width, width, 10))
        spec = sj.hessian_spectrum(problem, list(weights), k=3, key=jr.key(k), max_steps=500)
        rows.append(
            {
                "k": k,
                "bottom": [float(x) for x in spec.bottom],
                "top": [float(x) for x in spec.top],
                "saddle_index": int(spec.saddle_index),
                "converged": bool(spec.result == sj.RESULTS.successful),
            }
        )
    return rows


def escape_scaling(problem, alphas, seeds, radius=4.0):
    widths = (10, 100, 100, 100, 10)
    result = sj.sweep(
        problem,
        lambda key: sj.nn.DeepLinear(widths, key=key),
        lambda alpha: 15 / alpha**2,
        alphas=alphas,
        seeds=seeds,
        event=sj.EscapeRadius(radius),
        n_save=16,
        progress=False,
    )
    event = np.asarray(result.solution.event_time)
    H = sj.dln_taylor_term(sj.matrix_cost_gradient_at_zero(problem))
    theory = [
        float(sj.blowup_time(H, sj.nn.DeepLinear(widths, key=jr.key(int(s))).weights).time)
        for s in result.seeds
    ]
    fit = sj.escape_time_scaling(result.alphas, event, order=4, theory=np.asarray(theory))
    rows = [
        {
            "seed": int(s),
            **{f"a2t({a:g})": float(event[i, j] * a**2) for i, a in enumerate(result.alphas)},
            "extrapolated": float(fit.coefficients[j]),
            "T_H": theory[j],
            "rel_err": float(fit.relative_errors[j]),
        }
        for j, s in enumerate(result.seeds)
    ]
    return rows, fit


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    problem = sj.matrix_completion_problem(jr.key(0))
    alphas = (1e-3,) if args.quick else (1e-3, 1e-4)
    keys = (2,) if args.quick else (2, 3, 4)
    greedy, saddles, flows, greedy_wall = greedy_vs_plateaus(problem, alphas, keys, 6.0)
    print(f"greedy low-rank (flow version, ε = 0.01): {greedy_wall:.1f} s, "
          f"stop: {greedy.stop_reason}")
    print_table(saddles, ["k", "loss", "rank", "grad_norm", "next_speed"], "greedy saddles")
    print_table(flows, ["alpha", "seed", "plateau_levels", "max_rel_diff_to_greedy",
                        "drops_resolved", "steps", "wall_s"],
                "plateaus of α-flows (width 100) vs greedy")
    spectra = saddle_spectra(problem, greedy)
    print_table(spectra, ["k", "bottom", "top", "saddle_index", "converged"],
                "Hessian at the greedy saddles (width 10)")
    scale_alphas = (0.03, 0.01) if args.quick else (0.03, 0.01, 0.003, 0.001)
    seeds = (0, 1) if args.quick else (0, 1, 2, 3)
    scaling, fit = escape_scaling(problem, scale_alphas, seeds)
    print_table(scaling, list(scaling[0]), "α²·t_α(r = 4) extrapolated vs T_H(θ̃)")
    write_json(
        "diagnostics",
        {"saddles": saddles, "flows": flows, "spectra": spectra, "scaling": scaling},
        args.out,
    )


if __name__ == "__main__":
    main()
