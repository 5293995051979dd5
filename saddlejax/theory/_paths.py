"""Discretised paths t ↦ θ(t) and the closed-form escape paths of a homogeneous H (SPEC §5, §7).

Jacot et al., App. C.1: an escape direction ρ of a k-homogeneous H (∇H(ρ) = −sρ, ‖ρ‖ = 1) gives
the escape path

    k = 2:  x(t) = ρ e^{s(t−T)},        k > 2:  x(t) = ρ ((k−2) s (T−t))^{−1/(k−2)}   (t < T),

with T a time shift (for k > 2 the blow-up time). A `Path` stores such a path on a time grid:
uniform in t for k = 2 (the path is exponential in t) and geometric in (T − t) for k > 2 (the path
is a power of T − t), so that every grid step changes ‖x‖ by about the same factor (SPEC §7).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree
from optimistix import two_norm

from .._tree import tree_index


def _check_order(order) -> int:
    if not isinstance(order, int | np.integer) or order < 2:
        raise ValueError(
            f"`order` (the homogeneity order k of H) must be an int ≥ 2, got {order!r}."
        )
    return int(order)


def _concrete(x) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def _fails(check) -> bool:
    """True if the check evaluates to False on concrete values; False when it cannot be decided
    (traced values: under `jit` even operations on constants are staged)."""
    try:
        return not bool(check())
    except jax.errors.ConcretizationTypeError:
        return False


class Path(eqx.Module):
    """A path θ(t) sampled on a time grid, with linear interpolation between grid points.

    **Fields:**

    - `ts`: the grid t_0 = t_min < … < t_{n−1}, shape (n,).
    - `xs`: the parameter pytree at each time, every leaf with a leading axis of size n.
    - `order`: k, the homogeneity order the path belongs to; it fixes the weight of the norms of
        corrections (‖·‖_β for k = 2, ‖·‖_α for k > 2; see `weighted_norm`).
    - `horizon`: T. For k > 2 the blow-up time (the grid must end before it); for k = 2 the time
        at which the closed-form path has norm 1. The weights of the norms are e^{−2β(t−T)} and
        (T − t)^{2α−1}.
    """

    ts: Float[Array, " n"]
    xs: PyTree
    order: int = eqx.field(static=True)
    horizon: Float[Array, ""]

    def __init__(self, ts, xs, *, order: int, horizon: float | ArrayLike = 0.0):
        self.order = _check_order(order)
        ts = jnp.asarray(ts)
        if ts.ndim != 1 or ts.shape[0] < 4:
            raise ValueError(f"`ts` must be a 1-D grid of at least 4 times, got shape {ts.shape}.")
        n = ts.shape[0]
        for leaf in jax.tree_util.tree_leaves(xs):
            if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
                raise ValueError(
                    f"every leaf of `xs` needs a leading time axis of size len(ts) = {n}; got a "
                    f"leaf of shape {jnp.shape(leaf)}. Stack the parameters over time first."
                )
        if _concrete(ts) and _fails(lambda: jnp.all(jnp.diff(ts) > 0)):
            raise ValueError("`ts` must be strictly increasing.")
        horizon = jnp.asarray(horizon, ts.dtype)
        if self.order > 2 and _concrete((ts, horizon)) and _fails(lambda: ts[-1] < horizon):
            raise ValueError(
                f"for order k > 2 the grid must end before the blow-up time `horizon` = "
                f"{float(horizon)}, but it ends at {float(ts[-1])}."
            )
        self.ts = ts
        self.xs = xs
        self.horizon = horizon

    @property
    def n(self) -> int:
        return self.ts.shape[0]

    @property
    def t_min(self) -> Array:
        return self.ts[0]

    @property
    def t_end(self) -> Array:
        return self.ts[-1]

    def at(self, i) -> PyTree:
        """θ(t_i), the parameters at grid index i."""
        return tree_index(self.xs, i)

    def norms(self) -> Float[Array, " n"]:
        """‖θ(t_i)‖ at every grid time."""
        return jax.vmap(two_norm)(self.xs)

    def evaluate(self, t: float | Array) -> PyTree:
        """θ(t), linearly interpolated between the grid times around t (clamped to the grid)."""
        t = jnp.asarray(t, self.ts.dtype)
        i = jnp.clip(jnp.searchsorted(self.ts, t) - 1, 0, self.n - 2)
        w = jnp.clip((t - self.ts[i]) / (self.ts[i + 1] - self.ts[i]), 0.0, 1.0)
        return jax.tree_util.tree_map(lambda x: (1 - w) * x[i] + w * x[i + 1], self.xs)

    def with_xs(self, xs) -> "Path":
        """The same grid, order and horizon with other values."""
        return Path(self.ts, xs, order=self.order, horizon=self.horizon)


def escape_scale(
    speed: float | Array, order: int, ts: Float[Array, "..."], *, horizon: float | Array = 0.0
) -> Array:
    """d(t) = e^{s(t−T)} (k = 2) or ((k−2) s (T−t))^{−1/(k−2)} (k > 2): the norm of the escape
    path along a unit escape direction of speed s (Jacot et al. App. C.1; SPEC §5)."""
    order = _check_order(order)
    ts = jnp.asarray(ts)
    if order == 2:
        return jnp.exp(speed * (ts - horizon))
    return ((order - 2) * speed * (horizon - ts)) ** (-1.0 / (order - 2))


def escape_time(speed: float, order: int, radius: float, *, horizon: float = 0.0) -> float:
    """The time t at which the escape path of speed s has norm `radius` (`escape_scale` inverse)."""
    order = _check_order(order)
    if not speed > 0 or not radius > 0:
        raise ValueError(f"`speed` and `radius` must be positive, got {speed} and {radius}.")
    if order == 2:
        return horizon + math.log(radius) / speed
    return horizon - radius ** (-(order - 2)) / ((order - 2) * speed)


def escape_times(
    speed: float,
    order: int,
    *,
    radii: tuple[float, float],
    n: int = 801,
    horizon: float = 0.0,
) -> np.ndarray:
    """The SPEC §7 grid for an escape path from norm `radii[0]` to `radii[1]`.

    Uniform in t for k = 2; geometric in (T − t) for k > 2. Either way ‖x‖ grows by the same
    factor at every step, so a fixed number of points per decade of ‖x‖ resolves the whole path.

    **Arguments:**

    - `speed`: s > 0; `order`: k; `radii`: (r_min, r_max) with 0 < r_min < r_max; `n`: number of
        times; `horizon`: T.

    **Returns:** a numpy array of n increasing times.
    """
    order = _check_order(order)
    r_min, r_max = (float(r) for r in radii)
    if not 0 < r_min < r_max:
        raise ValueError(f"`radii` must satisfy 0 < r_min < r_max, got {radii}.")
    if not isinstance(n, int) or n < 4:
        raise ValueError(f"`n` must be an int ≥ 4, got {n!r}.")
    t_min = escape_time(speed, order, r_min, horizon=horizon)
    t_end = escape_time(speed, order, r_max, horizon=horizon)
    if order == 2:
        return np.linspace(t_min, t_end, n)
    return horizon - np.geomspace(horizon - t_min, horizon - t_end, n)


def escape_path(
    direction: PyTree,
    speed: float | Array,
    order: int,
    ts: Float[ArrayLike, " n"],
    *,
    horizon: float | Array = 0.0,
) -> Path:
    """The closed-form escape path of a k-homogeneous H along an escape direction (SPEC §5).

    k = 2: x(t) = ρ e^{s(t−T)}; k > 2: x(t) = ρ ((k−2) s (T−t))^{−1/(k−2)}. It is a gradient-flow
    path of H, with x(t) → 0 as t → −∞, exactly when ∇H(ρ) = −sρ and ‖ρ‖ = 1 (Jacot et al.
    App. C.1); this function does not know H and does not check it.

    **Arguments:**

    - `direction`: ρ, a parameter pytree on the unit sphere (e.g. the `weights` of
        `dln_escape_direction`).
    - `speed`: s > 0. `order`: k ≥ 2. `ts`: the time grid (see `escape_times`).
    - `horizon`: T.

    **Returns:** a `Path`.

    **Example:**

    ```python
    rho = saddlejax.dln_escape_direction(G, (3, 4, 3))
    ts = saddlejax.escape_times(rho.speed, 2, radii=(1e-6, 0.3))
    x0 = saddlejax.escape_path(rho.weights, rho.speed, 2, ts)
    ```
    """
    order = _check_order(order)
    if _concrete(speed) and _fails(lambda: jnp.asarray(speed) > 0):
        raise ValueError(f"`speed` must be positive for an escape path, got {float(speed)}.")
    ts = jnp.asarray(ts)
    if _concrete(direction) and _fails(lambda: jnp.abs(two_norm(direction) - 1.0) <= 1e-6):
        raise ValueError(
            f"`direction` must lie on the unit sphere (‖ρ‖ = 1), got ‖ρ‖ = "
            f"{float(two_norm(direction))}; divide it by its norm (the closed forms hold for "
            "unit ρ)."
        )
    d = escape_scale(speed, order, ts, horizon=horizon)
    xs = jax.tree_util.tree_map(
        lambda r: d.reshape((-1,) + (1,) * jnp.ndim(r)) * jnp.asarray(r)[None], direction
    )
    return Path(ts, xs, order=order, horizon=horizon)
