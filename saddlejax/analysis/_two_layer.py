"""Diagnostics of two-layer and separable networks from small initialisation: Chen–Luo–Wang's
K, K′, q_max and relative Wasserstein distance with their stage times (SPEC §10), and Kumar &
Haupt's directional convergence of the neurons to KKT points of the NCF (SPEC §6).

The functions on networks are pure and batched over leading axes of the parameter arrays, so one
call covers a model, a saved trajectory (`sol.params`, leading time axis) or a sweep.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._tree import safe_sqrt
from ..flow._solution import FlowSolution
from ..nn._squared_relu import SquaredReLU
from ..nn._two_layer import TwoLayer
from ..problems._objectives import SquareLoss
from ..theory._ncf import NCFKKTPoints, ncf_kkt_points, neuron_ncf, residual_ncf
from ._crossings import first_crossing
from ._plateaus import LossStaircase, detect_plateaus


def _safe_norm(v: Array, axis: int = -1) -> Array:
    return safe_sqrt(jnp.sum(v**2, axis=axis))


def _two_layer_arrays(net) -> tuple[Array, Array]:
    """(a, w) of a `TwoLayer` with common leading batch axes: a (*batch, m, out), w (*batch, m, d).

    A leaf without the batch axes of the other (e.g. a frozen layer of a saved trajectory) is
    broadcast."""
    if not isinstance(net, TwoLayer):
        raise ValueError(
            f"expected a `saddlejax.nn.TwoLayer` (a model, or `sol.params` of a trajectory), got "
            f"{type(net).__name__}."
        )
    a, w = jnp.asarray(net.a), jnp.asarray(net.w)
    if a.ndim < 2 or w.ndim < 2 or a.shape[-1] != w.shape[-2]:
        raise ValueError(
            "a `TwoLayer`'s `a` must have shape (*batch, out_size, m) and `w` shape "
            f"(*batch, m, d) with one m; got {a.shape} and {w.shape}."
        )
    try:
        batch = jnp.broadcast_shapes(a.shape[:-2], w.shape[:-2])
    except ValueError:
        raise ValueError(
            f"the leading (batch) axes of `a` {a.shape[:-2]} and `w` {w.shape[:-2]} differ; "
            "pass one model or one stacked trajectory."
        ) from None
    a = jnp.broadcast_to(jnp.swapaxes(a, -1, -2), batch + a.shape[-1:] + a.shape[-2:-1])
    return a, jnp.broadcast_to(w, batch + w.shape[-2:])


# ---------------------------------------------------------------------------------------------
# Chen–Luo–Wang (SPEC §10)
# ---------------------------------------------------------------------------------------------


class CLWDiagnostics(eqx.Module):
    """Chen–Luo–Wang's macroscopic quantities of f(x) = Σ_k a_k σ(w_kᵀx) (SPEC §10).

    Every field has the leading (batch) axes of the network's arrays (none for one model, the
    time axis for `sol.params`).

    **Fields:**

    - `K`: Σ_k a_k w_k¹ (their Eq. 17), with w_k¹ = ⟨w_k, e⟩ the component along the
        condensation direction e (e_1 in their normalisation).
    - `K_prime`: Σ_k (a_k² + (w_k¹)²) (Eq. 18).
    - `q_max`: max_{k,i} (|a_k|, |w_k^i|), the neuron-wise L^∞ norm (Eq. 11; all coordinates
        i of w_k, not only the one along e).
    - `wasserstein`: the relative Wasserstein distance W_2(ρ_{|a|}, ρ_{‖w‖}) / W_2(ρ_{|a|}, δ_0)
        between the empirical distributions ρ_{|a|} = (1/m)Σ_k δ_{|a_k|} and ρ_{‖w‖} =
        (1/m)Σ_k δ_{‖w_k‖} (Eq. 13, Fig. 1(c), Corollaries 1 and 4; the denominator, written
        ‖ρ_{|a|}‖_2 in Fig. 1, is the root mean square of |a_k|). NaN when all a_k = 0.
    - `norm_a`, `norm_w`: ‖a‖ = (Σ_k a_k²)^{1/2} and ‖w‖ = (Σ_k ‖w_k‖²)^{1/2} (Fig. 1(b)).
    """

    K: Float[Array, "*batch"]
    K_prime: Float[Array, "*batch"]
    q_max: Float[Array, "*batch"]
    wasserstein: Float[Array, "*batch"]
    norm_a: Float[Array, "*batch"]
    norm_w: Float[Array, "*batch"]


def wasserstein_1d(
    p: Float[Array, "*batch m"], q: Float[Array, "*batch m"]
) -> Float[Array, "*batch"]:
    """W_2 between the empirical distributions (1/m)Σ_k δ_{p_k} and (1/m)Σ_k δ_{q_k} on R.

    On the real line the monotone coupling, which matches the sorted samples, is optimal for the
    cost |s − t|² (SPEC §10: "1-D optimal transport = sorted matching"), so
    W_2² = (1/m) Σ_k (p_(k) − q_(k))² with p_(1) ≤ … ≤ p_(m). Batched over leading axes.
    """
    p, q = jnp.asarray(p), jnp.asarray(q)
    if p.ndim < 1 or p.shape != q.shape:
        raise ValueError(
            f"`p` and `q` must be samples of one size m (last axis), got shapes {p.shape} and "
            f"{q.shape}."
        )
    return _sorted_gap(p, q)


@jax.jit
def _sorted_gap(p: Array, q: Array) -> Array:
    diff = jnp.sort(p, axis=-1) - jnp.sort(q, axis=-1)
    return _safe_norm(diff) / math.sqrt(p.shape[-1])


@eqx.filter_jit
def clw_diagnostics(
    net: TwoLayer, *, direction: Float[ArrayLike, " d"] | None = None
) -> CLWDiagnostics:
    """K, K′, q_max and the relative Wasserstein distance of a two-layer network (SPEC §10).

    Chen, Luo & Wang, *On Multi-Stage Loss Dynamics in Neural Networks*: K = Σ_k a_k w_k¹ (Eq. 17)
    follows dK/dt ≈ 2K(1 − K) (Eq. 19) through the initial descent to the critical value K = 1;
    K′ = Σ_k (a_k² + (w_k¹)²) (Eq. 18) measures the condensed weights (K′ ≈ 2K once a_k ≈ w_k¹);
    q_max (Eq. 11) bounds the higher-order terms (Lemma 1); the relative W_2 distance between
    ρ_{|a|} and ρ_{‖w‖} (Eq. 13, Fig. 1(c)) vanishes as the two layers' amplitude distributions
    merge (Corollaries 1, 4). See `CLWDiagnostics` for the exact definitions.

    **Arguments:**

    - `net`: a `saddlejax.nn.TwoLayer` with one output, or the saved parameters of a trajectory
        (`sol.params`, a `TwoLayer` whose arrays carry a leading time axis; any leading axes are
        batch axes).
    - `direction`: the condensation direction e ∈ R^d that defines w_k¹ = ⟨w_k, e/‖e‖⟩; default
        e_1, as in the paper, whose data satisfy ∫ f(x) x ρ(dx) = e_1 (Assumption 2). For other
        data pass `clw_scales(objective).direction`. Must be non-zero.

    **Returns:** a `CLWDiagnostics` with the network's leading axes.

    **Example:**

    ```python
    sol = saddlejax.gradient_flow(clw_problem("tanh"), net, 20.0)
    diag = clw_diagnostics(sol.params)  # diag.K[i] at sol.ts[i]
    ```
    """
    a, w = _two_layer_arrays(net)
    if a.shape[-1] != 1:
        raise ValueError(
            f"Chen–Luo–Wang's diagnostics are for scalar outputs; got out_size {a.shape[-1]}. "
            "Pass a `TwoLayer` with `out_size=1`."
        )
    a = a[..., 0]
    d = w.shape[-1]
    if direction is None:
        e = jnp.zeros(d, w.dtype).at[0].set(1.0)
    else:
        e = jnp.asarray(direction, dtype=w.dtype)
        if e.shape != (d,):
            raise ValueError(
                f"`direction` must be a vector of the input dimension d = {d}, got shape {e.shape}."
            )
        e = e / _safe_norm(e)
    w1 = w @ e
    neuron_norms = _safe_norm(w)
    rms_a = _safe_norm(a) / math.sqrt(a.shape[-1])
    w2 = _sorted_gap(jnp.abs(a), neuron_norms)
    positive = rms_a > 0
    return CLWDiagnostics(
        K=jnp.sum(a * w1, axis=-1),
        K_prime=jnp.sum(a**2 + w1**2, axis=-1),
        q_max=jnp.maximum(jnp.max(jnp.abs(a), axis=-1), jnp.max(jnp.abs(w), axis=(-2, -1))),
        wasserstein=jnp.where(positive, w2 / jnp.where(positive, rms_a, 1.0), jnp.nan),
        norm_a=_safe_norm(a),
        norm_w=_safe_norm(neuron_norms),
    )


class CLWScales(NamedTuple):
    """The constants that map a data set to Chen–Luo–Wang's normalisation (see `clw_scales`)."""

    rate: Array
    k_star: Array
    direction: Array


def clw_scales(objective: SquareLoss) -> CLWScales:
    """The growth rate, the critical K and the condensation direction of a square loss (SPEC §10).

    Chen–Luo–Wang normalise the data so that ∫ x_i x_j ρ = δ_ij (Assumption 1) and
    ∫ f(x) x ρ = e_1 (Assumption 2); their times and the critical value K = 1 are in those units.
    For a `SquareLoss` L(θ) = c Σ_i (f_θ(x_i) − y_i)² and the linearised model f = Σ_k a_k w_kᵀx:
    L ≈ L(0) − bᵀv + ½ vᵀCv with v = Σ_k a_k w_k, b = Σ_i ỹ_i x_i (ỹ = −∂L/∂f at f = 0) and
    C = 2c Σ_i x_i x_iᵀ. The linear stage (their Eq. 15) grows like e^{‖b‖t}, so their times
    become times/`rate` with `rate` = ‖b‖; along `direction` e = b/‖b‖ the loss is least at
    K = `k_star` = ‖b‖ / (eᵀCe) (their K = 1). For Chen–Luo–Wang's own normalisation, rate = 1,
    k_star = 1, direction = e_1; for `clw_problem` (d = 1, ½-mean loss) rate = mean(x y) and
    k_star = mean(x y)/mean(x²).

    **Arguments:**

    - `objective`: a `SquareLoss` with one output (e.g. `saddlejax.problems.clw_problem(...)`).

    **Returns:** `CLWScales(rate, k_star, direction)`.
    """
    if not isinstance(objective, SquareLoss):
        raise ValueError(
            f"`objective` must be a `SquareLoss` (e.g. `clw_problem(...)`), got "
            f"{type(objective).__name__}."
        )
    if objective.y.shape[1] != 1:
        raise ValueError(
            f"`objective` must have one output, got targets of shape {objective.y.shape}."
        )
    b, c = _linear_stage(objective)
    rate = _safe_norm(b)
    if not rate > 0:
        raise ValueError(
            "the targets are uncorrelated with the inputs (Σ_i ỹ_i x_i = 0): the linear stage "
            "does not grow and Chen–Luo–Wang's Assumption 2 fails for this `objective`."
        )
    e = b / rate
    k_star = rate / (e @ c @ e)
    return CLWScales(rate=rate, k_star=k_star, direction=e)


@eqx.filter_jit
def _linear_stage(objective: SquareLoss) -> tuple[Array, Array]:
    """b = Σ_i ỹ_i x_i and C = Σ_i ∂²L/∂f_i² x_i x_iᵀ of the linearised square loss."""
    x, y = objective.x, objective.y
    grad = jax.grad(objective.from_outputs)
    g0 = grad(jnp.zeros_like(y))
    curvature = grad(jnp.ones_like(y)) - g0  # ∂²L/∂f_i², per sample (a square loss is quadratic)
    return -(x.T @ g0)[:, 0], x.T @ (curvature * x)


class CLWTimes(NamedTuple):
    """Chen–Luo–Wang's stage times: `T_p`, `T_d`, `T_sp` (see `clw_predicted_times`)."""

    T_p: np.ndarray
    T_d: np.ndarray
    T_sp: np.ndarray


def clw_predicted_times(
    m: ArrayLike, alpha: ArrayLike, *, rate: float = 1.0, beta: float | None = None
) -> CLWTimes:
    """The stage times that Chen–Luo–Wang's theorems give for width m and init scale m^{−α}.

    - Theorem 1: T_p = ((2α − 1)/4) log m for 1/2 < α ≤ 3/2 and (α − 1) log m for α > 3/2 (the
        two agree at α = 3/2). This is the time up to which the theorem proves the loss to be on
        its initial plateau: the loss has changed by O(m^{−(2α−1)/2}) there, so a loss curve
        looks flat beyond it; a plateau edge read off a loss curve at a fixed relative change
        grows like T_d instead (see `clw_milestones`).
    - Theorem 2: T_d / log m → (2α − 1)/2 as m → ∞ (Eq. 43); returned as ((2α − 1)/2) log m,
        which leaves out an O(1) offset.
    - Eq. (58): T_sp = T_d + log m / (40 β), the time to which Theorem 3 proves the secondary
        plateau lasts (a lower bound on its end), for the β of T_d's definition (Eq. 42); NaN
        unless `beta` is given.

    These constants assume their normalisation ∫ x_i x_j ρ = δ_ij and ∫ f(x) x ρ = e_1 (SPEC §10).
    For other data the times are these divided by `rate` (the linear stage's growth rate,
    `clw_scales(objective).rate`); their slopes in log m and α stay linear but rescale, and the
    O(1) offsets change with the data.

    **Arguments:**

    - `m`: width(s) m ≥ 2; `alpha`: exponent(s) α > 1/2 of the init scale σ = m^{−α}
        (broadcast together).
    - `rate`: the time unit of the data (default 1: their normalisation).
    - `beta`: the tolerance β of Eq. (42), only for T_sp.

    **Returns:** `CLWTimes(T_p, T_d, T_sp)` as NumPy arrays of the broadcast shape.
    """
    m = np.asarray(m, dtype=float)
    alpha = np.asarray(alpha, dtype=float)
    if not np.all(m >= 2):
        raise ValueError(f"`m` must be a width ≥ 2, got {m}.")
    if not np.all(alpha > 0.5):
        raise ValueError(
            f"`alpha` must exceed 1/2 (the small-initialisation regime of the theorems), got "
            f"{alpha}."
        )
    rate = float(rate)
    if not (np.isfinite(rate) and rate > 0):
        raise ValueError(f"`rate` must be positive, got {rate}; see `clw_scales`.")
    if beta is not None and not 0 < beta < 1:
        raise ValueError(f"`beta` must lie in (0, 1), got {beta}.")
    log_m = np.log(m)
    t_p = np.where(alpha <= 1.5, (2 * alpha - 1) / 4, alpha - 1) * log_m / rate
    t_d = (2 * alpha - 1) / 2 * log_m / rate
    t_sp = t_d + (np.nan if beta is None else log_m / (40 * beta) / rate)
    return CLWTimes(T_p=t_p, T_d=t_d, T_sp=np.broadcast_to(t_sp, t_d.shape))


class CLWMilestones(eqx.Module):
    """The stage times of one loss curve (see `clw_milestones`); NaN where a stage is not seen.

    **Fields:**

    - `T_p`: end of the initial plateau.
    - `T_d`: end of the initial descent.
    - `T_sp`: end of the secondary plateau.
    - `staircase`: the `LossStaircase` of the loss curve the times were read from.
    """

    T_p: float
    T_d: float
    T_sp: float
    staircase: LossStaircase


def clw_milestones(
    ts: Float[ArrayLike, " n"],
    loss: Float[ArrayLike, " n"],
    *,
    K: Float[ArrayLike, " n"] | None = None,
    k_star: float = 1.0,
    beta: float = 0.05,
    **plateau_options,
) -> CLWMilestones:
    """Chen–Luo–Wang's stage times T_p, T_d, T_sp of one trajectory (SPEC §10).

    Definitions used (Chen, Luo & Wang, Fig. 1, §5, §6):

    - `T_p`, end of the initial plateau: the end of the first plateau of the loss curve, as
        `detect_plateaus` finds it (|d log L/d log t| < `slope_threshold`), provided that plateau
        starts at the first save time t > 0 (else NaN). The paper's T_p is a theorem's time,
        ((2α − 1)/4) log m (Theorem 1; `clw_predicted_times`), at which the loss has moved by
        only O(m^{−(2α−1)/2}); the edge seen on a loss curve is where the relative decline
        reaches a fixed rate, i.e. where K reaches a fixed fraction of its critical value, so it
        grows like ((2α − 1)/2) log m / (1 + 1/(2T_p)) in their units, between Theorem 1's slope
        and T_d's.
    - `T_d`, end of the initial descent: with `K`, Eq. (42), T_d = inf{t ≥ T_p : 1 − K/K* ≤ β}
        (our copy prints the side conditions as "K ≤ 0, K′ ≤ 0", a garbling of the signs; after
        T_p, K and K′ are positive), linearly interpolated between save times, with K* =
        `k_star` (1 in their normalisation, `clw_scales(objective).k_star` otherwise). Without
        `K`, their experimental definition (§5.2): the end of the descent on the loss curve,
        i.e. the start of the next plateau.
    - `T_sp`, end of the secondary plateau: the end of the first plateau after the initial one
        that ends after T_d (when T_d is known); NaN if the loss is still on it at the last
        save time. (Eq. (58)'s T_d + log m/(40β) is a proven lower bound on it, in
        `clw_predicted_times`.)

    Times are save times (or interpolated between them): pass a save grid fine on the scale of
    the stages, e.g. geometric in t over the descent.

    **Arguments:**

    - `ts`, `loss`: one trajectory's save times and losses (`sol.ts`, `sol.loss`).
    - `K`: K(t) at the save times (`clw_diagnostics(sol.params, ...).K`), for Eq. (42).
    - `k_star`: the critical value K* (default 1, their normalisation).
    - `beta`: β of Eq. (42), "given small β > 0" in the paper (default 0.05).
    - `**plateau_options`: passed to `detect_plateaus` (`slope_threshold`, `window`, …).

    **Returns:** a `CLWMilestones`. Runs outside `jit` (the number of plateaus is data).

    **Example:**

    ```python
    scales = clw_scales(problem)
    diag = clw_diagnostics(sol.params, direction=scales.direction)
    stages = clw_milestones(sol.ts, sol.loss, K=diag.K, k_star=scales.k_star)
    ```
    """
    if not 0 < beta < 1:
        raise ValueError(f"`beta` must lie in (0, 1), got {beta}.")
    k_star = float(k_star)
    if not (np.isfinite(k_star) and k_star > 0):
        raise ValueError(
            f"`k_star` must be positive, got {k_star}; use 1 in Chen–Luo–Wang's normalisation "
            "or `clw_scales(objective).k_star`."
        )
    ts_np = np.asarray(ts, dtype=float)
    loss_np = np.asarray(loss, dtype=float)
    stairs = detect_plateaus(ts_np, loss_np, **plateau_options)
    valid = np.isfinite(ts_np) & np.isfinite(loss_np) & (ts_np > 0) & (loss_np > 0)
    if not valid.any():
        nan = float("nan")
        return CLWMilestones(nan, nan, nan, stairs)
    t_first, t_last = ts_np[valid].min(), ts_np[valid].max()

    later = list(range(stairs.n_plateaus))
    t_p = float("nan")
    if later and stairs.starts[0] <= t_first:
        t_p = float(stairs.ends[0])
        later = later[1:]

    if K is None:
        t_d = float(stairs.starts[later[0]]) if later else float("nan")
    else:
        k_np = np.asarray(K, dtype=float)
        if k_np.shape != ts_np.shape:
            raise ValueError(
                f"`K` must have the shape of `ts` {ts_np.shape}, got {k_np.shape}; pass "
                "`clw_diagnostics(sol.params).K` of the same trajectory."
            )
        start = t_p if np.isfinite(t_p) else -np.inf
        ok = np.isfinite(ts_np) & np.isfinite(k_np)
        after = ok & (ts_np >= start)  # interpolated only between saves from T_p on
        t_d, _ = first_crossing(ts_np[after], k_np[after], (1 - beta) * k_star, rising=True)

    t_sp = float("nan")
    if np.isfinite(t_d):
        secondary = [i for i in later if stairs.ends[i] > t_d]
        if secondary and stairs.ends[secondary[0]] < t_last:
            t_sp = float(stairs.ends[secondary[0]])
    return CLWMilestones(T_p=t_p, T_d=t_d, T_sp=t_sp, staircase=stairs)


# ---------------------------------------------------------------------------------------------
# Kumar–Haupt (SPEC §6)
# ---------------------------------------------------------------------------------------------


class NeuronDirections(eqx.Module):
    """Per-neuron unit directions and norms of a separable network (see `neuron_directions`).

    **Fields:**

    - `directions`: θ_k/‖θ_k‖ per neuron, shape (*batch, m, p); zero for a zero neuron.
    - `norms`: ‖θ_k‖, shape (*batch, m).
    """

    directions: Float[Array, "*batch m p"]
    norms: Float[Array, "*batch m"]


def neuron_directions(net: SquaredReLU | TwoLayer) -> NeuronDirections:
    """The unit direction θ_k/‖θ_k‖ and the norm ‖θ_k‖ of every neuron (Kumar & Haupt; SPEC §6).

    The networks are separable, f = Σ_k g(θ_k; x): for `SquaredReLU` a neuron is θ_k = w_k ∈ R^d;
    for `TwoLayer` it is θ_k = (a_k, w_k) ∈ R^{out + d}, the output weights first (the layout a
    neuron function for `neuron_ncf`/`neuron_kkt_points` must use, e.g.
    `lambda v, x: v[0] * jax.nn.relu(v[1:] @ x)` for a ReLU net with one output). Safe at zero:
    a zero neuron has direction 0 and norm 0, with zero (not NaN) derivatives.

    **Arguments:**

    - `net`: a `SquaredReLU` or `TwoLayer`, or a saved trajectory (`sol.params`; leading axes
        of the arrays are batch axes, a frozen layer without them is broadcast).

    **Returns:** a `NeuronDirections`.
    """
    if isinstance(net, SquaredReLU):
        theta = jnp.asarray(net.w)
        if theta.ndim < 2:
            raise ValueError(f"a `SquaredReLU`'s `w` must be (*batch, m, d), got {theta.shape}.")
    elif isinstance(net, TwoLayer):
        a, w = _two_layer_arrays(net)
        theta = jnp.concatenate([a, w], axis=-1)
    else:
        raise ValueError(
            "`net` must be a separable network, a `saddlejax.nn.SquaredReLU` or "
            f"`saddlejax.nn.TwoLayer` (or `sol.params` of one), got {type(net).__name__}."
        )
    return _unit_rows(theta)


@jax.jit
def _unit_rows(theta: Array) -> NeuronDirections:
    norms = _safe_norm(theta)
    positive = (norms > 0)[..., None]
    safe = jnp.where(positive, norms[..., None], 1.0)
    directions = jnp.where(positive, theta / safe, 0.0)
    return NeuronDirections(directions=directions, norms=norms)


def _kkt_array(kkt_points) -> Array:
    points = kkt_points.points if isinstance(kkt_points, NCFKKTPoints) else kkt_points
    points = jnp.asarray(points)
    if points.ndim != 2:
        raise ValueError(
            "`kkt_points` must be an `NCFKKTPoints` of a neuron NCF (points of shape "
            f"(n_points, p)) or such an array; got points of shape {points.shape}."
        )
    return points


def kkt_distance(
    directions: Float[Array, "*batch p"],
    kkt_points: NCFKKTPoints | Float[Array, "n_points p"],
) -> Float[Array, "*batch"]:
    """min_j ‖u − z_j‖: the distance of each unit direction u to the nearest KKT point z_j.

    Kumar & Haupt (Theorem 5.1, Corollary 5.4.1, Theorem 5.5; SPEC §6): near the origin (or a
    saddle) each neuron of a separable two-homogeneous network either becomes negligible or
    converges in direction to a non-negative KKT point of its constrained NCF, max N(w) s.t.
    ‖w‖ = 1. The distance is the chord ‖u − z‖ = 2 sin(∠(u, z)/2) between unit vectors; +inf
    when there are no KKT points.

    **Arguments:**

    - `directions`: unit vectors on the last axis (e.g. `neuron_directions(net).directions`).
    - `kkt_points`: an `NCFKKTPoints` of a neuron NCF (`neuron_kkt_points` or `ncf_kkt_points`
        of `neuron_ncf(...)`), or an array of points (n_points, p) in the neuron layout.

    **Returns:** the distances, shape `directions.shape[:-1]`.
    """
    u = jnp.asarray(directions)
    z = _kkt_array(kkt_points)
    if u.ndim < 1 or u.shape[-1] != z.shape[-1]:
        raise ValueError(
            f"`directions` (shape {u.shape}) and the KKT points (shape {z.shape}) must have one "
            "neuron size p on the last axis."
        )
    if z.shape[0] == 0:
        return jnp.full(u.shape[:-1], jnp.inf, dtype=u.dtype)
    return _nearest_distance(u, z)


@jax.jit
def _nearest_distance(u: Array, z: Array) -> Array:
    z = z.reshape((1,) * (u.ndim - 1) + z.shape)
    return jnp.min(_safe_norm(u[..., None, :] - z), axis=-1)


def neuron_kkt_points(
    objective: SquareLoss,
    neuron: Callable,
    size: int,
    *,
    key: PRNGKeyArray,
    order: int = 2,
    saddle: SquaredReLU | TwoLayer | None = None,
    **kwargs,
) -> NCFKKTPoints:
    """Non-negative KKT points of one neuron's constrained NCF, at the origin or at a saddle.

    Kumar & Haupt (SPEC §6): near the origin, N_y(w) = Σ_i y_i g(w; x_i) (Corollary 5.4.1); near
    a saddle θ_s = (w_big, 0), the residual NCF N_r with r = y − f(X; θ_s) (Theorem 5.5),
    computed by `residual_ncf`. The points solve max N(w) s.t. ‖w‖ = 1 with ∇N(w) = λw,
    λ = k·N(w) ≥ 0 (`ncf_kkt_points`). Their multipliers are in the NCF's units: under the square
    loss c Σ_i (f_i − y_i)² a neuron along a KKT point grows at rate 2c·λ (λ for Kumar & Haupt's
    ½-sum).

    **Arguments:**

    - `objective`: a `SquareLoss` with one output (x, y).
    - `neuron`: g(θ_k, x_i), one neuron's scalar output on the neuron layout of
        `neuron_directions` (e.g. `squared_relu_neuron`).
    - `size`: p, the number of parameters of one neuron.
    - `key`: PRNG key for the restarts.
    - `order`: the homogeneity order k of g in θ_k (2 for squared ReLU and two-layer ReLU).
    - `saddle`: the network at the saddle θ_s; default None, the origin (NCF with y).
    - `**kwargs`: passed to `ncf_kkt_points` (`n_restarts`, tolerances, …).

    **Returns:** an `NCFKKTPoints` whose `points` have shape (n_points, p).
    """
    if not isinstance(objective, SquareLoss):
        raise ValueError(
            "`objective` must be a `SquareLoss` (it needs x and y), got "
            f"{type(objective).__name__}."
        )
    if objective.y.shape[1] != 1:
        raise ValueError(
            f"the neuron NCF needs one output, got targets of shape {objective.y.shape}."
        )
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f"`size` must be the number of parameters of one neuron, got {size!r}.")
    y = objective.y if saddle is None else residual_ncf(objective, saddle, eqx.is_inexact_array).y
    N = neuron_ncf(neuron, objective.x, y)
    return ncf_kkt_points(N, order, jnp.zeros(size, objective.x.dtype), key=key, **kwargs)


class DirectionalConvergence(eqx.Module):
    """Distances of the neurons of a trajectory to their nearest KKT point (see
    `directional_convergence`).

    **Fields:**

    - `ts`: the save times.
    - `distances`: min_j ‖θ_k/‖θ_k‖ − z_j‖ per save time and neuron, shape (…, n_save, m).
    - `norms`: ‖θ_k‖, shape (…, n_save, m).
    - `active`: whether a neuron counts at that time (norm ≥ `min_relative_norm` × the largest).
    - `max_distance`: the largest distance among active neurons per save time (NaN if none).
    """

    ts: Float[Array, "*batch n_save"]
    distances: Float[Array, "*batch n_save m"]
    norms: Float[Array, "*batch n_save m"]
    active: Bool[Array, "*batch n_save m"]
    max_distance: Float[Array, "*batch n_save"]


def directional_convergence(
    solution: FlowSolution,
    kkt_points: NCFKKTPoints | Float[Array, "n_points p"],
    *,
    neurons: Int[ArrayLike, " k"] | Bool[ArrayLike, " m"] | None = None,
    min_relative_norm: float = 1e-2,
) -> DirectionalConvergence:
    """Along a trajectory, the distance of each non-negligible neuron to its nearest KKT point.

    Kumar & Haupt (Theorem 5.1 and Corollary 5.4.1 near the origin, Theorem 5.5 near a saddle;
    SPEC §6): for a small enough initialisation the flow stays near the origin (or the saddle)
    long enough that every neuron either shrinks to a negligible norm or approaches, in
    direction, a non-negative KKT point of its constrained NCF — N_y at the origin, N_r with
    r = y − f(X; θ_s) at a saddle (pass `neuron_kkt_points(..., saddle=θ_s)` and select the
    small neurons with `neurons`). A neuron counts as non-negligible ("active") at a save time
    when its norm is at least `min_relative_norm` times the largest norm among the selected
    neurons then: for a two-homogeneous net a neuron's norm grows like exp(2c∫N(u_k)), so the
    neurons that linger where the NCF is small fall behind by exponential factors.

    **Arguments:**

    - `solution`: a `FlowSolution` of a `SquaredReLU` or `TwoLayer` whose parameters were saved
        (no `observe=`); leading sweep axes are kept.
    - `kkt_points`: the neuron NCF's KKT points (`neuron_kkt_points`, or an array (n_points, p)
        in the layout of `neuron_directions`).
    - `neurons`: indices or a boolean mask of the neurons to study (default: all).
    - `min_relative_norm`: the threshold for "non-negligible" (default 1e-2).

    **Returns:** a `DirectionalConvergence`.

    **Example:**

    ```python
    kkt = neuron_kkt_points(problem, squared_relu_neuron, 2, key=jr.key(0))
    conv = directional_convergence(sol, kkt)
    conv.max_distance[-1]  # → 0 as the initialisation scale → 0 at a fixed horizon
    ```
    """
    if not isinstance(solution, FlowSolution):
        raise ValueError(
            f"`solution` must be a `FlowSolution`, got {type(solution).__name__}; for one "
            "network use `kkt_distance(neuron_directions(net).directions, kkt_points)`."
        )
    if not 0 <= min_relative_norm < 1:
        raise ValueError(f"`min_relative_norm` must lie in [0, 1), got {min_relative_norm}.")
    params = solution.params
    model = params if solution.static is None else eqx.combine(params, solution.static)
    if not isinstance(model, SquaredReLU | TwoLayer):
        raise ValueError(
            "`solution` must hold the saved parameters of a `SquaredReLU` or `TwoLayer` "
            "(integrate without `observe=`)."
        )
    nd = neuron_directions(model)
    directions, norms = nd.directions, nd.norms
    if neurons is not None:
        idx = jnp.asarray(neurons)
        if idx.dtype == bool:
            if idx.shape != norms.shape[-1:]:
                raise ValueError(
                    f"a boolean `neurons` mask must have one entry per neuron "
                    f"({norms.shape[-1]}), got shape {idx.shape}."
                )
            idx = jnp.flatnonzero(idx)
        directions = jnp.take(directions, idx, axis=-2)
        norms = jnp.take(norms, idx, axis=-1)
    distances = kkt_distance(directions, kkt_points)
    active, max_distance = _active_max(distances, norms, min_relative_norm)
    return DirectionalConvergence(
        ts=solution.ts,
        distances=distances,
        norms=norms,
        active=active,
        max_distance=max_distance,
    )


@jax.jit
def _active_max(distances: Array, norms: Array, min_relative_norm) -> tuple[Array, Array]:
    largest = jnp.max(norms, axis=-1, keepdims=True)
    active = (norms > 0) & (norms >= min_relative_norm * largest)
    any_active = jnp.any(active, axis=-1)
    max_distance = jnp.where(
        any_active, jnp.max(jnp.where(active, distances, -jnp.inf), axis=-1), jnp.nan
    )
    return active, max_distance
