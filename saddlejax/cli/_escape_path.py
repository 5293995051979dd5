"""`saddlejax escape-path`: Ψ of the optimal escape path of a deep linear network, with the checks
of Jacot et al. Thm 5 / Thm 22 and the distance to small-α simulations (Thm 2) (SPEC §7, §8); the
computation is `saddlejax.experiments.run_escape_path`."""

import json
from pathlib import Path

# Config fields named by the options that set them.
OPTIONS = {
    "seed": "--seed",
    "index": "--index",
    "n": "--n",
    "r_min": "--r-min",
    "r_max": "--r-max",
    "radius": "--radius",
    "alphas": "--alphas",
    "tail": "--tail",
    "max_steps": "--max-steps",
}


def add_parser(subparsers) -> None:
    from ..experiments import ESCAPE_PATH_PRESETS
    from ._main import preset_command

    summary = "Ψ of the optimal escape path of a DLN: contraction, round trip, rates, simulation."
    presets = ESCAPE_PATH_PRESETS
    p = preset_command(subparsers, "escape-path", presets, "dln2", help=summary, doc=__doc__)
    p.add_argument(
        "--seed", type=int, default=0, help="key of the problem (θ̃ uses seed + 1), in [0, 2³²−1)"
    )
    p.add_argument(
        "--index",
        type=int,
        default=0,
        help="singular triplet of the 4×4 G giving the escape direction x₀, in 0..3 (0: "
        "optimal; a larger index gives a slower direction, possibly below the theorem's speed "
        "threshold)",
    )
    p.add_argument(
        "--n",
        type=int,
        default=401,
        help="grid size of the path: ≥ 20 points per decade of ‖x₀‖, ≤ 100000",
    )
    p.add_argument(
        "--r-min", type=float, default=None, help="‖x₀‖ at t_min, ≥ 1e-8 (default: preset)"
    )
    p.add_argument(
        "--r-max", type=float, default=0.5, help="‖x₀‖ at the end of the window, ≤ 1"
    )
    p.add_argument(
        "--radius",
        type=float,
        default=0.3,
        help="escape radius r of t_α(r), between --r-min and --r-max",
    )
    p.add_argument(
        "--alphas",
        type=float,
        nargs="*",
        default=None,
        help="α of the simulations, in (0, 1) with α‖θ̃‖ < r (default: preset; none: no "
        "simulation)",
    )
    p.add_argument("--tail", choices=("h_path", "leading", "none"), default="h_path")
    p.add_argument("--max-steps", type=int, default=300, help="iterations of Ψ, 1..100000")
    p.add_argument(
        "--png",
        type=lambda s: s if s.strip() else None,
        default=None,
        help="save the figure to this file, its format named by the suffix (.png, .pdf, .svg, "
        "…; needs matplotlib: pip install 'saddlejax[plot]'); default or '': no figure",
    )
    p.set_defaults(func=main, check=check, options=OPTIONS, parser=p)


def _check_png(text: str | None):
    """The --png path, checked before any work: matplotlib installed, a suffix it can write,
    a writable place."""
    from ..experiments import has_matplotlib
    from ._main import check_output

    if text is None:
        return None
    if not has_matplotlib():  # say so before minutes of work
        raise ValueError("--png needs matplotlib: pip install 'saddlejax[plot]'")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(text).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ValueError(
            f"--png {text!r} does not end in a figure format; use one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )
    return check_output(text, "--png", folder=False)


def check(args):
    """The `EscapePathConfig` of `args` (its checks name config fields: `OPTIONS` maps them to
    options); the figure's path is checked too."""
    from ..experiments import EscapePathConfig

    config = EscapePathConfig.preset(args.preset, **{k: getattr(args, k) for k in OPTIONS})
    args.png = _check_png(args.png)
    return config


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


def main(args, config) -> int:
    from ..experiments import plot_escape_path, run_escape_path

    run = run_escape_path(config)
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
