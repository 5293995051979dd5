"""Trace solves without host callbacks, so that JAX's persistent compilation cache keeps them.

diffrax checks its arguments inside the compiled program (`eqx.error_if`: `saveat.ts`
increasing and within [t0, t1], the sign of `dt0`); with Equinox's default `EQX_ON_ERROR=raise`
each check is a host callback, and JAX refuses to write a program holding one to the
persistent cache, so every new process compiled every solve again. saddlejax validates those
arguments on the host before tracing, so while it traces a solve the checks substitute NaN
instead (Equinox's `EQX_ON_ERROR=nan`); a NaN that did reach a solve is reported as a
non-finite failure, never as a success. A program that set `EQX_ON_ERROR` itself keeps its
choice.
"""

import contextlib

from equinox import _errors  # `EQX_ON_ERROR`, read by `eqx.error_if` when it is traced


@contextlib.contextmanager
def cacheable_errors():
    """Within the block, `eqx.error_if` traces as NaN substitution (module docstring)."""
    if getattr(_errors, "EQX_ON_ERROR", None) != "raise":
        yield
        return
    _errors.EQX_ON_ERROR = "nan"
    try:
        yield
    finally:
        _errors.EQX_ON_ERROR = "raise"
