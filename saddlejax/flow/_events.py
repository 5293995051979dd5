"""Events of a gradient flow, located by root finding on the solver's dense output (SPEC §1)."""

import abc
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Scalar
from optimistix import two_norm


class AbstractFlowEvent(eqx.Module):
    """A scalar condition g(θ) whose sign change marks the event.

    Called as `event(state, loss_fn)` with the trainable state and the loss of the state.
    """

    @abc.abstractmethod
    def __call__(self, state, loss_fn) -> Scalar:
        raise NotImplementedError


class EscapeRadius(AbstractFlowEvent):
    """The escape time t_α(r): the first t with ‖θ(t)‖ = r (SPEC §1). Start inside the ball."""

    radius: float | Array

    def __init__(self, radius):
        if isinstance(radius, int | float) and not radius > 0:
            raise ValueError(f"`radius` must be positive, got {radius}.")
        # An array, not a Python float: a new radius must not recompile the solve.
        self.radius = jnp.asarray(radius, dtype=float)

    def __call__(self, state, loss_fn):
        # Relative form ‖θ‖/r − 1: the root finder's absolute tolerance on g is then relative.
        return two_norm(state) / self.radius - 1.0


class LossBelow(AbstractFlowEvent):
    """The first t with L(θ(t)) = level (from above)."""

    level: float | Array

    def __init__(self, level):
        self.level = jnp.asarray(level, dtype=float)  # an array: no recompile per level

    def __call__(self, state, loss_fn):
        level = jnp.where(self.level == 0, 1.0, jnp.abs(self.level))
        return (loss_fn(state) - self.level) / level  # relative, as for EscapeRadius


class CriticalPoint(AbstractFlowEvent):
    """The flow has reached a critical point after leaving the one it started near: ‖∇L(θ)‖ ≤
    `grad_tol` once L(θ) < `loss_below` (SPEC §8: the next saddle, or a minimum).

    A boolean condition, so the event is the end of the first step where it holds (no root
    find: ‖∇L‖ decays exponentially into the tolerance, where a located time means little).
    The loss condition keeps it from firing at the start, where ‖∇L‖ is already small.
    """

    grad_tol: float | Array
    loss_below: float | Array

    def __init__(self, grad_tol, loss_below):
        if isinstance(grad_tol, int | float) and not grad_tol > 0:
            raise ValueError(f"`grad_tol` must be positive, got {grad_tol}.")
        self.grad_tol = jnp.asarray(grad_tol, dtype=float)
        self.loss_below = jnp.asarray(loss_below, dtype=float)

    def __call__(self, state, loss_fn):
        loss, grad = jax.value_and_grad(loss_fn)(state)
        return (two_norm(grad) <= self.grad_tol) & (loss < self.loss_below)


# The event time is resolved once Newton's next correction is below this many float spacings
# of t: a finer time does not exist in floating point.
RESOLUTION_ULPS = 8.0


class ResolvedNewton(optx.AbstractRootFinder):
    """Newton's method for the event time t* (g(t*) = 0 on the solver's dense output), stopped
    at the float resolution of t.

    optimistix's Newton stops when |Δt| ≤ `atol` + `rtol`·|t| and |g(t)| ≤ `atol`. The second
    condition has no solution when one float spacing of t changes g by more than `atol`: at
    t ≈ 7·10⁹, ulp(t) ≈ 10⁻⁶, and ‖θ‖/r − 1 of an escaping DLN (L = 4, α = 10⁻⁵) moves by
    ≈ 7·10⁻¹⁰ per ulp; with that criterion alone the root find runs to its step limit and the
    event is lost. This root finder also stops, successfully, when
    |g(t)| ≤ `atol` + `ulps`·ulp(t)·|g'(t)|: Newton's next correction is below `ulps` float
    spacings of t, so t is the root to the precision t has. Iterates stay in [`lower`, `upper`]
    (the bracketing step), as with optimistix's Newton.
    """

    rtol: float
    atol: float
    norm: Callable = optx.max_norm
    ulps: float = RESOLUTION_ULPS

    @property
    def _newton(self) -> optx.Newton:
        return optx.Newton(rtol=self.rtol, atol=self.atol, norm=self.norm)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        return self._newton.init(fn, y, args, options, f_struct, aux_struct, tags)

    def step(self, fn, y, args, options, state, tags):
        return self._newton.step(fn, y, args, options, state, tags)

    def terminate(self, fn, y, args, options, state, tags):
        done, result = self._newton.terminate(fn, y, args, options, state, tags)
        ones = jax.tree_util.tree_map(jnp.ones_like, y)
        g, dg = jax.jvp(lambda t: fn(t, args)[0], (y,), (ones,))
        spacing = jax.tree_util.tree_map(lambda t: jnp.spacing(jnp.abs(t)), y)
        g_max = optx.max_norm(g)
        resolvable = self.atol + self.ulps * optx.max_norm(spacing) * optx.max_norm(dg)
        resolved = jnp.isfinite(g_max) & (g_max <= resolvable)
        return done | resolved, optx.RESULTS.where(resolved, optx.RESULTS.successful, result)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}


def to_diffrax_event(event, loss_fn, rtol: float = 1e-12, atol: float = 1e-10):
    """Turn saddlejax events (one, or a tuple/list of them) into a `diffrax.Event`.

    A `diffrax.Event` is passed through unchanged. The event time is refined by Newton's method
    on the solver's interpolant between the two steps that bracket the sign change
    (`ResolvedNewton`): it stops when the time step is below `atol` + `rtol`·t and |g| ≤ `atol`,
    or when t is resolved to `RESOLUTION_ULPS` float spacings (late events, t ≳ 10⁶). The
    saddlejax conditions g are relative (‖θ‖/r − 1, (L − level)/|level|), so `atol` = 1e−10 is
    a relative accuracy.
    """
    if event is None or isinstance(event, diffrax.Event):
        return event
    check_event(event)
    events = tuple(event) if isinstance(event, list | tuple) else (event,)

    def make(e):
        return lambda t, y, args, **kwargs: e(y, loss_fn)

    cond = tuple(make(e) for e in events)
    cond = cond[0] if len(cond) == 1 else cond
    return diffrax.Event(cond, root_finder=ResolvedNewton(rtol=rtol, atol=atol))


def check_event(event) -> None:
    """A ValueError unless `event` is None, a flow event, a tuple/list of them or a
    `diffrax.Event`."""
    if event is None or isinstance(event, diffrax.Event):
        return
    for e in tuple(event) if isinstance(event, list | tuple) else (event,):
        if not isinstance(e, AbstractFlowEvent):
            raise ValueError(
                "`event` must be an `EscapeRadius`, a `LossBelow`, a tuple of them, or a "
                f"`diffrax.Event`; got {type(e).__name__}."
            )
