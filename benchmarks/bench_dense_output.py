"""Values between steps: the error at save times against the error at step endpoints, per
solver and tolerance.

    python benchmarks/bench_dense_output.py [--quick] [--solvers auto rodas4 tsit5 rodas3]

Problem: 6×6 rank-2 completion (`matrix_completion_problem(jr.key(3), n=6, rank=2)`), a depth-3
`DeepLinear((6, 12, 12, 6))` at α = 0.1 over t ∈ [0, 400] (a drop, then a stiff plateau), 401
evenly spaced save times. Reference: Tsit5 at rtol 1e−13. Errors are the largest loss error
relative to the initial loss, at the save times and at the solver's own step endpoints
(`record_steps=True`); their ratio is what the dense output adds.
"""

import diffrax
import jax.random as jr
import numpy as np
from _common import parser, print_table, solver_named, write_json

import saddlejax

T1 = 400.0


def problem():
    objective = saddlejax.matrix_completion_problem(jr.key(3), n=6, rank=2)
    net = saddlejax.nn.DeepLinear((6, 12, 12, 6), key=jr.key(4))
    return objective, saddlejax.init.scale(net, 0.1)


def reference_loss(objective, params0, times) -> np.ndarray:
    sol = saddlejax.gradient_flow(
        objective, params0, T1, solver=diffrax.Tsit5(), rtol=1e-13, atol=1e-14,
        saveat=np.asarray(times), max_steps=1_000_000,
    )
    return np.asarray(sol.loss)


def run(solvers, rtols) -> list[dict]:
    objective, params0 = problem()
    ts = np.linspace(0.0, T1, 401)
    ref = reference_loss(objective, params0, ts)
    rows = []
    for name in solvers:
        for rtol in rtols:
            sol = saddlejax.gradient_flow(
                objective, params0, T1, solver=solver_named(name), rtol=rtol, saveat=ts,
                record_steps=True, max_steps=20_000,
            )
            t_step = np.asarray(sol.steps["t"])
            finite = np.isfinite(t_step)
            t_step, first = np.unique(t_step[finite], return_index=True)
            loss_step = np.asarray(sol.steps["loss"])[finite][first]
            e_step = np.max(np.abs(loss_step - reference_loss(objective, params0, t_step)))
            e_save = np.max(np.abs(np.asarray(sol.loss) - ref))
            rows.append(
                dict(
                    solver=name, rtol=rtol, steps=int(t_step.size),
                    endpoint_error=e_step / ref[0], save_error=e_save / ref[0],
                    ratio=e_save / e_step,
                )
            )
            print_table(rows[-1:], list(rows[-1]))
    return rows


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--solvers", nargs="+", default=["auto", "rodas4", "tsit5", "rodas3"])
    args = p.parse_args()
    rtols = [1e-6] if args.quick else [1e-6, 1e-8]
    rows = run(args.solvers, rtols)
    print_table(rows, list(rows[0]), "save-time error ÷ step-endpoint error")
    print("wrote", write_json("dense_output", dict(rows=rows), args.out))


if __name__ == "__main__":
    main()
