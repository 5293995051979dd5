"""The `saddlejax` command line: run and reproduce experiments.

Each sub-command lives in `saddlejax/cli/_<name>.py` and defines `add_parser(subparsers)`,
which registers its arguments and sets `func` (called with the parsed arguments). The
computations are in `saddlejax.experiments`; the sub-commands parse, call them and print.
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
        importlib.import_module(f"saddlejax.cli._{name}").add_parser(sub)
    return parser


def preset_command(subparsers, name: str, presets, default: str, *, help: str, doc: str):
    """The parser of a sub-command that runs one of `presets` (`--preset`, default `default`)
    and can print its results as one JSON object (`--json`)."""
    p = subparsers.add_parser(name, help=help, description=doc)
    p.add_argument("--preset", choices=sorted(presets), default=default)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def use_host_devices(n: int | None = None) -> None:
    """Expose `n` XLA host (CPU) devices, default one per core, unless XLA_FLAGS or
    `jax_num_cpu_devices` already set a number. `sweep` spreads the seeds of a CPU run over them
    by threads (×1.9 for 2 devices on 2 cores, benchmarks/README.md); a single trajectory runs
    on device 0. Must run before JAX creates its CPU backend."""
    import os

    import jax

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    if jax.config.jax_num_cpu_devices > 0:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n or os.cpu_count() or 1)
    except RuntimeError:  # JAX already started (main() called from a running program): keep it
        pass


def main(argv=None) -> int:
    import jax

    # The CLI, not the library, chooses float64 (small-initialisation flows need it).
    jax.config.update("jax_enable_x64", True)
    use_host_devices()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
