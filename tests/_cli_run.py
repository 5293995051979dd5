"""Run the `saddlejax` command line in-process, capturing its output (shared by the tests)."""

import contextlib
import io

from saddlejax.cli import main


def run_cli(argv):
    """`main(argv)` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()
