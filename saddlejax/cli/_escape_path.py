"""`saddlejax escape-path`: Ψ of the optimal escape path of a deep linear network, with the checks
of Jacot et al. Thm 5 / Thm 22 and the distance to small-α simulations (Thm 2) (SPEC §7, §8); the
computation is `saddlejax.experiments.run_escape_path`."""

import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    from ..experiments import ESCAPE_PATH_PRESETS
    from ._main import preset_command

    summary = "Ψ of the optimal escape path of a DLN: contraction, round trip, rates, simulation."
    presets = ESCAPE_PATH_PRESETS
    p = preset_command(subparsers, "escape-path", presets, "dln2", help=summary, doc=__doc__)
    p.add_argument("--seed", type=int, default=0, help="key of the problem (θ̃ uses seed + 1)")
    p.add_argument(
        "--index",
        type=int,
        default=0,
        help="singular triplet of G giving the escape direction x₀ (0: optimal; a larger index "
        "gives a slower direction, possibly below the theorem's speed threshold)",
    )
    p.add_argument("--n", type=int, default=401, help="grid size of the path")
    p.add_argument("--r-min", type=float, default=None, help="‖x₀‖ at t_min (default: preset)")
    p.add_argument("--r-max", type=float, default=0.5, help="‖x₀‖ at the end of the window")
    p.add_argument("--radius", type=float, default=0.3, help="escape radius r of t_α(r)")
    p.add_argument("--alphas", type=float, nargs="*", default=None, help="α of the simulations")
    p.add_argument("--tail", choices=("h_path", "leading", "none"), default="h_path")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument(
        "--png",
        type=lambda s: Path(s) if s else None,
        default=None,
        help="save the figure to this file (needs matplotlib: pip install 'saddlejax[plot]'); "
        "default: no figure",
    )
    p.set_defaults(func=main)


# The command-line options that are fields of `EscapePathConfig` (None: the preset's value).
SETTINGS = ("seed", "index", "n", "r_min", "r_max", "radius", "alphas", "tail", "max_steps")


def _config(args):
    from ..experiments import EscapePathConfig

    return EscapePathConfig.preset(args.preset, **{k: getattr(args, k) for k in SETTINGS})


def _f(x, spec: str) -> str:
    """`x` formatted by `spec`; "nan" for None (a non-finite number in the summary)."""
    return "nan" if x is None else format(x, spec)


def _print_report(preset: str, out: dict) -> None:
    s, threshold = out["speed"], out["threshold_speed"]
    print(
        f"preset {preset}: DLN widths {tuple(out['widths'])}, (k, m) = "
        f"({out['order']}, {out['next_order']}), taylor_term finds {out['taylor_term_orders']}"
    )
    print(
        f"speed s = {s:.6g} (s* = {out['optimal_speed']:.6g}); theorem threshold {threshold:.4g}"
        + ("" if out["above_threshold"] else " — below it: the theorem does not apply")
    )
    print(
        f"Ψ: {out['num_steps']} iterations, converged: {out['converged']}"
        + ("" if out["converged"] else f" ({out['result']})")
    )
    ratios = out["contraction_ratios"]
    print(
        "contraction ratios (weighted norm): "
        + " ".join(_f(r, ".3f") for r in ratios[:8])
        + (" …" if len(ratios) > 8 else "")
    )
    if not out["converged"]:
        print("Ψ(x₀) was not found: no round trip, closeness rate or simulation to report.")
        return
    print(f"ODE residual of Ψ(x₀): {_f(out['ode_residual'], '.2e')}")
    print(
        f"round trip ‖Ψ⁻¹(Ψ(x₀)) − x₀‖/‖x₀‖: {_f(out['round_trip_error'], '.2e')} "
        f"(Ψ⁻¹ of the engine's forward flow instead of Ψ(x₀): "
        f"{_f(out['round_trip_error_forward'], '.2e')})"
    )
    print(
        f"closeness rate: fitted {_f(out['fitted_rate'], '.5f')}, "
        f"theory {_f(out['theory_rate'], '.5f')}"
    )
    print(f"escape speed of Ψ(x₀): {_f(out['fitted_speed'], '.6g')} (x₀: {s:.6g})")
    distance = _f(out["forward_integration_distance"], ".2e")
    print(f"forward integration from x₀(t_min): distance {distance}")
    for a, d, t in zip(out["alphas"], out["simulation_distance"], out["escape_times"]):
        print(
            f"α = {a:.0e}: t_α = {_f(t, '.6g')}, distance to Ψ-image (after Procrustes) "
            f"{_f(d, '.4f')}"
        )


def main(args) -> int:
    from ..experiments import has_matplotlib, plot_escape_path, run_escape_path

    if args.png is not None and not has_matplotlib():  # say so before minutes of work
        print(
            "saddlejax escape-path: error: --png needs matplotlib: pip install 'saddlejax[plot]'",
            file=sys.stderr,
        )
        return 2
    run = run_escape_path(_config(args))
    out = dict(run.summary, preset=args.preset)
    if args.png is not None:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        plot_escape_path(run, args.png)
        out["png"] = str(args.png)
    if args.json:
        print(json.dumps(out))
    else:
        _print_report(args.preset, out)
        if args.png is not None:
            print(f"figure: {args.png}")
        print(f"wall time {out['wall_time_s']:.1f} s")
    return 0 if out["converged"] else 1
