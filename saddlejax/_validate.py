"""Checks of user arguments, done before any tracing: a `ValueError` that names the argument,
says what was expected and what was received (STYLE, Errors). Numbers are Python or NumPy
scalars, or concrete 0-d arrays; bools, complex numbers, strings and containers are refused
here rather than failing later inside JAX with a message that names none of the arguments."""

import difflib
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def did_you_mean(name: str, names) -> str:
    """The hint "did you mean 'x'? " for the closest of `names` to a misspelt `name`, or an
    empty string when none is close."""
    close = difflib.get_close_matches(name, list(names), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def describe(value) -> str:
    """A short repr of `value` for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _scalar(value):
    """`value` as a NumPy scalar if it is a real, non-bool number (or a concrete 0-d real array),
    else None."""
    if isinstance(value, bool | np.bool_) or isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, np.ndarray | jax.Array):
        if value.ndim != 0 or not (
            jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)
        ):
            return None
        return np.asarray(value)[()]
    if isinstance(value, numbers.Real):
        return value
    return None


def check_int(name: str, value, *, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as a Python int in [`minimum`, `maximum`]. Floats are refused even when integral
    (an int argument sets a count or a shape)."""
    scalar = _scalar(value)
    bounds = f"≥ {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if scalar is None or not isinstance(scalar, numbers.Integral | np.integer):
        raise ValueError(f"`{name}` must be an int {bounds}, got {describe(value)}.")
    scalar = int(scalar)
    if scalar < minimum or (maximum is not None and scalar > maximum):
        raise ValueError(f"`{name}` must be an int {bounds}, got {scalar}.")
    return scalar


def check_real(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> float:
    """`value` as a Python float, not NaN, finite unless `finite=False`, in the interval from
    `low` to `high` (open at an end where `low_open`/`high_open`)."""
    scalar = _scalar(value)
    lo = "−∞" if low is None else f"{low:g}"
    hi = "∞" if high is None else f"{high:g}"
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    interval = f"{left}{lo}, {hi}{right}"
    what = f"a {'finite ' if finite else ''}real number in {interval}"
    if scalar is None:
        raise ValueError(f"`{name}` must be {what}, got {describe(value)}.")
    x = float(scalar)
    bad = (
        np.isnan(x)
        or (finite and not np.isfinite(x))
        or (low is not None and (x <= low if low_open else x < low))
        or (high is not None and (x >= high if high_open else x > high))
    )
    if bad:
        raise ValueError(f"`{name}` must be {what}, got {describe(value)}.")
    return x


def check_key(name: str, key):
    """`key` unchanged if it is a JAX PRNG key: a typed key (`jax.random.key`) or a legacy raw
    uint32 key (`jax.random.PRNGKey`), concrete or traced."""
    dtype = getattr(key, "dtype", None)
    if isinstance(key, np.ndarray | jax.Array) and dtype is not None:
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return key
        if dtype == jnp.uint32 and key.ndim >= 1:
            return key
    raise ValueError(
        f"`{name}` must be a JAX PRNG key such as `jax.random.key(0)`, got {describe(key)}."
    )
