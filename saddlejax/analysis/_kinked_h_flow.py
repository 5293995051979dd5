"""The H-flow of a Taylor term with ReLU kinks, integrated exactly by `sliding_flow`: its
blow-up time and direction, and its state at a given time (the part a chain carries).

Why not `blowup_time`: its Dopri8 on the sphere chatters across the kinks at the H-flows'
tolerance (1e−11) until its step limit, and at a relaxed one (1e−5) it passes them with its
blow-up direction off by ~1e−4. The part transverse to the direction, which a chain carries to
the next saddle, then takes an error that grows ∝ ‖θ‖ as the flow blows up. The sliding
(Filippov) flow in t is exact to its `rtol`, to radii of 1e9·‖θ̃‖ in a few hundred steps.
"""

import math

import jax.numpy as jnp
import numpy as np

from .._results import RESULTS
from ..flow import LossBelow, sliding_flow
from ..theory import escape_speed
from ..theory._h_flow import BlowupTime

# The blow-up is located at ‖θ‖ = 1e8·‖θ̃‖ and the tail r^{−(k−2)}/((k−2)s) added: there the
# direction θ/‖θ‖ has aligned to ~‖c‖/‖θ‖ (c the transverse part, O(‖θ̃‖)) and the tail is a
# fraction ~1e−8 of T. `rtol` 1e−12: the transverse part is O(‖θ̃‖) while ‖θ‖ grows.
BLOWUP_RADIUS = 1e8
RTOL = 1e-12
# A flow that has not reached that radius by this many times the blow-up time of θ̃ along the
# optimal direction does not blow up (it settled where H ≥ 0, or crawls towards a slower escape).
HORIZON = 1e4
MAX_EVENTS = 20_000


def kinked_blowup_time(H, theta0, order: int, speed: float) -> BlowupTime:
    """`blowup_time` for a k-homogeneous H with ReLU kinks (module docstring): the sliding flow
    from θ̃ (a flat array) until H ≤ −(s/k)·(1e8·‖θ̃‖)^k, s = `speed` (the optimal escape
    speed: a level, not a radius, so it needs no direction), plus the analytic tail. Its
    `result` is `no_blowup` if that level is not reached by `HORIZON` times
    ‖θ̃‖^{−(k−2)}/((k−2)s), or the sliding flow's failure."""
    k = order
    theta0 = jnp.asarray(theta0)
    norm0 = float(jnp.linalg.norm(theta0))
    level = -(speed / k) * (BLOWUP_RADIUS * norm0) ** k
    t1 = HORIZON * norm0 ** (-(k - 2)) / ((k - 2) * speed)
    sol = sliding_flow(H, theta0, t1, rtol=RTOL, event=LossBelow(level), saveat=[0.0],
                       max_events=MAX_EVENTS)
    steps = {"num_steps": sol.stats["num_steps"], "sigma": jnp.asarray(math.nan)}
    fired = bool(jnp.isfinite(sol.event_time))
    if sol.result != RESULTS.successful or not fired:
        result = sol.result if sol.result != RESULTS.successful else RESULTS.no_blowup
        return BlowupTime(jnp.asarray(math.inf), jnp.asarray(math.nan), theta0 / norm0,
                          jnp.asarray(math.nan), result, steps)
    end = jnp.asarray(sol.final_params)
    r = jnp.linalg.norm(end)
    direction = end / r
    s = escape_speed(H, k, direction)
    tail = r ** (-(k - 2)) / ((k - 2) * s)
    return BlowupTime(sol.event_time + tail, s, direction, tail, RESULTS.successful, steps)


def kinked_h_flow_at(H, theta0, t: float) -> np.ndarray | None:
    """The H-flow from θ̃ (a flat array) at time t, exact along kinks; None if it fails."""
    sol = sliding_flow(H, jnp.asarray(theta0), t, rtol=RTOL, saveat=[t],
                       max_events=MAX_EVENTS)
    return np.asarray(sol.final_params) if sol.result == RESULTS.successful else None
