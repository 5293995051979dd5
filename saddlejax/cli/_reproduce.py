"""`saddlejax reproduce NAME [--quick|--full] [--out DIR] [key=value ...]`: one of the papers'
experiments, a preset config shipped with saddlejax, run into a folder and checked against the
paper's claims (the checks are in its summary.json). The quick mode (the default) runs in a
minute or two on a laptop and in CI; --full runs the paper's settings, or as close as one
machine allows (each preset's YAML says where it differs)."""


def add_parser(subparsers) -> None:
    from ..experiments import preset_names

    p = subparsers.add_parser(
        "reproduce",
        help="reproduce a paper's experiment (a preset) and check its claims",
        description=__doc__.split(":", 1)[1].strip() + " Presets: " + ", ".join(preset_names()),
        allow_abbrev=False,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="a preset (omit to list them)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of its settings")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the quick mode (default)")
    mode.add_argument("--full", action="store_true", help="the paper's settings")
    p.add_argument("--out", default=None, help="output folder (default results/NAME/quick|full)")
    p.add_argument("--force", action="store_true", help="recompute a finished run in --out")
    p.set_defaults(func=main, check=check, options={}, parser=p)


def check(args):
    from ..experiments import configure, preset_names
    from ._jobs import check_jobs

    if args.name is None:
        return None
    if args.name not in preset_names():
        raise ValueError(
            f"unknown preset {args.name!r}; use one of: {', '.join(preset_names())}"
        )
    bad = [w for w in args.overrides if "=" not in w]
    if bad:
        raise ValueError(f"{bad[0]!r} is not key=value; give overrides such as width=10")
    jobs = configure(args.name, args.overrides, quick=not args.full)
    mode = "full" if args.full else "quick"
    args.out = f"results/{args.name}/{mode}" if args.out is None else args.out
    check_jobs(jobs, args.out, args.force)
    return jobs


def main(args, jobs) -> int:
    from ..experiments import EXPERIMENTS, preset_path
    from ._jobs import run_jobs

    if jobs is None:
        from omegaconf import OmegaConf

        from ..experiments import preset_names

        args.parser.print_usage()
        print("presets (saddlejax reproduce NAME [--quick|--full]):")
        for name in preset_names():
            data = OmegaConf.to_container(OmegaConf.load(preset_path(name)))
            print(f"  {name:<22} {data.get('description', '')}")
        print(f"experiments ({len(EXPERIMENTS)}): " + ", ".join(sorted(EXPERIMENTS)))
        return 0
    mode = "full" if args.full else "quick (--full for the paper's settings)"
    print(f"saddlejax reproduce {args.name}: {mode}", flush=True)
    return run_jobs("saddlejax reproduce", jobs, args.out, force=args.force)
