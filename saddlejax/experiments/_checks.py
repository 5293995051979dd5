"""Validation of the experiments' config fields: each check raises a one-line `ValueError` that
names the field in backquotes (`name`), says what was expected and what was received, so that the
CLI can replace the field by the option that set it."""

import math
import numbers

# Sizes beyond which a run does not fit a workstation: float64 parameters, of which the solvers
# hold tens of copies (10⁷ parameters are 80 MB per copy).
MAX_PARAMS = 10**7
# Seeds are PRNG keys: `jax.random.key` takes an unsigned 32-bit integer here.
MAX_SEED = 2**32 - 1


def check_int(name: str, value, low: int, high: int | None = None, *, why: str = "") -> int:
    """`value` as an int in [low, high] (any integral type, NumPy's too; no bool, no float: 2.5
    or True is not a size); `why` ends the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        bound = f"≥ {low}" if high is None else f"in [{low}, {high}]" if high > low else f"{low}"
        raise ValueError(
            f"`{name}` must be {'the integer' if high == low else 'an integer'} {bound}, got "
            f"{value}" + (f"; {why}" if why else "") + "."
        )
    return int(value)


def check_float(
    name: str,
    value,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = True,
    high_open: bool = True,
    why: str = "",
) -> float:
    """`value` as a finite float in the interval (low, high) (ends closed on request); `why`
    ends the message (the reason for the bounds, or the fix)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float64
        value = math.inf if value > 0 else -math.inf
    inside = (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high
    )
    if not (math.isfinite(value) and inside):
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        hi = "∞" if high == math.inf else f"{high:g}"
        raise ValueError(
            f"`{name}` must be a finite number in {left}{low:g}, {hi}{right}, got {value!r}"
            + (f"; {why}" if why else "")
            + "."
        )
    return value


def check_floats(name: str, values, low: float, high: float, *, why: str = "") -> tuple:
    """`values` as a tuple of distinct finite floats in (low, high)."""
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise ValueError(f"`{name}` must be a list of numbers, got {values!r}.")
    out = tuple(check_float(name, v, low, high, why=why) for v in values)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}` lists a value twice, got {list(out)}; give each once.")
    return out


def check_choice(name: str, value, choices) -> str:
    """`value`, one of the strings `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown `{name}` {value!r}; use one of {', '.join(choices)}.")
    return value


def check_params(widths, name: str = "width") -> int:
    """The number of weights of a network of layer sizes `widths`, at most `MAX_PARAMS`."""
    n = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    if n > MAX_PARAMS:
        raise ValueError(
            f"`{name}` and `depth` give {n:,} parameters (layer sizes {widths[0]}, "
            f"{widths[1]}, …), more than the {MAX_PARAMS:,} a run is sized for (float64, "
            "tens of copies in the solvers); use a smaller width or depth."
        )
    return n
