"""`saddlejax run [CONFIG] [key=value ...]`: an experiment from a config file or preset (default:
the main job, the preset `jacot-fig1`), with command-line overrides; `key=a,b,c` runs a grid,
one run folder per combination (Hydra's multirun). The computation is
`saddlejax.experiments.execute`."""

MAX_SEEDS = 10_000

# Config fields named by the options that set them (for the messages of refused values).
OPTIONS = {
    "alphas": "--alphas",
    "seeds": "--seeds",
    "width": "--width",
    "depth": "--depth",
    "solver": "--solver",
    "rtol": "--rtol",
    "t1_factor": "--t1-factor",
    "escape_radius": "--escape-radius",
}
# Options that are shorthands for an override of the field of the same name.
SHORTHANDS = ("width", "depth", "solver", "rtol", "t1_factor", "escape_radius")
DEFAULT = "jacot-fig1"


def add_parser(subparsers) -> None:
    from ..experiments import preset_names
    from ..solvers import SOLVER_NAMES

    p = subparsers.add_parser(
        "run",
        help="run an experiment from a config (default: the main job, saddle-to-saddle "
        "dynamics of a deep linear network)",
        description="Run an experiment from a YAML config file or a preset name (default "
        f"{DEFAULT}: a deep linear network, L = 4, w = 100, on 10×10 rank-3 matrix completion "
        "from θ₀ = α·θ̃, Jacot et al. Fig. 1), with key=value overrides of its settings; "
        "key=a,b,c runs one job per value (a grid over several keys runs every combination), "
        "each in its own folder under --out. Each run folder holds config.yaml (the resolved "
        "config), environment.json, results.npz with schema.json (arrays labelled by their "
        "axes), summary.json (values and checks) and the figures; a folder that holds the same "
        "run finished is skipped. Every setting is checked before any work. Presets: "
        + ", ".join(preset_names()),
        allow_abbrev=False,
    )
    p.add_argument(
        "words",
        nargs="*",
        metavar="[CONFIG] [key=value ...]",
        help="a .yaml file or preset name, then overrides such as width=10 alphas=[0.1,0.01] "
        "(width=10,100 for a grid)",
    )
    p.add_argument("--quick", action="store_true", help="the config's quick mode (a smoke test)")
    p.add_argument(
        "--out", default=None,
        help="output folder (default results/run, or results/<config name>; /quick appended "
        "with --quick)",
    )
    p.add_argument("--force", action="store_true", help="recompute a finished run in --out")
    p.add_argument(
        "--distributed", action="store_true",
        help="one of several processes (jax.distributed.initialize() detects SLURM, Open MPI, "
        "cloud TPU); without it, the environment variables SADDLEJAX_COORDINATOR=host:port, "
        "SADDLEJAX_NUM_PROCESSES and SADDLEJAX_PROCESS_ID, when set, start it. The sweeps' "
        "chunks are split between the processes; process 0 writes --out (put it, and "
        "--checkpoint, on a shared filesystem)",
    )
    p.add_argument(
        "--checkpoint", default=None,
        help="folder of the sweeps' finished chunks (default: the run folder's checkpoints/); "
        "an interrupted run resumes from it",
    )
    g = p.add_argument_group("shorthands for the main job's settings (same as key=value)")
    g.add_argument("--alphas", type=float, nargs="+", default=None,
                   help="initialisation scales α, distinct, in (0, 1)")
    g.add_argument("--seeds", type=int, default=None,
                   help=f"number of seeds 0..n-1, 1 ≤ n ≤ {MAX_SEEDS:,}")
    g.add_argument("--width", type=int, default=None, help="hidden width w ≥ 1")
    g.add_argument("--depth", type=int, default=None, help="number of layers L, 2 ≤ L ≤ 100")
    g.add_argument("--solver", default=None, choices=SOLVER_NAMES, help="ODE solver")
    g.add_argument("--rtol", type=float, default=None, help="relative tolerance, in [1e-14, 1)")
    g.add_argument("--t1-factor", type=float, default=None,
                   help="t1 = factor/α^(L-2), factor > 0")
    g.add_argument("--escape-radius", type=float, default=None,
                   help="r of the escape time t_α(r), between the start and the final norm")
    p.set_defaults(func=main, check=check, options=OPTIONS, parser=p)


def split_words(words):
    """(CONFIG or None, overrides) of the positional words: the first word without `=` is the
    config; every other word must be key=value."""
    source, overrides = None, []
    for i, word in enumerate(words):
        if "=" in word:
            overrides.append(word)
        elif i == 0:
            source = word
        else:
            raise ValueError(
                f"{word!r} is not key=value; the config (a .yaml file or preset name) comes "
                "first, then overrides such as width=10"
            )
    return source, overrides


def _shorthand_overrides(args) -> list[str]:
    from ..experiments._checks import check_int

    out = []
    if args.alphas is not None:
        out.append("alphas=[" + ",".join(repr(a) for a in args.alphas) + "]")
    if args.seeds is not None:
        n = check_int("seeds", args.seeds, 1, MAX_SEEDS, why="the number of seeds")
        out.append("seeds=[" + ",".join(map(str, range(n))) + "]")
    for field in SHORTHANDS:
        value = getattr(args, field)
        if value is not None:
            out.append(f"{field}={value!r}" if isinstance(value, float) else f"{field}={value}")
    return out


def check(args):
    """The jobs of the command line, every setting and output folder checked."""
    from ..experiments import configure
    from ..flow._distributed import initialize_from_env
    from ._jobs import check_jobs, default_out

    initialize_from_env(auto=args.distributed)  # before JAX computes anything
    source, overrides = split_words(args.words)
    if args.quick and (args.alphas is not None or args.seeds is not None):
        raise ValueError("--quick sets the α and seeds of the config; drop --alphas and --seeds, "
                         "or --quick")
    shorthands = _shorthand_overrides(args)
    given = {w.partition("=")[0] for w in overrides}
    twice = sorted(given & {w.partition("=")[0] for w in shorthands})
    if twice:
        raise ValueError(f"`{twice[0]}` is set twice (an option and {twice[0]}=...); give it once")
    jobs = configure(source, [*overrides, *shorthands], quick=args.quick, default=DEFAULT)
    name = "run" if source is None else jobs[0].source
    args.out = default_out(name, args.quick) if args.out is None else args.out
    check_jobs(jobs, args.out, args.force)
    from ._main import check_output

    check_output(args.checkpoint, "--checkpoint", folder=True)
    return jobs


def main(args, jobs) -> int:
    from ._jobs import run_jobs

    return run_jobs("saddlejax run", jobs, args.out, force=args.force, checkpoint=args.checkpoint)
