"""The `saddlejax` command line: run and reproduce experiments.

Each sub-command lives in `saddlejax/commands/_<name>.py` and defines `add_parser(subparsers)`,
which registers its arguments and sets `func` (called with the parsed arguments).
"""

import argparse
import importlib
import sys

# Sub-command modules, in the order `saddlejax --help` lists them.
COMMANDS = ("run", "escape_path", "escape", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saddlejax",
        description="Gradient-flow dynamics from small initialization: saddle-to-saddle "
        "trajectories, escape directions and escape paths.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"saddlejax.commands._{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    import jax

    # The CLI, not the library, chooses float64 (small-initialisation flows need it).
    jax.config.update("jax_enable_x64", True)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
