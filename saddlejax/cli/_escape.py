"""`saddlejax escape`: the leading Taylor term at the origin and the escape directions and speeds
found by the generic sphere solver, beside the DLN closed forms (SPEC §4, §5, §9); the
computation is `saddlejax.experiments.run_escape`."""

import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    from ..experiments import ESCAPE_PRESETS
    from ._main import preset_command

    summary = "Taylor orders k, m, optimal escape speed s*, escape directions and KKT residuals"
    p = preset_command(subparsers, "escape", ESCAPE_PRESETS, "dln4", help=summary, doc=__doc__)
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON file with keys model (dln|relu|squared_relu), problem (matrix_completion|"
        "teacher|squared_relu_toy), depth, width; overrides --preset",
    )
    p.add_argument("--depth", type=int, default=None, help="override the preset's depth")
    p.add_argument("--width", type=int, default=None, help="override the preset's hidden width")
    p.add_argument("--restarts", type=int, default=8, help="random restarts on the sphere")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=5, help="how many distinct directions to print")
    p.set_defaults(func=main)


def _config(args):
    from ..experiments import EscapeConfig

    overrides = {} if args.config is None else json.loads(Path(args.config).read_text())
    overrides.update(depth=args.depth, width=args.width)
    return EscapeConfig.preset(
        args.preset, restarts=args.restarts, seed=args.seed, top=args.top, **overrides
    )


def _print_report(out: dict) -> None:
    cfg, sec = out["config"], out["seconds"]
    dln = cfg["model"] == "dln"
    print(
        f"saddlejax escape: {cfg['model']} widths {tuple(out['widths'])} on {cfg['problem']}, "
        f"P = {out['n_params']}, {cfg['restarts']} restarts"
    )
    print(
        f"Taylor term at the origin ({out['taylor_route']} route): k = {out['k']}, "
        f"m = {out['m']}   [{sec['taylor_term']:.2f} s]"
    )
    status = "converged" if out["converged"] else f"NOT converged: {out['result']}"
    line = f"s* = {out['s_star']:.12g}   KKT residual {out['kkt_residual']:.2e}   ({status})"
    if dln:
        line += (
            f"\nclosed form s* = L^(-(L-2)/2) σ_1(G) = {out['closed_form_s_star']:.12g}   "
            f"relative difference {out['s_star_rel_diff']:.2e}"
        )
    print(line + f"   [{sec['optimal_escape']:.2f} s]")
    print(
        "distinct escape directions found (speed, KKT residual, restarts"
        + (", nearest closed-form speed, rel. diff" if dln else "")
        + "):"
    )
    for i, speed in enumerate(out["speeds"]):
        row = f"  {speed:>16.12g}  {out['kkt_residuals'][i]:.2e}  {out['multiplicities'][i]:>3d}"
        if dln:
            c = out["closed_form_speeds"][i]
            row += f"  {c:>16.12g}  {abs(speed - c) / abs(c):.2e}"
        print(row)
    if "sv_ratios" in out:
        print("σ1/σ2 of ρ* per layer: " + ", ".join(f"{r:.3g}" for r in out["sv_ratios"]))


def main(args) -> int:
    from ..experiments import run_escape

    try:
        config = _config(args)
    except (ValueError, OSError) as e:  # a bad --config file or value: a message, no traceback
        print(f"saddlejax escape: error: {e}", file=sys.stderr)
        return 2
    out = run_escape(config)
    if args.json:
        print(json.dumps(out))
    else:
        _print_report(out)
    return 0 if out["converged"] else 1
