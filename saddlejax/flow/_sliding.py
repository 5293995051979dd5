"""Gradient flow of a ReLU net that slides along kinks: the Filippov flow, piece by piece.

Where a unit's pre-activation z_s(θ) = 0 is approached from both sides (the flows of the two
smooth pieces both point at the surface), gradient flow has no classical solution. Its
Filippov solution (Filippov 1988, §2.4; the limit of the smoothed nets' flows as ε → 0,
`DeepReLU(smoothing=)`) slides along the surface with the velocity
v = −(g − Nᵀμ), μ = (NNᵀ)⁺Ng, the projection of either piece's gradient g on the tangent space
of the active surfaces (rows of N = ∂z_S/∂θ): the pieces' gradients differ by c_s∇z_s there,
so the projection is the same from every side. For one surface this is the minimum-norm
element of the Clarke subdifferential, the velocity of the subgradient flow.

The flow is integrated on one smooth piece at a time (each `leaky_relu` on a fixed branch, so
the solver never steps across a kink); a kink reached is an event, located on the dense output.
There the Filippov weights λ_s = σ_s − μ_s/c_s of the active set S ∪ {s} decide (σ_s: the
branch of the piece, c_s: the jump of ∂L/∂z_s): all in (0, 1), the flow slides along s;
otherwise it crosses. A sliding kink whose weight leaves (0, 1) is released, to the side the
weight says. Diffrax's solvers do the integration; what they lack is the switching between
pieces and the sliding velocity, which is what this module adds.
"""

import collections
import functools as ft
import math
import time
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

from .._results import RESULTS
from .._trainable import split_trainable
from .._validate import check_real
from ..nn._kink_surfaces import kink_values, on_piece
from ..nn._smoothing import with_smoothing
from ..solvers import AutoStiff
from ..solvers._base import fill_tolerances
from ._events import ResolvedBracket, _events, check_event
from ._flow import gradient_flow
from ._options import check_t1, default_save_times
from ._solution import FlowSolution

# A Filippov weight within this of 0 or 1 is on the boundary: the kink is released (or not
# taken up), so that a weight that grazes the boundary does not switch back and forth.
WEIGHT_MARGIN = 1e-9
# Kinks with |z_s| below this fraction of their size Σ_i |θ_i ∂z_s/∂θ_i| are "at" their surface
# when a piece starts: their branch is the side the flow moves to.
AT_KINK_RTOL = 1e-10
# ... and no less than this fraction of ‖∇z_s‖·‖θ‖ (a size of 0: z_s = θ_0 at θ_0 = 0).
SIZE_FLOOR = 1e-8
# A kink whose jump |c_s|·‖∇z_s‖ is below this fraction of ‖∇L‖ cannot change the flow (a unit
# with no outgoing weight): it is not watched while it sits at its surface.
VISIBLE_RTOL = 1e-12
# The flow stops as switching too densely (`kink_events_dense`) where, at the rate of its last
# DENSE_WINDOW kink events, reaching t1 would take DENSE_FACTOR × the events it has left.
DENSE_WINDOW = 1000
DENSE_FACTOR = 100
# `progress=True` prints a line at most this often.
PROGRESS_SECONDS = 5.0


class _Piece(eqx.Module):
    """One smooth segment: the active (sliding) kinks `index`[`active`], each kink's branch
    `pattern`, and the crossing condition (sign·z + offset)/unit > 0 on the `watch`ed kinks
    (relative to each kink's size where the piece starts: a root find's absolute tolerance
    then means the same at every scale of θ, and for every layer)."""

    index: Array
    active: Array
    pattern: Array
    sign: Array
    offset: Array
    unit: Array
    watch: Array


class _Sliding(eqx.Module):
    """The Filippov vector field on flat parameters y (module docstring)."""

    objective: Callable
    static: PyTree
    unravel: Callable = eqx.field(static=True)

    def loss(self, y):
        return self.objective(eqx.combine(self.unravel(y), self.static))

    def kinks(self, y, pattern=None):
        return kink_values(self.loss, y, pattern)

    def parts(self, y, piece: _Piece, t=0.0):
        """(z, v, λ, L, ∇L, c, δ): the kinks, the sliding velocity, the active kinks' Filippov
        weights (0.5 in the padding), the loss, its gradient, the jumps, and the Gauss–Newton
        step δ whose removal puts y on the active surfaces, on the piece."""
        z, z_vjp = jax.vjp(lambda y: self.kinks(y, piece.pattern), y)
        rows = jax.nn.one_hot(piece.index, z.size, dtype=y.dtype) * piece.active[:, None]
        normals = jax.vmap(lambda e: z_vjp(e)[0])(rows)
        zero = jnp.zeros(z.size, y.dtype)
        loss, (g, jump) = jax.value_and_grad(
            lambda y, e: on_piece(self.loss, y, piece.pattern, e), argnums=(0, 1)
        )(y, zero)
        # unit normals: kinks of units of very different sizes (at small α, ‖∇z_s‖ spans
        # orders of magnitude) would otherwise fall below the pseudo-inverse's cut-off
        size = jnp.linalg.norm(normals, axis=1)
        scale = jnp.where(size > 0, 1.0 / jnp.where(size > 0, size, 1.0), 0.0)
        units = normals * scale[:, None]
        gram = units @ units.T + jnp.diag(~piece.active).astype(y.dtype)
        inverse = jnp.linalg.pinv(gram, rtol=1e-10, hermitian=True)
        weight = jnp.where(piece.active, inverse @ (units @ g), 0.0)
        mu = scale * weight
        tangent = g - units.T @ weight
        # back onto the active surfaces (scale·z: the distance to each), against the drift of
        # the integration error, at unit rate at the piece's start and never slower than the
        # flow moves (‖v‖/‖θ‖), but no faster than 1/(1 + t) after t on the piece: on the
        # plateau of a small α (t ~ 1e7) a unit rate would hold the steps to ~60
        distance = jnp.where(piece.active, scale * z[piece.index], 0.0)
        step = units.T @ (inverse @ distance)  # the Gauss–Newton step onto the surfaces
        rate = jnp.maximum(
            jnp.linalg.norm(tangent) / jnp.maximum(jnp.linalg.norm(y), jnp.finfo(y.dtype).tiny),
            1.0 / (1.0 + t),
        )
        v = -(tangent + rate * step)
        c = jump[piece.index]
        side = piece.pattern[piece.index].astype(y.dtype)
        lam = jnp.where(piece.active, side - mu / jnp.where(c == 0, 1.0, c), 0.5)
        lam = jnp.where(piece.active & (c == 0), jnp.inf, lam)
        return z, v, lam, loss, g, jump, step

    def __call__(self, t, y, piece):
        return self.parts(y, piece, t)[1]


def _kink_condition(t, y, args, *, field, **kwargs):
    """> 0 inside the piece: min over watched kinks of sign·z + offset, and over sliding kinks
    of the distance of λ to {0, 1}."""
    piece = args
    z, _, lam, *_ = field.parts(y, piece, t)
    gap = (piece.sign * z + piece.offset) / piece.unit
    cross = jnp.min(jnp.where(piece.watch, gap, jnp.inf))
    slide = jnp.min(jnp.where(piece.active, jnp.minimum(lam, 1.0 - lam) - WEIGHT_MARGIN, jnp.inf))
    return jnp.minimum(jnp.minimum(cross, slide), jnp.finfo(y.dtype).max)


def _user_condition(e, field):
    """A saddlejax event on the sliding flow: its loss is L on the piece, and its gradient the
    sliding velocity's negative (so that `CriticalPoint` sees the Clarke stationarity)."""
    def cond(t, y, args, **kwargs):
        _, v, _, loss, *_ = field.parts(y, args, t)
        stop = jax.lax.stop_gradient

        def loss_fn(x):
            return stop(loss) + jnp.dot(stop(-v), x - stop(x))

        g = e(y, loss_fn)
        if not jnp.issubdtype(jnp.result_type(g), jnp.floating):
            return g
        return stop(g) + (t - stop(t))

    return cond


@eqx.filter_jit
def _segment(field, solver, y, t1, ts, piece, rtol, atol, user_events, max_steps):
    """The flow on `piece` from y at 0 to the first kink event, or t1."""
    conds = tuple(_user_condition(e, field) for e in user_events)
    conds += (lambda t, y, args, **kw: _kink_condition(t, y, args, field=field),)
    event = diffrax.Event(conds, root_finder=ResolvedBracket(rtol=1e-12, atol=1e-12))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), solver, 0.0, t1, None, y, args=piece,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(subs=(diffrax.SubSaveAt(ts=jnp.clip(ts, 0.0, t1)),
                                    diffrax.SubSaveAt(t1=True))), event=event,
        max_steps=max_steps, throw=False,
    )
    fired = jnp.stack([jnp.asarray(m) for m in sol.event_mask]) if sol.event_mask else None
    stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
    (_, t_stop), (ys, y_stop) = sol.ts, sol.ys
    return t_stop[-1], y_stop[-1], ys, sol.result, fired, stats


@eqx.filter_jit
def _at(field, y, piece):
    """What a piece needs where it starts: z, ‖∇z_s‖ and the size Σ_i |θ_i ∂z_s/∂θ_i| per
    kink, ż along the sliding velocity, ‖∇L‖ and the jumps c_s."""
    z, v, _, _, g, jump, _ = field.parts(y, piece)
    kinks = ft.partial(field.kinks, pattern=piece.pattern)
    _, z_vjp = jax.vjp(kinks, y)
    grads = jax.vmap(lambda e: z_vjp(e)[0])(jnp.eye(z.size, dtype=y.dtype))
    zdot = jax.jvp(kinks, (y,), (v,))[1]
    norms, sizes = jnp.linalg.norm(grads, axis=1), jnp.abs(grads) @ jnp.abs(y)
    return z, norms, sizes, zdot, jnp.linalg.norm(g), jump


_parts = eqx.filter_jit(lambda field, y, piece: field.parts(y, piece))
_kinks = eqx.filter_jit(lambda field, y: field.kinks(y))


def _padded(S):
    """S's indices and mask, padded to the next power of two (at least 8): the arrays' shape,
    and so the cost of the sliding velocity (K VJPs and a K × K pseudo-inverse per evaluation)
    and the compilations, follow the number of kinks slid along."""
    width = max(8, 1 << max(len(S) - 1, 0).bit_length())
    index = np.zeros(width, np.int32)
    active = np.zeros(width, bool)
    index[: len(S)], active[: len(S)] = S, True
    return index, active


def _bare_piece(field, y, S) -> _Piece:
    """The piece of y's signs with active set S ({kink: branch}), the sliding kinks on their
    branches; no crossing condition (what the sliding velocity and the loss need)."""
    index, active = _padded(list(S))
    pattern = np.asarray(_kinks(field, y)) >= 0
    pattern[list(S)] = list(S.values())
    m = pattern.size
    return _Piece(jnp.asarray(index), jnp.asarray(active), jnp.asarray(pattern),
                  jnp.ones(m), jnp.zeros(m), jnp.ones(m), jnp.zeros(m, bool))


def _piece(field, y, S) -> tuple[_Piece, np.ndarray]:
    """The piece the flow enters at y with active set S ({kink: branch}): each kink on the
    branch of its sign, those at their surface on the branch the flow moves to, the sliding
    ones on the branch they were on when they were reached (where sliding kinks interact, in
    layers one after the other, their weights depend on it). Also returns λ of S."""
    first = _bare_piece(field, y, S)
    index, active, pattern = (np.asarray(a) for a in (first.index, first.active, first.pattern))
    z, norms, sizes, zdot, g_norm, jump = (np.asarray(a) for a in _at(field, y, first))
    # each kink's own scale: the sum of the sizes of the terms of z_s (a unit of weights ~α
    # has kinks ~α: it is at its surface only within α·AT_KINK_RTOL of it)
    y_norm = float(jnp.linalg.norm(y))
    floor = np.maximum(SIZE_FLOOR * norms * y_norm, np.finfo(z.dtype).tiny)
    scale = np.maximum(np.maximum(sizes, np.abs(z)), floor)
    at_kink = np.abs(z) <= AT_KINK_RTOL * scale
    pattern = np.where(at_kink & (zdot != 0), zdot > 0, pattern)
    pattern[list(S)] = list(S.values())  # again: the step above may have moved them
    sign = np.where(pattern, 1.0, -1.0)
    visible = np.abs(jump) * norms > VISIBLE_RTOL * g_norm
    watch = (norms > 0) & (~at_kink | visible)
    watch[list(S)] = False
    # the crossing tolerance on one scale for all kinks: where kinks meet (a unit and a unit it
    # feeds, on one sample), offsets of their own sizes change which is reached first
    overall = max(float(np.abs(z).max(initial=0.0)), float(norms.max(initial=0.0)) * y_norm)
    offset = np.maximum(0.0, -sign * z) + AT_KINK_RTOL * max(overall, np.finfo(z.dtype).tiny)
    unit = np.abs(z) + offset
    piece = _Piece(*(jnp.asarray(a) for a in (index, active, pattern, sign, offset, unit, watch)))
    return piece, np.asarray(_parts(field, y, piece)[2])[: len(S)]


def _onto(field, y, S):
    """y moved onto the surfaces of S ({kink: branch}) by a Gauss–Newton step (a kink is
    reached within its root find's tolerance)."""
    return y - _parts(field, y, _bare_piece(field, y, S))[6] if S else y


def _admissible(field, y, piece, S) -> bool:
    """Whether the flow slides along every kink of S from y (all Filippov weights in (0, 1)),
    on the piece it reached them in (whose branches say on which side of them it is)."""
    index, active = _padded(S)
    trial = eqx.tree_at(lambda p: (p.index, p.active), piece,
                        (jnp.asarray(index), jnp.asarray(active)))
    lam = np.asarray(_parts(field, y, trial)[2])[: len(S)]
    return bool(np.all((lam > WEIGHT_MARGIN) & (lam < 1.0 - WEIGHT_MARGIN)))


def sliding_flow(
    objective: Callable,
    params0: PyTree,
    t1: float,
    *,
    t0: float = 0.0,
    saveat=None,
    n_save: int = 256,
    rtol: float = 1e-8,
    atol: float | None = None,
    event=None,
    solver: diffrax.AbstractAdaptiveSolver | None = None,
    max_steps: int = 100_000,
    max_events: int = 100_000,
    max_active: int = 64,
    trainable=eqx.is_inexact_array,
    progress: bool = False,
    continue_smoothing: float | None = None,
) -> FlowSolution:
    """Gradient flow θ' ∈ −∂L(θ) of a net with ReLU kinks, sliding along the kinks it is held
    on (the Filippov solution; module docstring), from `params0` at `t0` to `t1`.

    Use it where `gradient_flow` crawls along a kink (a `max_steps_reached` or
    `step_size_underflow` failure on an exact ReLU net): it integrates each smooth piece with
    `solver` (default `AutoStiff()`: a unit held on a kink can make the flow along it stiff)
    and switches pieces at the kinks, located as events.

    **Arguments:** as `gradient_flow`'s where they share a name (`saveat`: save times in
    [t0, t1]; `n_save` evenly-and-geometrically spread saves otherwise; `rtol`: from a
    tiny init α·θ̃, below α for the escapes after the first, whose plateaus' lengths are set
    by a part of size ~α that an error control of rtol·|θ| would swamp once θ = O(1); `atol`
    default rtol·RMS(θ₀); `event`: saddlejax events, which stop the flow, `CriticalPoint` testing
    the sliding velocity; `trainable`: the filter of the parameters); `max_steps`: solver
    steps (per smooth piece, and checked in all between pieces); `max_events`: kink events in
    all; `max_active`: the most kinks slid along at once (the cost of an evaluation follows
    the number slid along, not this cap); `progress`: print a line (t, L,
    events, kinks slid along) every `PROGRESS_SECONDS`; `continue_smoothing`: ε > 0 to go on
    past a stop on dense kink switching (`kink_events_dense`) with `gradient_flow` of the same
    weights at kink smoothing ε (`nn.with_smoothing`; `params0` must then be a `DeepReLU` or a
    ReLU `TwoLayer`), to `t1` or the event, at `rtol` and `atol` (None: rtol·RMS(θ) where it
    takes over): the smoothed flow is within O(ε) of the sliding one (`DeepReLU`'s
    `smoothing`), and passes the corners of many kinks where the Filippov weights are
    ill-conditioned. Default None: stop there, a failure.

    **Returns:** a `FlowSolution`. `grad_norm` is ‖v‖, the sliding velocity's norm (‖∇L‖
    off the kinks): the Clarke stationarity measure. `stats` adds `kink_crossings`,
    `slides_started`, `slides_ended`, `max_active` (the largest active set) and
    `active_at_stop` (the kinks slid along where the flow stopped; 0 after a continuation)
    and `smoothed_from` (the time the smoothed flow took over; +inf if it did not), after
    which the saves are the smoothed net's (`grad_norm`: ‖∇L_ε‖). A run that
    used up `max_steps`, `max_events` or `max_active`, or whose kink events came too densely
    to reach `t1` within `max_events` (`kink_events_dense`: `DENSE_WINDOW`,
    `DENSE_FACTOR`), is a failure with its reason.
    """
    t0 = float(check_real("t0", t0))
    t1 = check_t1(t0, t1)
    rtol = float(check_real("rtol", rtol, low=0.0, low_open=True))
    for name, value in (("max_steps", max_steps), ("max_events", max_events),
                        ("max_active", max_active)):
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if event is not None:
        check_event(event)
    if continue_smoothing is not None:
        continue_smoothing = check_real("continue_smoothing", continue_smoothing, low=0.0,
                                        high=1.0, low_open=True)
        with_smoothing(params0, continue_smoothing)  # a ReLU net, or a clear error now
    user_events = tuple(_events(event)) if event is not None else ()
    state, static = split_trainable(params0, trainable)
    y, unravel = ravel_pytree(state)
    field = _Sliding(objective, static, unravel)
    if _kinks(field, y).size == 0:
        raise ValueError(
            "`objective` has no `leaky_relu` kinks (saddlejax's `relu`/`leaky_relu`, as in "
            "`DeepReLU`): use `gradient_flow`."
        )
    given_atol = atol  # the continuation's default is its own start's
    if atol is None:
        atol = rtol * float(jnp.sqrt(jnp.mean(y**2)))
    atol = float(check_real("atol", atol, low=0.0, low_open=True))
    ts = default_save_times(t0, t1, n_save) if saveat is None else np.asarray(saveat, float)
    if np.any(np.diff(ts) < 0) or ts[0] < t0 or ts[-1] > t1:
        raise ValueError(f"`saveat` times must be non-decreasing and lie in [{t0}, {t1}].")
    solver = fill_tolerances(AutoStiff() if solver is None else solver, rtol, atol)

    saved = np.full((ts.size, y.size), np.inf)
    done = np.zeros(ts.size, bool)
    held = [{}] * ts.size  # the kinks slid along at each save, with their branches
    S: dict[int, bool] = {}
    t, steps = t0, dict(num_steps=0, num_accepted_steps=0, num_rejected_steps=0)
    counts = dict(kink_crossings=0, slides_started=0, slides_ended=0, max_active=0)
    result, event_time, event_mask = RESULTS.successful, math.inf, None
    shown, window = time.perf_counter(), collections.deque(maxlen=DENSE_WINDOW)
    for n_events in range(max_events + 1):
        if progress and time.perf_counter() - shown > PROGRESS_SECONDS:
            shown = time.perf_counter()
            print(f"  sliding flow: t = {t:.6g} / {t1:.6g}, L = {float(field.loss(y)):.8g}, "
                  f"{n_events} kink events, {len(S)} kinks slid along", flush=True)
        y = _onto(field, y, S)
        while True:  # kinks whose sliding is no longer admissible leave before the piece starts
            piece, lam = _piece(field, y, S)
            margin = np.minimum(lam, 1.0 - lam)
            if not S or margin.min() > WEIGHT_MARGIN:
                break
            S.pop(list(S)[int(np.argmin(margin))])
            counts["slides_ended"] += 1
        # Each piece on its own clock, from 0: at t ≈ 1e7 (a plateau of a small α) one float
        # spacing of t is 2e-9, in which a drop moves a kink by more than its root-find tolerance.
        t_stop, y_stop, ys, code, fired, stats = _segment(
            field, solver, y, jnp.asarray(t1 - t), jnp.asarray(ts - t), piece,
            jnp.asarray(rtol), jnp.asarray(atol), user_events, max_steps,
        )
        for key in steps:
            steps[key] += int(stats[key])
        here = ~done & (ts - t <= float(t_stop))  # (times rounded to before t: saved at t)
        saved[here] = np.asarray(ys)[here]
        done |= here
        for i in np.flatnonzero(here):
            held[i] = dict(S)
        y = y_stop
        if code == diffrax.RESULTS.successful:
            t = t1
            break
        t = t + float(t_stop)
        if code != diffrax.RESULTS.event_occurred:
            result = RESULTS.promote(code)
            break
        if steps["num_steps"] >= max_steps:
            result = RESULTS.max_steps_reached
            break
        fired = np.asarray(fired)
        if fired[:-1].any():  # a user event: the flow stops there
            event_time, event_mask = t, tuple(bool(f) for f in fired[:-1])
            break
        window.append(t)
        if len(window) == DENSE_WINDOW and (t1 - t) * DENSE_WINDOW > (
            DENSE_FACTOR * (max_events - n_events) * (t - window[0])
        ):
            result = RESULTS.kink_events_dense
            break
        z, _, lam = (np.asarray(a) for a in _parts(field, y, piece)[:3])
        gap = np.where(np.asarray(piece.watch), (np.asarray(piece.sign) * z
                       + np.asarray(piece.offset)) / np.asarray(piece.unit), np.inf)
        margin = np.minimum(lam, 1.0 - lam)[: len(S)] - WEIGHT_MARGIN
        if S and margin.min() <= gap.min():  # a sliding kink's weight reached 0 or 1
            S.pop(list(S)[int(np.argmin(margin))])
            counts["slides_ended"] += 1
            continue
        reached = np.flatnonzero(gap <= gap.min() + 1e-12)
        for s in reached:
            if len(S) < max_active and _admissible(field, y, piece, [*S, int(s)]):
                S[int(s)] = bool(piece.pattern[s])
                counts["slides_started"] += 1
            else:
                counts["kink_crossings"] += 1
        counts["max_active"] = max(counts["max_active"], len(S))
        if len(S) == max_active:
            result = RESULTS.max_active_kinks
            break
    else:
        result = RESULTS.max_kink_events
    sol = _solution(field, ts, saved, held, S, t, y, event_time, event_mask, result, steps,
                    counts, rtol, atol, static)
    if result == RESULTS.kink_events_dense and continue_smoothing is not None:
        return _smoothed_continuation(objective, sol, ts, t1, continue_smoothing, event, rtol,
                                      given_atol, max_steps, trainable)
    return sol


def _smoothed_continuation(objective, sol, ts, t1, smoothing, event, rtol, atol, max_steps,
                           trainable) -> FlowSolution:
    """`sol`, stopped on dense kink switching, continued to `t1` (or the event) by
    `gradient_flow` of its weights at kink smoothing `smoothing` (`atol` None: rtol·RMS(θ)
    where it takes over; the start's, from a tiny init, would stall it on the O(1) part): the
    saves after its stop, the smoothed flow's result and end; the model (`static`) stays the
    exact one."""
    t = float(sol.stop_time)
    done = ts <= t
    rest = ts[~done]
    smooth = gradient_flow(
        objective, with_smoothing(sol.final_params, smoothing), t1, t0=t,
        saveat=rest if rest.size else np.array([t1]), rtol=rtol, atol=atol, event=event,
        stop_at_event=True, throw=False, max_steps=max_steps, trainable=trainable,
    )
    n = rest.size
    # ε is a static field, in the trees' structure: the smoothed flow's trees are made exact
    params, stop_state = (with_smoothing(a, 0.0) for a in (smooth.params, smooth.stop_state))

    def joined(a, b):
        return jnp.concatenate([jnp.asarray(a)[done], jnp.asarray(b)[:n]])

    stats = dict(sol.stats)
    for key in ("num_steps", "num_accepted_steps", "num_rejected_steps"):
        stats[key] = stats[key] + smooth.stats[key]
    stats["smoothed_from"] = jnp.asarray(t)
    stats["active_at_stop"] = jnp.asarray(0)  # the smoothed flow slides along none
    return FlowSolution(
        ts=jnp.asarray(ts), params=jax.tree.map(joined, sol.params, params),
        loss=joined(sol.loss, smooth.loss), grad_norm=joined(sol.grad_norm, smooth.grad_norm),
        norm=joined(sol.norm, smooth.norm), event_time=smooth.event_time,
        event_mask=smooth.event_mask, stop_time=smooth.stop_time, stop_state=stop_state,
        steps=None, stats=stats, result=smooth.result, static=sol.static,
    )


def _solution(field, ts, saved, held, S, t, y, event_time, event_mask, result, steps, counts,
              rtol, atol, static) -> FlowSolution:
    """The `FlowSolution` of a sliding flow: L, ‖v‖ (on the piece the flow is in) and ‖θ‖ at
    the saves it reached, +inf at the others."""
    reached = np.all(np.isfinite(saved), axis=1)
    loss, speed = np.full(ts.size, np.inf), np.full(ts.size, np.inf)
    for i in np.flatnonzero(reached):
        x = jnp.asarray(saved[i])
        _, v, _, value, *_ = _parts(field, x, _bare_piece(field, x, held[i]))
        loss[i], speed[i] = float(value), float(jnp.linalg.norm(v))
    norm = np.where(reached, np.linalg.norm(np.where(reached[:, None], saved, 0.0), axis=1),
                    np.inf)
    params = jax.vmap(field.unravel)(jnp.asarray(saved))
    stats = {k: jnp.asarray(v) for k, v in {**steps, **counts}.items()}
    stats["active_at_stop"] = jnp.asarray(len(S))
    stats["smoothed_from"] = jnp.asarray(math.inf)  # set by `_smoothed_continuation`
    stats.update(rtol=jnp.asarray(rtol), atol=jnp.asarray(atol))
    return FlowSolution(
        ts=jnp.asarray(ts), params=params, loss=jnp.asarray(loss), grad_norm=jnp.asarray(speed),
        norm=jnp.asarray(norm), event_time=jnp.asarray(event_time),
        event_mask=event_mask, stop_time=jnp.asarray(t), stop_state=field.unravel(y),
        steps=None, stats=stats, result=result, static=static,
    )
