"""`saddlejax escape`: the leading Taylor term at the origin and the escape directions and speeds
found by the generic sphere solver, beside the DLN closed forms (SPEC §4, §5, §9)."""

import json
import time
from pathlib import Path

PRESETS = {
    # Jacot et al. Fig. 1 problem: 10×10 rank-3 matrix completion, 50 % observed, L = 4, w = 100.
    "dln4": dict(model="dln", problem="matrix_completion", depth=4, width=100),
    "dln2": dict(model="dln", problem="matrix_completion", depth=2, width=20),
    "dln3": dict(model="dln", problem="matrix_completion", depth=3, width=20),
    # Bias-free deep ReLU net on synthetic Gaussian data (no data can be downloaded here).
    "relu3": dict(model="relu", problem="teacher", depth=3, width=16),
    # Kumar & Haupt's squared-ReLU toy, one neuron (k = 2).
    "squared_relu": dict(model="squared_relu", problem="squared_relu_toy", depth=1, width=1),
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "escape",
        help="Taylor orders k, m, optimal escape speed s*, escape directions and KKT residuals",
        description=__doc__,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="dln4")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON file with keys model (dln|relu|squared_relu), problem, depth, width; "
        "overrides --preset",
    )
    p.add_argument("--depth", type=int, default=None, help="override the preset's depth")
    p.add_argument("--width", type=int, default=None, help="override the preset's hidden width")
    p.add_argument("--restarts", type=int, default=8, help="random restarts on the sphere")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=5, help="how many distinct directions to print")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def _setup(cfg, key):
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import saddlejax as sj

    kp, kn = jr.split(key)
    depth, width = cfg["depth"], cfg["width"]
    if cfg["problem"] == "matrix_completion":
        problem = sj.matrix_completion_problem(kp, n=10, rank=3, observed=0.5)
        n_in = n_out = 10
    elif cfg["problem"] == "teacher":
        kx, kt = jr.split(kp)
        x = jr.normal(kx, (64, 8))
        y = jnp.tanh(x @ jr.normal(kt, (8, 3)) / jnp.sqrt(8.0))
        problem = sj.SquareLoss(x, y)
        n_in, n_out = 8, 3
    elif cfg["problem"] == "squared_relu_toy":
        problem = sj.squared_relu_toy_problem(kp)
    else:
        raise ValueError(f"unknown `problem` {cfg['problem']!r} in the config.")
    zeros = lambda m: jax.tree_util.tree_map(jnp.zeros_like, m)  # noqa: E731
    if cfg["model"] == "dln":
        widths = (n_in,) + (width,) * (depth - 1) + (n_out,)
        like = tuple(jnp.zeros((o, i)) for i, o in zip(widths[:-1], widths[1:]))
        return problem, like, widths
    if cfg["model"] == "relu":
        widths = (n_in,) + (width,) * (depth - 1) + (n_out,)
        return problem, zeros(sj.nn.DeepReLU(widths, key=kn)), widths
    if cfg["model"] == "squared_relu":
        return problem, zeros(sj.nn.SquaredReLU(2, width, key=kn)), (2, width)
    raise ValueError(f"unknown `model` {cfg['model']!r}; use dln, relu or squared_relu.")


def run(args) -> int:
    import jax.random as jr
    import numpy as np

    import saddlejax as sj

    cfg = dict(PRESETS[args.preset])
    if args.config is not None:
        cfg.update(json.loads(Path(args.config).read_text()))
    if args.depth is not None:
        cfg["depth"] = args.depth
    if args.width is not None:
        cfg["width"] = args.width
    key = jr.key(args.seed)
    problem, origin, widths = _setup(cfg, key)
    start = time.perf_counter()
    term = sj.taylor_term(problem, origin, max_order=max(8, 2 * cfg["depth"]))
    t_taylor = time.perf_counter() - start
    start = time.perf_counter()
    invariant = sj.dln_invariant if cfg["model"] == "dln" else None
    esc = sj.optimal_escape(
        term.H,
        term.order,
        origin,
        key=jr.fold_in(key, 1),
        n_restarts=args.restarts,
        invariant=invariant,
        **({"kkt_rtol": 1e-6} if cfg["model"] == "relu" else {}),
    )
    esc.speed.block_until_ready()
    t_escape = time.perf_counter() - start
    n_show = min(args.top, esc.speeds.shape[0])
    out = {
        "config": cfg,
        "widths": list(widths),
        "n_params": int(sum(np.size(x) for x in __import__("jax").tree_util.tree_leaves(origin))),
        "k": term.order,
        "m": term.next_order,
        "taylor_route": term.method,
        "s_star": float(esc.speed),
        "kkt_residual": float(esc.kkt_residual),
        "result": "converged" if esc.result == sj.ESCAPE_RESULTS.successful else "NOT converged",
        "speeds": [float(s) for s in esc.speeds[:n_show]],
        "kkt_residuals": [float(r) for r in esc.kkt_residuals[:n_show]],
        "multiplicities": [int(c) for c in esc.multiplicities[:n_show]],
        "seconds": {"taylor_term": t_taylor, "optimal_escape": t_escape},
    }
    if cfg["model"] == "dln":
        g = sj.matrix_cost_gradient_at_zero(problem)
        closed = np.asarray(sj.dln_speeds(g, cfg["depth"]))
        s_closed = float(sj.dln_optimal_speed(g, cfg["depth"]))
        out["closed_form_s_star"] = s_closed
        out["s_star_rel_diff"] = abs(out["s_star"] - s_closed) / s_closed
        nearest = [float(closed[np.argmin(np.abs(closed - s))]) for s in out["speeds"]]
        out["closed_form_speeds"] = nearest
    if cfg["model"] == "relu":
        svs, ratios = sj.layer_sv_ratios(esc.direction.weights)
        out["sv_ratios"] = [float(r) for r in ratios]
    if args.json:
        print(json.dumps(out))
        return 0 if out["result"] == "converged" else 1
    print(
        f"saddlejax escape: {cfg['model']} widths {tuple(widths)} on {cfg['problem']}, "
        f"P = {out['n_params']}, {args.restarts} restarts"
    )
    print(
        f"Taylor term at the origin ({term.method} route): k = {term.order}, m = {term.next_order}"
        f"   [{t_taylor:.2f} s]"
    )
    line = f"s* = {out['s_star']:.12g}   KKT residual {out['kkt_residual']:.2e}   ({out['result']})"
    if "closed_form_s_star" in out:
        line += (
            f"\nclosed form s* = L^(-(L-2)/2) σ_1(G) = {out['closed_form_s_star']:.12g}   "
            f"relative difference {out['s_star_rel_diff']:.2e}"
        )
    print(line + f"   [{t_escape:.2f} s]")
    print(
        "distinct escape directions found (speed, KKT residual, restarts"
        + (", nearest closed-form speed, rel. diff" if cfg["model"] == "dln" else "")
        + "):"
    )
    for i in range(n_show):
        row = (
            f"  {out['speeds'][i]:>16.12g}  {out['kkt_residuals'][i]:.2e}  "
            f"{out['multiplicities'][i]:>3d}"
        )
        if cfg["model"] == "dln":
            c = out["closed_form_speeds"][i]
            row += f"  {c:>16.12g}  {abs(out['speeds'][i] - c) / abs(c):.2e}"
        print(row)
    if "sv_ratios" in out:
        print("σ1/σ2 of ρ* per layer: " + ", ".join(f"{r:.3g}" for r in out["sv_ratios"]))
    return 0 if out["result"] == "converged" else 1
