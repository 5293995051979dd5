"""The `saddlejax` command line: run and reproduce experiments.

Each sub-command lives in `saddlejax/cli/_<name>.py` and defines `add_parser(subparsers)`, which
registers its arguments and sets three defaults: `check(args)`, which validates every option
before any work and returns the settings (a config of `saddlejax.experiments`), raising a
`ValueError` that names a config field in backquotes or an option; `options`, the map from
config fields to the options that set them; and `func(args, settings)`, which runs the
computation and prints. The computations are in `saddlejax.experiments`.

A bad value ends in one line on stderr, `saddlejax <command>: error: <what, the value, the
fix>`, and exit status 2, before any computation; option abbreviations are refused.
"""

import argparse
import importlib
import os
import re
import sys
import tempfile
from pathlib import Path

# Sub-command modules, in the order `saddlejax --help` lists them.
COMMANDS = ("run", "reproduce", "chain", "escape_path", "escape", "bench")


def error_line(prog: str, message: str) -> str:
    """`prog: error: message` on one line (argparse's form)."""
    return f"{prog}: error: {' '.join(str(message).split())}\n"


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` that refuses abbreviated options (`--alpha` for `--alphas`)
    and reports an error on one line, `prog: error: message`, with exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, error_line(self.prog, message))

    def parse_args(self, args=None, namespace=None):
        # argparse reports leftover words from the top parser, as `saddlejax: error: ...`;
        # name the sub-command they were given to, and why `--alpha` is not `--alphas`.
        parsed, extras = self.parse_known_args(args, namespace)
        words = getattr(parsed, "words", None)
        if extras and isinstance(words, list) and not any(w.startswith("-") for w in extras):
            # Positional words after an option (`run PRESET --quick key=value`): argparse
            # takes a `nargs="*"` positional only once, so the later words come back here.
            parsed.words, extras = words + extras, []
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.exit(
                2,
                error_line(
                    prog,
                    f"unrecognized arguments: {' '.join(extras)} (`{prog} --help` lists the "
                    "options, which are not abbreviated)",
                ),
            )
        return parsed


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="saddlejax",
        description="Gradient-flow dynamics from small initialization: saddle-to-saddle "
        "trajectories, escape directions and escape paths.",
    )
    # Sub-parsers are of the parent's class: they inherit the one-line errors and no abbreviations.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"saddlejax.cli._{name}").add_parser(sub)
    return parser


def preset_command(subparsers, name: str, presets, default: str, *, help: str, doc: str):
    """The parser of a sub-command that runs one of `presets` (`--preset`, default `default`)
    and can print its results as one JSON object (`--json`)."""
    p = subparsers.add_parser(name, help=help, description=doc, allow_abbrev=False)
    p.add_argument("--preset", choices=sorted(presets), default=default)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def option_names(message: str, options: dict[str, str]) -> str:
    """`message` with each config field in backquotes that an option sets (`t1_factor`)
    replaced by that option (--t1-factor)."""
    return re.sub(r"`(\w+)`", lambda m: options.get(m.group(1), m.group(0)), message)


def check_output(text: str | None, option: str, *, folder: bool) -> Path | None:
    """The output path `text` given to `option` (None: not given), checked before any work: not
    empty (Path("") is the current folder), not a folder where a file is expected or the
    reverse, and writable, a test file created and removed in it or in the nearest existing
    folder above it (folders that do not exist yet are created at the end)."""
    if text is None:
        return None
    kind = "folder" if folder else "file"
    if not text.strip():
        raise ValueError(f"{option} is empty; give a {kind} path, or drop {option}")
    path = Path(text).expanduser()
    if path.exists() and path.is_dir() != folder:
        found = "a folder" if path.is_dir() else "a file"
        raise ValueError(f"{option} {text!r} is {found}, not a {kind}; give a {kind} path")
    if path.exists() and not folder:
        where = path.parent
    else:
        where = path
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise ValueError(
                f"{option} {text!r}: {str(where)!r} is a file, so the {kind} cannot be made "
                "there; give another path"
            )
    try:
        if path.exists() and not folder:
            with open(path, "ab"):
                pass
        else:
            with tempfile.TemporaryFile(dir=where):
                pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ValueError(
            f"{option} {text!r}: cannot write in {str(where)!r} ({reason}); give a writable path"
        ) from None
    return path


def use_host_devices(n: int | None = None) -> None:
    """Expose `n` XLA host (CPU) devices, default one per core, unless XLA_FLAGS or
    `jax_num_cpu_devices` already set a number. `sweep` spreads the seeds of a CPU run over them
    by threads (×1.9 for 2 devices on 2 cores, benchmarks/README.md); a single trajectory runs
    on device 0. Must run before JAX creates its CPU backend."""
    import jax

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    if jax.config.jax_num_cpu_devices > 0:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n or os.cpu_count() or 1)
    except RuntimeError:  # JAX already started (main() called from a running program): keep it
        pass


def use_compilation_cache() -> str | None:
    """Keep compiled solves on disk across processes (JAX's persistent compilation cache), in
    `$SADDLEJAX_CACHE_DIR` (default `~/.cache/saddlejax/xla`; "off" disables it), unless the
    program already chose a cache. A second run of the same experiment then loads its solves
    instead of compiling them (benchmarks/README.md). Returns the folder used, or None."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = os.environ.get("SADDLEJAX_CACHE_DIR", "~/.cache/saddlejax/xla")
    if folder.strip().lower() in ("", "off", "0", "none"):
        return None
    folder = os.path.expanduser(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # an unwritable home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    # Solves take seconds to compile; cache everything above a tenth of a second.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return folder


def main(argv=None) -> int:
    """Parse `argv` (default: the command line), check every option, then run the sub-command.

    **Returns:** the exit status: 0, 1 when the computation reports a failure, 2 (after one
    line on stderr) when an option's value is refused. An option that does not parse (a
    misspelt name, a word where a number is due) exits at once with status 2 (argparse's
    `SystemExit`), also after one line.
    """
    import jax

    # The CLI, not the library, chooses float64 (small-initialisation flows need it).
    jax.config.update("jax_enable_x64", True)
    use_host_devices()
    parser = build_parser()
    use_compilation_cache()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        settings = args.check(args)
    except ValueError as e:
        sys.stderr.write(error_line(args.parser.prog, option_names(str(e), args.options)))
        return 2
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
