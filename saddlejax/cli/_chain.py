"""`saddlejax chain`: the α → 0 chain of saddles that gradient flow from α·θ̃ visits, computed
without small-α simulation (`saddlejax.saddle_chain`; Jacot et al. Conjecture 3, SPEC §8), with
the small-α flows that check its predictions, into a run folder; the computation is the
experiment "saddle-chain" (presets chain-jacot-fig1, chain-deep-relu, chain-two-layer-tanh)."""

from ._jobs import default_out

PROBLEMS = ("jacot-fig1", "deep-relu", "two-layer-tanh")

# Config fields named by the options that set them.
OPTIONS = {
    "problem": "--problem",
    "alphas": "--alphas",
    "seed": "--seed",
    "max_saddles": "--max-saddles",
    "max_branches": "--max-branches",
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "chain",
        help="the α → 0 chain of saddles without small-α simulation, checked against flows",
        description=" ".join(__doc__.split()) + " It prints the chain (per saddle: loss, rank, "
        "kind, order k, speed s*, Hessian index, null-space dimension, degenerate) and the "
        "predicted against the simulated drop times, and writes config.yaml, results.npz, "
        "summary.json and the figure in --out.",
        allow_abbrev=False,
    )
    p.add_argument("--problem", choices=PROBLEMS, default="jacot-fig1",
                   help="the network and data (default jacot-fig1: a deep linear net on "
                   "matrix completion, Jacot et al. Fig. 1)")
    p.add_argument("--alphas", type=float, nargs="+", default=None,
                   help="scales α of the checking flows, distinct, in (0, 1) (default: preset)")
    p.add_argument("--seed", type=int, default=None,
                   help="key of θ̃ and of the chain's probes, in [0, 2³²−1] (default 0)")
    p.add_argument("--max-saddles", type=int, default=None,
                   help="at most this many escapes, 1..100 (default 10)")
    p.add_argument("--max-branches", type=int, default=None,
                   help="other escape directions followed at a degenerate saddle, 0..100 "
                   "(default 0)")
    p.add_argument("--quick", action="store_true", help="the preset's quick mode (larger α)")
    p.add_argument("--out", default=None,
                   help="output folder (default results/chain-PROBLEM, /quick appended with "
                   "--quick)")
    p.add_argument("--force", action="store_true", help="recompute a finished run in --out")
    p.set_defaults(func=main, check=check, options=OPTIONS, parser=p)


def check(args):
    """The job of `args`: the preset chain-PROBLEM (its quick mode with --quick) with the
    options as overrides; the run folder is checked too."""
    from ..experiments import configure
    from ._jobs import check_jobs

    preset = f"chain-{args.problem}"
    overrides = []
    if args.alphas is not None:
        overrides.append(f"alphas=[{','.join(repr(float(a)) for a in args.alphas)}]")
    for field in ("seed", "max_saddles", "max_branches"):
        value = getattr(args, field)
        if value is not None:
            overrides.append(f"{field}={value}")
    jobs = configure(preset, overrides, quick=args.quick)
    args.out = default_out(preset, args.quick) if args.out is None else args.out
    check_jobs(jobs, args.out, args.force)
    return jobs


def main(args, jobs) -> int:
    from ._jobs import run_jobs

    mode = "quick" if args.quick else "full"
    print(f"saddlejax chain: {args.problem} ({mode})", flush=True)
    return run_jobs("saddlejax chain", jobs, args.out, force=args.force)
