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

from .._flat import map_conditions
from .._validate import check_real


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
        if not isinstance(radius, jax.core.Tracer):  # a traced radius is the user's to check
            check_real("radius", radius, low=0.0, low_open=True)
        # An array, not a Python float: a new radius must not recompile the solve.
        self.radius = jnp.asarray(radius, dtype=float)

    def __call__(self, state, loss_fn):
        # Relative form ‖θ‖/r − 1: the root finder's absolute tolerance on g is then relative.
        return two_norm(state) / self.radius - 1.0


class LossBelow(AbstractFlowEvent):
    """The first t with L(θ(t)) = level (from above)."""

    level: float | Array

    def __init__(self, level):
        if not isinstance(level, jax.core.Tracer):  # a traced level is the user's to check
            check_real("level", level)
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


# The event time is resolved once its bracket is this many float spacings of t wide: a finer
# time does not exist in floating point.
RESOLUTION_ULPS = 8.0


class _BracketState(eqx.Module):
    lower: Scalar
    upper: Scalar
    g_lower: Scalar
    g_upper: Scalar
    side: Array  # which end the last step moved: −1 lower, +1 upper, 0 none yet
    error: Scalar  # g at the last evaluated time
    which: Array  # the condition located, among several
    width: Scalar  # of the first bracket (the solver's step)


def _secant(lower, upper, g_lower, g_upper):
    """The regula falsi point of the bracket, or its midpoint where that is not inside."""
    denom = g_upper - g_lower
    point = (lower * g_upper - upper * g_lower) / jnp.where(denom != 0, denom, 1.0)
    inside = (
        (denom != 0) & (point > jnp.minimum(lower, upper)) & (point < jnp.maximum(lower, upper))
    )
    return jnp.where(inside, point, lower + 0.5 * (upper - lower))


class ResolvedBracket(optx.AbstractRootFinder):
    """The event time t* (g(t*) = 0 on the solver's dense output) by the Illinois variant of
    regula falsi on the bracketing step [`lower`, `upper`] (Dowell & Jarratt 1971), stopped at
    the float resolution of t.

    It uses values of g only, never dg/dt: diffrax's event condition carries no derivative
    with respect to the flow's inputs (the event time is differentiated exactly by
    `differentiable_event_time`), and the slope of the dense output is only an approximation
    of the flow's (a polynomial across the step). Superlinear like the secant method, and the
    bracket always holds the root. Stops, successfully, when |g| ≤ `atol`, or when the bracket
    is below `ulps` float spacings of t: at t ≈ 7·10⁹ one spacing is ≈ 10⁻⁶ and ‖θ‖/r − 1 of an
    escaping DLN (L = 4, α = 10⁻⁵) moves by ≈ 7·10⁻¹⁰ per spacing, so |g| ≤ 10⁻¹⁰ alone may not
    exist and t is then the root to the precision t has (near t = 0, to ε of the step: a
    sliding flow's piece starts its clock there). A condition that jumps across 0 is located
    to that resolution too; one that is NaN inside the bracket fails.
    """

    rtol: float
    atol: float
    norm: Callable = optx.max_norm
    ulps: float = RESOLUTION_ULPS

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        dtype = jnp.result_type(y)
        lower = jnp.asarray(options["lower"], dtype)
        upper = jnp.asarray(options["upper"], dtype)
        ends = (fn(lower, args)[0], fn(upper, args)[0])
        # Several conditions (a tuple of events): diffrax zeroes all but the ones that fired;
        # the first with a sign change across the step is located.
        lows, highs = (
            jnp.stack([jnp.asarray(x, dtype) for x in jax.tree_util.tree_leaves(e)]) for e in ends
        )
        which = jnp.argmax(jnp.sign(lows) != jnp.sign(highs))
        return _BracketState(
            lower,
            upper,
            lows[which],
            highs[which],
            jnp.zeros((), jnp.int32),
            jnp.asarray(jnp.inf, dtype),
            which,
            jnp.abs(upper - lower),
        )

    def step(self, fn, y, args, options, state, tags):
        values, aux = fn(y, args)
        leaves = [jnp.asarray(x, state.error.dtype) for x in jax.tree_util.tree_leaves(values)]
        g = jnp.stack(leaves)[state.which]
        done = jnp.abs(g) <= self.atol
        same_as_lower = jnp.sign(g) == jnp.sign(state.g_lower)
        # Illinois: an end kept twice in a row has its value halved (no one-sided stalling).
        lower = jnp.where(same_as_lower, y, state.lower)
        g_lower = jnp.where(same_as_lower, g, state.g_lower)
        upper = jnp.where(same_as_lower, state.upper, y)
        g_upper = jnp.where(same_as_lower, state.g_upper, g)
        g_upper = jnp.where(same_as_lower & (state.side == -1), 0.5 * g_upper, g_upper)
        g_lower = jnp.where(~same_as_lower & (state.side == 1), 0.5 * g_lower, g_lower)
        side = jnp.where(same_as_lower, -1, 1).astype(jnp.int32)
        new_y = jnp.where(done, y, _secant(lower, upper, g_lower, g_upper))
        state = _BracketState(lower, upper, g_lower, g_upper, side, g, state.which, state.width)
        return new_y, state, aux

    def terminate(self, fn, y, args, options, state, tags):
        width = jnp.abs(state.upper - state.lower)
        # float spacings of t, or of the step where t is near 0 (a piece on its own clock)
        resolution = self.ulps * jnp.maximum(
            jnp.spacing(jnp.maximum(jnp.abs(state.lower), jnp.abs(state.upper))),
            jnp.finfo(width.dtype).eps * state.width,
        )
        done = (jnp.abs(state.error) <= self.atol) | (width <= resolution)
        # g was NaN/inf inside the bracket: no time to locate (`event_not_located`).
        broken = ~jnp.isfinite(state.error) & (state.side != 0)
        result = optx.RESULTS.where(
            broken, optx.RESULTS.nonlinear_divergence, optx.RESULTS.successful
        )
        return done | broken, result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}


def to_diffrax_event(event, loss_fn, rtol: float = 1e-12, atol: float = 1e-10):
    """Turn saddlejax events (one, or a tuple/list of them) into a `diffrax.Event`.

    A `diffrax.Event` is passed through unchanged. The event time is located on the solver's
    dense output within the step that brackets the sign change (`ResolvedBracket`): it stops
    when |g| ≤ `atol`, or when t is resolved to `RESOLUTION_ULPS` float spacings (late events,
    t ≳ 10⁶). The
    saddlejax conditions g are relative (‖θ‖/r − 1, (L − level)/|level|), so `atol` = 1e−10 is
    a relative accuracy.
    """
    if event is None or isinstance(event, diffrax.Event):
        return event
    check_event(event)
    events = _events(event)

    def make(e):
        def cond(t, y, args, **kwargs):
            g = e(y, loss_fn)
            if not jnp.issubdtype(jnp.result_type(g), jnp.floating):
                return g
            # The value g; derivative 1 in t and 0 in everything else, so diffrax's implicit
            # differentiation of its root find gives the event time no derivative (it is
            # differentiated exactly by `differentiable_event_time`) and the state at the event
            # keeps its derivative at fixed t.
            return jax.lax.stop_gradient(g) + (t - jax.lax.stop_gradient(t))

        return cond

    cond = tuple(make(e) for e in events)
    cond = cond[0] if len(cond) == 1 else cond
    return diffrax.Event(cond, root_finder=ResolvedBracket(rtol=rtol, atol=atol))


def armed_event(event: diffrax.Event) -> diffrax.Event:
    """`event` that fires only while the solve's `args` is True: the solve after the event runs
    the same program with `args` False, so both solves of a `stop_at_event=False` flow share
    one compile."""

    def gate(cond):
        def gated(t, y, args, **kwargs):
            g = cond(t, y, None, **kwargs)
            if jnp.issubdtype(jnp.result_type(g), jnp.floating):
                return jnp.where(args, g, jnp.ones_like(g))  # a constant sign: no crossing
            return args & g

        return gated

    return map_conditions(event, gate)


def _events(event) -> tuple:
    return tuple(event) if isinstance(event, list | tuple) else (event,)


def differentiable_event_time(event, loss_fn, t_star, y_star, event_mask):
    """The event time t* with its derivative by the implicit function theorem at the event.

    g(θ(t*; p), p) = 0 gives dt*/dp = −(∂ₚg + ∇g·∂θ(t*)/∂p) / (∇g·θ̇), θ̇ = −∇L(θ(t*)): the
    derivative of the exact event time of the flow, not of the root finder's iterations nor of
    the step sequence (only ∂θ(t*)/∂p at fixed t, from the solve). `y_star` is the state at
    `t_star` (derivative at fixed t), `event_mask` diffrax's mask of which event fired. Boolean
    events (`CriticalPoint`) and tangential crossings (∇g·θ̇ = 0) get no derivative.
    **Returns:** t* (value unchanged) and the state at the event with its total derivative
    ∂θ/∂p + θ̇·dt*/dp.
    """
    events = _events(event)
    masks = jax.tree_util.tree_leaves(event_mask)
    grad = jax.lax.stop_gradient(jax.grad(loss_fn)(y_star))
    velocity = jax.tree_util.tree_map(jnp.negative, grad)
    shift = jnp.zeros_like(t_star)
    for e, fired in zip(events, masks):
        g, rate = jax.jvp(lambda y: e(y, loss_fn), (y_star,), (velocity,))
        if not jnp.issubdtype(jnp.result_type(g), jnp.floating):
            continue
        rate = jax.lax.stop_gradient(rate)
        usable = fired & jnp.isfinite(rate) & (rate != 0)
        step = (g - jax.lax.stop_gradient(g)) / jnp.where(usable, rate, 1.0)
        shift = shift - jnp.where(usable, step, 0.0)
    t_event = jax.lax.stop_gradient(t_star) + shift
    y_event = jax.tree_util.tree_map(lambda y, v: y + v * shift, y_star, velocity)
    return t_event, y_event


def check_event(event) -> None:
    """A ValueError unless `event` is None, a flow event, a tuple/list of them or a
    `diffrax.Event`."""
    if event is None or isinstance(event, diffrax.Event):
        return
    if isinstance(event, list | tuple) and not event:
        raise ValueError(
            f"`event` = {event!r} holds no event: pass None for none, or one or more of "
            "`EscapeRadius`, `LossBelow`."
        )
    for e in tuple(event) if isinstance(event, list | tuple) else (event,):
        if not isinstance(e, AbstractFlowEvent):
            raise ValueError(
                "`event` must be an `EscapeRadius`, a `LossBelow`, a tuple of them, or a "
                f"`diffrax.Event`; got {type(e).__name__}."
            )
