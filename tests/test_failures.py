"""Failures with their causes (SPEC §1, §5): every way a flow can fail has its own `RESULTS`
code and message with `throw=False` and raises with that message with `throw=True`; events fire
at late times; settings that cannot resolve the flow warn (`NumericalWarning`) and the default
float64 path does not; escape-direction solvers refuse a wrong order and report a minimum.

Compilations are shared: each objective below is an `eqx.Module` with array coefficients, so its
cases differ in traced numbers only; explicit Tsit5 keeps the compilations short.
"""

import math
import re
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import saddlejax as sj

TSIT5 = diffrax.Tsit5()


def _raises_with(code):
    return pytest.raises(RuntimeError, match=re.escape(sj.RESULTS[code][:40]))


class Poly(eqx.Module):
    """L(θ) = a·Σθ³ + b·‖θ‖⁴ + (c/2)·‖θ‖²."""

    a: jax.Array
    b: jax.Array
    c: jax.Array

    def __init__(self, a=0.0, b=0.0, c=0.0):
        self.a, self.b, self.c = (jnp.asarray(v, float) for v in (a, b, c))

    def __call__(self, p):
        sq = jnp.sum(p**2)
        return self.a * jnp.sum(p**3) + self.b * sq**2 + 0.5 * self.c * sq


def test_finite_time_blowup_is_its_own_failure():
    """L = −‖θ‖⁴ blows up at T = 1/(8‖θ₀‖²) (d‖θ‖²/dt = 8‖θ‖⁴) and L = Σθ³ from θ₀,₁ < 0 at
    T = 1/(3|θ₀,₁|) (dθ₁/dt = −3θ₁²): both are `finite_time_blowup`, stopped within 1e−4 of T
    in a few hundred steps (not `max_steps`), and raise with that message. The default float64
    path emits no `NumericalWarning`."""
    p0 = jnp.array([0.1, 0.1])
    cases = [(Poly(b=-1.0), p0, 1 / (8 * 0.02)), (Poly(a=1.0), jnp.array([-0.1, 0.05]), 1 / 0.3)]
    for loss, start, blowup_time in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error", sj.NumericalWarning)
            sol = sj.gradient_flow(loss, start, 100.0, solver=TSIT5, n_save=8, throw=False)
        assert sol.result == sj.RESULTS.finite_time_blowup, sj.RESULTS[sol.result]
        assert abs(float(sol.stop_time) - blowup_time) <= 1e-4 * blowup_time
        assert int(sol.stats["num_steps"]) < 2_000
        assert float(sol.stats["nonfinite_time"]) == np.inf
        with _raises_with(sj.RESULTS.finite_time_blowup):
            sj.gradient_flow(loss, start, 100.0, solver=TSIT5, n_save=8)


def test_step_size_underflow_is_not_a_blowup():
    """L = ½·10¹¹‖θ‖² integrated by Tsit5 from t₀ = 10⁶: stability needs steps ≈ 3e−11, below
    10 float spacings of t (1.2e−9). The solve stops at once with `step_size_underflow` — not a
    blow-up (L is bounded below), not `max_steps_reached` after 10⁶ steps of zero length."""
    loss, p0 = Poly(c=1e11), jnp.array([0.1, 0.1])
    kw = dict(solver=TSIT5, t0=1e6, n_save=8)
    sol = sj.gradient_flow(loss, p0, 1e6 + 1.0, throw=False, **kw)
    assert sol.result == sj.RESULTS.step_size_underflow, sj.RESULTS[sol.result]
    assert int(sol.stats["num_steps"]) < 100
    with _raises_with(sj.RESULTS.step_size_underflow):
        sj.gradient_flow(loss, p0, 1e6 + 1.0, **kw)


class NanAhead(eqx.Module):
    """L = ½‖θ − 2‖², NaN beyond θᵢ = 1: in the gradient (g > 0) or in the value only (h > 0).
    From θ₀ = 0 the flow θ(t) = 2 − 2e^{−t} crosses θᵢ = 1 at t = ln 2."""

    g: jax.Array
    h: jax.Array

    def __call__(self, p):
        beyond = p > 1
        in_grad = jnp.where(beyond & (self.g > 0), jnp.nan, 0.0) * p
        in_value = jnp.where(beyond & (self.h > 0), jnp.nan, 0.0)
        return 0.5 * jnp.sum((p - 2) ** 2) + jnp.sum(in_grad) + jnp.sum(in_value)


def test_nonfinite_reports_when_it_appeared():
    """A NaN vector field beyond θ = 1 stops the solve where it cannot step further, at
    t = ln 2 (`stats["nonfinite_time"]` to 1e−6); a NaN in the loss alone is found at the first
    save time after ln 2. Both are `nonfinite_trajectory` and raise with its message."""
    p0 = jnp.zeros(2)
    ts = np.linspace(0.0, 2.0, 9)
    kw = dict(solver=TSIT5, saveat=ts)
    in_grad, in_value = (
        NanAhead(jnp.array(1.0), jnp.array(0.0)),
        NanAhead(jnp.array(0.0), jnp.array(1.0)),
    )
    sol = sj.gradient_flow(in_grad, p0, 2.0, throw=False, **kw)
    assert sol.result == sj.RESULTS.nonfinite_trajectory
    assert abs(float(sol.stats["nonfinite_time"]) - math.log(2)) <= 1e-6
    assert int(sol.stats["num_steps"]) < 1_000
    sol = sj.gradient_flow(in_value, p0, 2.0, throw=False, **kw)
    assert sol.result == sj.RESULTS.nonfinite_trajectory
    assert float(sol.stats["nonfinite_time"]) == ts[ts > math.log(2)][0]
    with _raises_with(sj.RESULTS.nonfinite_trajectory):
        sj.gradient_flow(in_grad, p0, 2.0, **kw)


def test_failed_implicit_solve_names_it_without_blaming_the_solver_choice():
    """Kvaerno3 whose Newton solve may take one iteration rejects every step (infinite error
    estimate, finite candidate): `stiff_solver_failed`, whose message suggests neither Tsit5 nor
    any named solver. An explicit solver never gets this code (see the tests above)."""
    loss, p0 = Poly(c=1e3), jnp.ones(3)
    solver = diffrax.Kvaerno3(root_finder=optx.Newton(rtol=1e-8, atol=1e-8), root_find_max_steps=1)
    sol = sj.gradient_flow(loss, p0, 1.0, solver=solver, n_save=4, throw=False)
    assert sol.result == sj.RESULTS.stiff_solver_failed, sj.RESULTS[sol.result]
    assert "tsit5" not in sj.RESULTS[sol.result].lower()
    with _raises_with(sj.RESULTS.stiff_solver_failed):
        sj.gradient_flow(loss, p0, 1.0, solver=solver, n_save=4)


def test_invalid_tolerances():
    """Concrete tolerances that are not positive and finite (Python or JAX numbers) are refused
    by `FlowOptions` before compiling; traced ones (under `jit`/`vmap`) give `invalid_tolerance`
    per trajectory — never a success or a blamed objective — and raise under `jit` with
    `throw=True`."""
    loss, p0 = Poly(c=1.0), jnp.array([0.1, 0.1])
    for bad in (
        dict(rtol=jnp.asarray(-1.0)),
        dict(rtol=0.0),
        dict(rtol=float("nan")),
        dict(rtol=np.inf),
        dict(atol=-1e-9),
        dict(atol=jnp.asarray(jnp.nan)),
    ):
        with pytest.raises(ValueError, match="positive"):
            sj.gradient_flow(loss, p0, 1.0, solver=TSIT5, **bad)

    def final_loss(rtol, throw):
        sol = sj.gradient_flow(loss, p0, 1.0, solver=TSIT5, n_save=4, rtol=rtol, throw=throw)
        return sol.result, sol.loss[-1]

    rtols = jnp.array([1e-8, -1.0, 0.0, jnp.nan])
    results, losses = jax.jit(jax.vmap(lambda r: final_loss(r, False)))(rtols)
    assert np.asarray(results == sj.RESULTS.successful).tolist() == [True, False, False, False]
    assert np.all(np.asarray(results == sj.RESULTS.invalid_tolerance)[1:])
    assert abs(float(losses[0]) - float(loss(p0)) * math.exp(-2.0)) <= 1e-7 * float(loss(p0))
    with pytest.raises(Exception, match="positive and finite"):
        jax.block_until_ready(jax.jit(lambda r: final_loss(r, True))(jnp.asarray(-1.0)))


def test_nonfinite_params0_is_refused_before_compiling():
    """NaN/Inf entries of a concrete `params0` raise a ValueError naming `params0` and the
    leaf's path."""
    params = {"w": [jnp.ones(2), jnp.array([1.0, jnp.nan])]}
    with pytest.raises(ValueError, match=re.escape("params0['w'][1]")):
        sj.gradient_flow(lambda p: jnp.sum(p["w"][1] ** 2), params, 1.0)


class ScalarDLN(eqx.Module):
    """L(w) = (1 − w₁w₂w₃w₄)²: a depth-4 scalar DLN, balanced from w = α(1, 1, 1, 1)."""

    target: jax.Array

    def __call__(self, w):
        return (self.target - jnp.prod(w)) ** 2


def _scalar_dln_escape_time(alpha, radius):
    """Balanced, all wᵢ = a with da/dt = 2(1 − a⁴)a³, so t(a) = F(a) − F(α) with
    F(a) = −1/(4a²) + ⅛·log((1 + a²)/(1 − a²)); ‖w‖ = 2a reaches `radius` at a = radius/2."""

    def f(a):
        return -1 / (4 * a**2) + math.log((1 + a**2) / (1 - a**2)) / 8

    return f(radius / 2) - f(alpha)


def test_late_escape_event_fires_at_its_closed_form_time():
    """The escape time of a depth-4 DLN from α = 1e−4, 1e−5 (t_α ≈ 2.5·10⁷, 2.5·10⁹) is found to
    1e−9 relative. One float spacing of t moves ‖θ‖/r − 1 there by ≈ 2e−9 and 2e−7: optimistix's
    Newton alone, which asks |g| ≤ 1e−10, ran out of steps; `ResolvedBracket` stops at the float
    resolution of t. A flow that ends before its event is a success with `event_time = +inf`
    (the default, `require_event=False`)."""
    loss, radius = ScalarDLN(jnp.asarray(1.0)), 1.0
    kw = dict(solver=TSIT5, rtol=1e-11, n_save=8, event=sj.EscapeRadius(radius))
    for alpha in (1e-4, 1e-5):
        exact = _scalar_dln_escape_time(alpha, radius)
        ulp_effect = math.ulp(exact) * 2 * 2 * (1 - 0.5**4) * 0.5**3 / radius  # d(‖θ‖/r)/dt·ulp
        assert ulp_effect > 10 * 1e-10
        sol = sj.gradient_flow(loss, jnp.full(4, alpha), 2 * exact, throw=False, **kw)
        assert sol.result == sj.RESULTS.successful, sj.RESULTS[sol.result]
        assert abs(float(sol.event_time) - exact) <= 1e-9 * exact
    early = sj.gradient_flow(loss, jnp.full(4, 1e-5), 1e9, **kw)
    assert early.result == sj.RESULTS.successful and float(early.event_time) == np.inf


class Jump(sj.AbstractFlowEvent):
    """g = ±1 on either side of ‖θ‖ = r: a float condition that jumps across 0."""

    radius: jax.Array

    def __call__(self, state, loss_fn):
        return jnp.where(jnp.sqrt(jnp.sum(state**2)) > self.radius, 1.0, -1.0)


class Undefined(sj.AbstractFlowEvent):
    """g = ±1 outside a thin shell about ‖θ‖ = r and NaN inside it: no time to locate."""

    radius: jax.Array

    def __call__(self, state, loss_fn):
        norm = jnp.sqrt(jnp.sum(state**2))
        inside = jnp.abs(norm / self.radius - 1) < 1e-3
        return jnp.where(inside, jnp.nan, jnp.where(norm > self.radius, 1.0, -1.0))


def test_events_located_not_located_and_not_fired():
    """A condition that jumps across 0 is located by bracketing at the crossing (as the
    continuous ‖θ‖/r − 1, to 1e−6 relative: the dense output's accuracy at rtol = 1e−8); one
    that is NaN about the crossing is `event_not_located` with `event_time = +inf`; with
    `require_event=True` a flow that reaches `t1` before its event is `event_not_fired`. The
    failures raise with their messages."""
    loss, p0 = ScalarDLN(jnp.asarray(1.0)), jnp.full(4, 0.1)
    exact = _scalar_dln_escape_time(0.1, 1.0)  # ≈ 24
    kw = dict(solver=TSIT5, n_save=4, rtol=1e-8, require_event=True)
    jump = sj.gradient_flow(loss, p0, 2 * exact, event=Jump(jnp.asarray(1.0)), **kw)
    assert abs(float(jump.event_time) - exact) <= 1e-6 * exact
    for event, t1, code in (
        (Undefined(jnp.asarray(1.0)), 2 * exact, sj.RESULTS.event_not_located),
        (Jump(jnp.asarray(1.0)), 0.5 * exact, sj.RESULTS.event_not_fired),
    ):
        sol = sj.gradient_flow(loss, p0, t1, throw=False, event=event, **kw)
        assert sol.result == code, sj.RESULTS[sol.result]
        assert float(sol.event_time) == np.inf
        with _raises_with(code):
            sj.gradient_flow(loss, p0, t1, event=event, **kw)


def _as_float32(tree):
    return jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if eqx.is_inexact_array(x) else x, tree
    )


def test_numerical_warnings():
    """`NumericalWarning`s, raised as errors here so that no solve is compiled: a float32 depth-4
    DLN at α = 1e−3 (its escape at t ≈ 10⁶ spans less than one float32 spacing per time scale
    of the escape; the float64 flow escapes normally), an `atol` above 1e−3·RMS(θ₀), an `rtol`
    at float64 roundoff. None for the same DLN in float32 at α = 0.1, where float32 resolves
    the escape."""
    problem = sj.matrix_completion_problem(jr.key(0), n=3, rank=2, observed=0.7)
    net = sj.nn.DeepLinear((3, 4, 4, 4, 3), key=jr.key(1))
    small = _as_float32(sj.init.scale(net, 1e-3))
    kw = dict(solver=TSIT5, n_save=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sj.NumericalWarning)
        with pytest.raises(sj.NumericalWarning, match="float32.*jax_enable_x64"):
            sj.gradient_flow(_as_float32(problem), small, 1e7, **kw)
        tiny = sj.init.scale(net, 1e-4)
        with pytest.raises(sj.NumericalWarning, match="not well below the initial scale"):
            sj.gradient_flow(problem, tiny, 1.0, atol=1e-3, **kw)
        with pytest.raises(sj.NumericalWarning, match="roundoff"):
            sj.gradient_flow(problem, tiny, 1.0, rtol=1e-16, **kw)
        ok = _as_float32(sj.init.scale(net, 0.1))
        sol = sj.gradient_flow(_as_float32(problem), ok, 1.0, **kw)
        assert sol.ts.dtype == jnp.float32 and sol.result == sj.RESULTS.successful


def test_tiny_initial_scales_warn_in_float64():
    """Tiny α in float64 is never silently wrong. Depth 4 at α = 1e−9: the escape at
    t ≈ α⁻² = 10¹⁸ spans less than a float64 spacing per time scale of the drop (raised as an
    error before compiling). Depth 2 at α = 1e−30: the first escape grows the weights to O(1),
    where directions still at α keep no digits, so the later escapes are seeded by rounding —
    warned after the solve; at α = 1e−6 (≈ 8 digits kept) neither warning."""
    problem = sj.matrix_completion_problem(jr.key(0), n=3, rank=2, observed=0.7)
    deep = sj.nn.DeepLinear((3, 4, 4, 4, 3), key=jr.key(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", sj.NumericalWarning)
        with pytest.raises(sj.NumericalWarning, match="or pass `origin_defect`"):
            sj.gradient_flow(problem, sj.init.scale(deep, 1e-9), 1e19, solver=TSIT5, n_save=4)
    shallow = sj.nn.DeepLinear((3, 6, 3), key=jr.key(1))
    for alpha, expected in ((1e-30, 1), (1e-6, 0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sol = sj.gradient_flow(
                problem, sj.init.scale(shallow, alpha), 200.0, solver=TSIT5, n_save=16
            )
        assert sol.result == sj.RESULTS.successful
        assert float(sol.loss[-1]) < 0.1 * float(sol.loss[0])  # it escaped
        found = [w for w in caught if "seeded by rounding" in str(w.message)]
        assert len(found) == expected, [str(w.message) for w in caught]


def test_later_escapes_seeded_by_solver_error_warn():
    """After the first escape, the directions that seed the later ones are still at the initial
    scale; the solver's per-step error (`rtol` of the grown state) competes with them. Depth-4
    width-10 DLN, rtol 1e−6, through the first drop by the origin handoff: at α = 1e−4 (2.3
    digits against rtol) the second drop's α²·t is the α → 0 trend's to 1e−3, unwarned; at
    α = 1e−6 (0.5 digits) it is off by > 1 % and the solve warns (measured 10 %, and 30 % with
    the handoff's H-flow at rtol 1e−10: the value is set by the solves' errors, not by α)."""
    problem = sj.matrix_completion_problem(jr.key(0), n=6, rank=3)
    net = sj.nn.DeepLinear((6, 10, 10, 10, 6), key=jr.key(1))
    times = {}
    for alpha in (1e-3, 1e-4, 1e-6):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sol = sj.gradient_flow(
                problem, sj.init.scale(net, alpha), 100 / alpha**2, event=sj.LossBelow(0.01),
                origin_defect=1e-4, max_steps=20_000,
            )
        found = [w for w in caught if "the solver's error" in str(w.message)]
        assert len(found) == (alpha == 1e-6), [str(w.message) for w in caught]
        times[alpha] = alpha**2 * float(sol.event_time)
    assert abs(times[1e-4] / times[1e-3] - 1) < 1e-3, times
    assert abs(times[1e-6] / times[1e-3] - 1) > 1e-2, times


class CubicPlusQuadratic(eqx.Module):
    """H(θ) = a·Σθᵢ³ + b·‖θ‖²: min over the unit sphere is −a (at −eᵢ) for b = 0 and b for
    a = 0."""

    a: jax.Array
    b: jax.Array

    def __call__(self, p):
        return self.a * jnp.sum(p**3) + self.b * jnp.sum(p**2)


def test_escape_order_is_checked_and_a_minimum_has_no_escape():
    """`optimal_escape` of the cubic Σθᵢ³ finds s* = 3·1 = 3 with order 3, and refuses order 2
    (measured H(2ρ)/H(ρ) = 2³) with a ValueError, as `refine_escape_direction` does. At a
    minimum (H = ‖θ‖² ≥ 0) it reports `no_escape_direction` with s* = −2, not a success."""
    like, key = jnp.zeros(3), jr.key(0)
    cubic = CubicPlusQuadratic(jnp.asarray(1.0), jnp.asarray(0.0))
    esc = sj.optimal_escape(cubic, 3, like, key=key, n_restarts=4)
    assert esc.result == sj.RESULTS.successful
    assert abs(float(esc.speed) - 3.0) <= 1e-10
    assert abs(float(esc.stats["measured_order"]) - 3.0) <= 1e-10
    with pytest.raises(ValueError, match=r"`order` = 2.*2\^3"):
        sj.optimal_escape(cubic, 2, like, key=key, n_restarts=4)
    with pytest.raises(ValueError, match=r"`order` = 2.*2\^3"):
        sj.refine_escape_direction(cubic, 2, jnp.array([-1.0, 0.1, 0.0]))
    bowl = CubicPlusQuadratic(jnp.asarray(0.0), jnp.asarray(1.0))
    esc = sj.optimal_escape(bowl, 2, like, key=key, n_restarts=4)
    assert esc.result == sj.RESULTS.no_escape_direction
    assert abs(float(esc.speed) + 2.0) <= 1e-12
    assert "no escape direction" in sj.RESULTS[esc.result]


def test_ncf_kkt_points_include_minima():
    """On the squared-ReLU toy (Kumar & Haupt) the neuron NCF on the circle has a maximum and a
    minimum with N > 0 (a brute-force grid of 100,001 angles finds exactly these two critical
    points); `ncf_kkt_points` returns both, and the minimum agrees with Newton's method
    (`refine_escape_direction` of −N) started nearby to 1e−8."""
    prob = sj.squared_relu_toy_problem(jr.key(0))
    n_j = sj.neuron_ncf(sj.squared_relu_neuron, prob.x, prob.y)
    phi = np.linspace(0, 2 * np.pi, 100_001)
    values = np.asarray(jax.vmap(n_j)(jnp.stack([np.cos(phi), np.sin(phi)], axis=1)))
    slope = np.sign(np.diff(values))
    turns = np.nonzero(slope[1:] != slope[:-1])[0] + 1
    assert len(turns) == 2
    grid_min = turns[np.argmin(values[turns])]
    kkt = sj.ncf_kkt_points(n_j, 2, jnp.zeros(2), key=jr.key(1), n_restarts=8)
    assert kkt.points.shape == (2, 2)
    assert bool(jnp.all(kkt.values > 0))
    guess = jnp.array([np.cos(phi[grid_min]), np.sin(phi[grid_min])])
    refined = sj.refine_escape_direction(lambda w: -n_j(w), 2, guess)
    assert refined.result == sj.RESULTS.successful
    assert float(jnp.linalg.norm(kkt.points[1] - refined.direction)) <= 1e-8
    assert abs(float(kkt.values[1]) - float(n_j(refined.direction))) <= 1e-10 * kkt.values[0]
    assert abs(float(kkt.values[1]) - values[grid_min]) <= 1e-6 * kkt.values[0]


def test_tuple_of_events_locates_the_one_that_fired():
    """With `event=(EscapeRadius(r), LossBelow(ℓ))` the first condition to change sign stops
    the flow at its own time: that of the same event alone (to the root find's 1e−10)."""
    loss, p0 = ScalarDLN(jnp.asarray(1.0)), jnp.full(4, 0.1)
    kw = dict(solver=TSIT5, n_save=4, rtol=1e-10)
    exact = _scalar_dln_escape_time(0.1, 1.0)
    alone = sj.gradient_flow(loss, p0, 2 * exact, event=sj.EscapeRadius(1.0), **kw)
    both = sj.gradient_flow(
        loss, p0, 2 * exact, event=(sj.LossBelow(-1e3), sj.EscapeRadius(1.0)), **kw
    )
    assert float(both.event_time) == pytest.approx(float(alone.event_time), rel=1e-10)
    assert [bool(m) for m in both.event_mask] == [False, True]
