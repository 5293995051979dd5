"""`saddlejax escape`: the leading Taylor term at the origin and the escape directions and speeds
found by the generic sphere solver, beside the DLN closed forms (SPEC §4, §5, §9); the
computation is `saddlejax.experiments.run_escape`."""

import dataclasses
import json
import re
from pathlib import Path

# Config fields named by the options that set them.
OPTIONS = {
    "depth": "--depth",
    "width": "--width",
    "restarts": "--restarts",
    "seed": "--seed",
    "top": "--top",
}


def add_parser(subparsers) -> None:
    from ..experiments import ESCAPE_PRESETS
    from ._main import preset_command

    summary = "Taylor orders k, m, optimal escape speed s*, escape directions and KKT residuals"
    p = preset_command(subparsers, "escape", ESCAPE_PRESETS, "dln4", help=summary, doc=__doc__)
    p.add_argument(
        "--config",
        default=None,
        help="JSON file with some of the keys model (dln|relu|squared_relu), problem "
        "(matrix_completion|teacher|squared_relu_toy), depth, width, restarts, seed, top; it "
        "overrides --preset, and the options below override it",
    )
    p.add_argument("--depth", type=int, default=None, help="override the depth (dln, relu: 2..32)")
    p.add_argument("--width", type=int, default=None, help="override the hidden width (≥ 1)")
    p.add_argument(
        "--restarts", type=int, default=None, help="random restarts on the sphere (default 8)"
    )
    p.add_argument("--seed", type=int, default=None, help="key of the problem and the starts (0)")
    p.add_argument(
        "--top", type=int, default=None, help="how many distinct directions to print (5)"
    )
    p.set_defaults(func=main, check=check, options=OPTIONS, parser=p)


def _read_config(text: str) -> dict:
    """The settings in the JSON file `text` (--config), or a ValueError that says what is wrong
    with the file."""
    if not text.strip():
        raise ValueError("--config is empty; give the path of a JSON file (or leave it out)")
    try:
        content = Path(text).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"--config {text!r}: cannot read it ({reason}); give a JSON file")
    try:
        settings = json.loads(content)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {text!r} is not valid JSON ({e}); fix the file") from None
    if not isinstance(settings, dict):
        raise ValueError(
            f"--config {text!r} must hold one JSON object such as "
            f'{{"model": "dln", "depth": 3}}, got a {type(settings).__name__}'
        )
    return settings


def check(args):
    """The `EscapeConfig` of `args`: the preset, overridden by the --config file, overridden by
    the options. An error names where the bad value came from: the option, the file's key, or
    the preset."""
    from ..experiments import EscapeConfig

    given = {k: getattr(args, k) for k in OPTIONS if getattr(args, k) is not None}
    from_file = {} if args.config is None else _read_config(args.config)
    keys = [f.name for f in dataclasses.fields(EscapeConfig)]
    unknown = sorted(set(from_file) - set(keys))
    if unknown:
        raise ValueError(
            f"--config {args.config!r} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"the keys are {', '.join(keys)}"
        )
    try:
        return EscapeConfig.preset(args.preset, **{**from_file, **given})
    except ValueError as e:

        def origin(match):
            field = match.group(1)
            if field in given:
                return OPTIONS[field]
            if field in from_file:
                return f'"{field}" (in --config {args.config!r})'
            return f"{field} (from --preset {args.preset})"

        raise ValueError(re.sub(r"`(\w+)`", origin, str(e))) from None


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


def main(args, config) -> int:
    from ..experiments import run_escape

    out = run_escape(config)
    if args.json:
        print(json.dumps(out))
    else:
        _print_report(out)
    return 0 if out["converged"] else 1
