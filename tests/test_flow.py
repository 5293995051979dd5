"""gradient_flow against closed forms and scipy; DLN invariants, events, failures (SPEC §1, §2).

The DLN tests share one problem (fixed keys, so the calibrated tolerances below hold for the
problem they were measured on), one save grid and one compilation.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

import saddlejax as sj
from saddlejax import init
from saddlejax.nn import DeepLinear

# The accuracy tests below are calibrated for Tsit5, whose dense output is of order 4 at every
# save time; `AutoStiff` (the default) is compared with scipy separately.
TSIT5 = diffrax.Tsit5()
WIDTHS = (3, 4, 4, 3)
T1 = 400.0
TS = np.linspace(0.0, T1, 21)


@pytest.fixture(scope="module")
def dln():
    """A 3×3 rank-2 completion problem and a depth-3 DLN from α = 1e−2.

    Its flow has a long plateau near 0, an escape near t ≈ 80 and two drops of the loss (a
    saddle-to-saddle trajectory) before t = 400, so it exercises every regime of the flow.
    """
    problem = sj.matrix_completion_problem(jr.key(0), n=3, rank=2, observed=0.7)
    net = init.scale(DeepLinear(WIDTHS, key=jr.key(1)), 1e-2)
    return problem, net


def _flat(weights):
    """Stack saved weights (each (n_save, ...)) into (n_save, P)."""
    return np.concatenate([np.asarray(w).reshape(w.shape[0], -1) for w in weights], axis=1)


def _numpy_dln_rhs(problem, shapes):
    """−∇L for L = (1/N) Σ_obs ((W₃W₂W₁ − A*)_km)², by hand in numpy (independent of JAX)."""
    mask, target = np.asarray(problem.mask), np.asarray(problem.target)
    n_obs = mask.sum()
    sizes = [a * b for a, b in shapes]

    def rhs(t, v):
        w1, w2, w3 = (c.reshape(s) for c, s in zip(np.split(v, np.cumsum(sizes)[:-1]), shapes))
        g = 2 / n_obs * mask * (w3 @ w2 @ w1 - target)
        return -np.concatenate(
            [((w3 @ w2).T @ g).ravel(), (w3.T @ g @ w1.T).ravel(), (g @ (w2 @ w1).T).ravel()]
        )

    return rhs


def test_quadratic_closed_form(getkey):
    """For L(θ) = ½ uᵀAu + ½ k v² on a dict pytree (a user callable), the flow is
    u(t) = e^{−At} u₀, v(t) = e^{−kt} v₀ (SPEC §1)."""
    q, _ = jnp.linalg.qr(jr.normal(getkey(), (4, 4)))
    a = q @ jnp.diag(jnp.array([0.1, 0.5, 1.0, 3.0])) @ q.T
    k = 2.0

    def loss(p):
        return 0.5 * p["u"] @ a @ p["u"] + 0.5 * k * p["v"] ** 2

    p0 = {"u": jr.normal(getkey(), (4,)), "v": jnp.array(1.5)}
    ts = np.linspace(0.0, 5.0, 11)
    sol = sj.gradient_flow(loss, p0, 5.0, saveat=diffrax.SaveAt(ts=ts), rtol=1e-10, solver=TSIT5)
    u_exact = np.stack([scipy.linalg.expm(-np.asarray(a) * t) @ np.asarray(p0["u"]) for t in ts])
    v_exact = np.exp(-k * ts) * 1.5
    scale = float(jnp.linalg.norm(p0["u"])) + 1.5
    # rtol = 1e−10 and atol = rtol·RMS(θ₀): the global error of a contracting linear flow stays
    # at a few local tolerances (measured 5e−12·‖θ₀‖); 1e−9·‖θ₀‖ leaves a 200× margin, while any
    # error in the vector field's sign or scale would be O(‖θ₀‖).
    np.testing.assert_allclose(sol.params["u"], u_exact, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(sol.params["v"], v_exact, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(sol.ts, ts, rtol=1e-15)
    loss_exact = [float(loss({"u": u, "v": v})) for u, v in zip(u_exact, v_exact)]
    np.testing.assert_allclose(sol.loss, loss_exact, rtol=1e-7, atol=1e-12)
    # The default atol is scaled to the initialisation: rtol · RMS(θ₀).
    rms = np.sqrt((np.sum(np.asarray(p0["u"]) ** 2) + 1.5**2) / 5)
    np.testing.assert_allclose(sol.stats["atol"], 1e-10 * rms, rtol=1e-12)


def _width_one(a0, y=1.0):
    """The width-1 two-layer DLN f(x) = b·a·x with L = ½(ab − y)² (x = 1) and a = b = a0."""
    net = DeepLinear((1, 1, 1), key=jr.key(0))
    net = jax.tree_util.tree_map(lambda w: jnp.full_like(w, a0), net)
    loss = sj.SquareLoss(jnp.ones((1, 1)), jnp.full((1, 1), y), normalization="half_sum")
    return loss, net


def _logistic(t, v0, y=1.0):
    """v = ab along the balanced width-1 flow: dv/dt = −2v(v − y), so
    v(t) = y / (1 + (y/v₀ − 1) e^{−2yt})."""
    return y / (1 + (y / v0 - 1) * np.exp(-2 * y * t))


def _logistic_time(v, v0, y=1.0):
    """The time at which the logistic solution reaches v."""
    return np.log((y / v0 - 1) / (y / v - 1)) / (2 * y)


def test_width_one_dln_closed_form():
    """The balanced width-1 DLN from a = b = 1e−3 follows the logistic closed form
    a(t)² = ab = y/(1 + (y/a₀² − 1)e^{−2yt}) through its plateau and escape (SPEC §2, §8), in
    its parameters and in an observable (`observe=`)."""
    a0 = 1e-3
    loss, net = _width_one(a0)
    ts = np.linspace(0.0, 15.0, 31)
    sol = sj.gradient_flow(loss, net, 15.0, saveat=ts, rtol=1e-10, solver=TSIT5)
    v = _logistic(ts, a0**2)
    a = np.asarray(sol.params.weights[0])[:, 0, 0]
    b = np.asarray(sol.params.weights[1])[:, 0, 0]
    # Balancedness a = b is exact for the flow and is kept to rounding by the solver.
    np.testing.assert_allclose(a, b, rtol=1e-12)
    # Local tolerance 1e−10 and an escape that amplifies errors by at most ~1/a₀ = 1e3 along the
    # unstable direction: measured max relative error 9e−11; 1e−8 is a 100× margin, while the
    # escape time is off by O(1) (so a(t) by O(1)) if the vector field is wrong by any factor.
    np.testing.assert_allclose(a, np.sqrt(v), rtol=1e-8)
    np.testing.assert_allclose(sol.loss, 0.5 * (v - 1) ** 2, rtol=1e-7, atol=1e-14)
    # `observe` saves a function of the model in place of the parameters: here A_θ = ab = v.
    obs = sj.gradient_flow(loss, net, 15.0, saveat=ts, rtol=1e-10, observe=lambda m: m.matrix(),
                           solver=TSIT5)
    assert obs.params.shape == (31, 1, 1)
    np.testing.assert_allclose(obs.params[:, 0, 0], v, rtol=1e-8)


def test_width_one_events_closed_form():
    """EscapeRadius(r) and LossBelow(ℓ) fire at the closed-form times of the logistic solution:
    ‖θ‖² = 2v = r², ½(v − y)² = ℓ (SPEC §1)."""
    a0 = 1e-3
    loss, net = _width_one(a0)
    r, level = 0.5, 0.1
    t_r = _logistic_time(r**2 / 2, a0**2)
    t_l = _logistic_time(1 - np.sqrt(2 * level), a0**2)
    for event, expected in ((sj.EscapeRadius(r), t_r), (sj.LossBelow(level), t_l)):
        sol = sj.gradient_flow(loss, net, 15.0, saveat=np.linspace(0, 15, 16), rtol=1e-10,
                               event=event, solver=TSIT5)
        # Event times are root-found on the interpolant (tolerance 1e−12); the trajectory itself
        # is accurate to ~1e−10 relative, so the time is too (the crossing is transversal;
        # measured 3e−11). A save-grid time would be off by up to 1 (the grid spacing).
        np.testing.assert_allclose(sol.event_time, expected, rtol=1e-9)
        assert sol.result == sj.RESULTS.successful
        # Save times after the terminating event are not filled in; the state at the event is
        # `final_params` (at stop_time), on the event's surface to the root finder's 1e−10.
        assert np.all(np.isinf(np.asarray(sol.loss)[np.asarray(sol.ts) > expected]))
        np.testing.assert_allclose(sol.stop_time, sol.event_time, rtol=1e-15)
        v_stop = float(sol.final_params.matrix()[0, 0])
        np.testing.assert_allclose(v_stop, _logistic(float(sol.event_time), a0**2), rtol=1e-8)
        if isinstance(event, sj.EscapeRadius):
            np.testing.assert_allclose(np.sqrt(2 * v_stop), r, rtol=1e-9)


@pytest.mark.parametrize("solver", ["tsit5", "default"])
def test_against_scipy_dop853(dln, solver):
    """The flow of a depth-3 DLN from α = 1e−2 agrees with scipy's DOP853 (rtol 1e−10, atol 1e−14)
    on a hand-written numpy gradient, at every save time through plateau, escape and two drops,
    with Tsit5 and with the default `AutoStiff`."""
    problem, net = dln
    kw = dict(solver=TSIT5) if solver == "tsit5" else {}
    sol = sj.gradient_flow(problem, net, T1, saveat=TS, rtol=1e-8, **kw)
    rhs = _numpy_dln_rhs(problem, [w.shape for w in net.weights])
    v0 = np.concatenate([np.asarray(w).ravel() for w in net.weights])
    ref = solve_ivp(rhs, (0.0, T1), v0, method="DOP853", rtol=1e-10, atol=1e-14, t_eval=TS)
    assert ref.success
    ours, theirs = _flat(sol.params.weights), ref.y.T
    err = np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    # Engine rtol = 1e−8 (atol = 1e−8·RMS(θ₀)). Errors made on the plateau are amplified through
    # the escape by the growth of the unstable direction (‖θ‖ grows ~100×) and relax on the
    # plateaus after it; Tsit5: measured max ≈ 4e−7 (at the escape), ~5e−9 elsewhere. 3e−6 is a
    # 7× margin; a wrong gradient or a skipped stage would give O(1) errors after the escape.
    # AutoStiff: save times inside its implicit steps lie on the straight line between the
    # step's endpoints, O(h²θ'') off the curve: measured 4.4e−6 at one save time after the
    # second drop (step endpoints agree as well as Tsit5's); 2e−5 is a 4.5× margin.
    assert err.max() < (3e-6 if solver == "tsit5" else 2e-5), err
    assert err[-1] < 1e-7, err
    # Both drops were reached: the final loss is at the global minimum (the data are rank 2).
    assert float(sol.loss[-1]) < 1e-10 and float(sol.loss[0]) > 1.0


def _balancedness(weights):
    """D_ℓ = W_{ℓ+1}ᵀW_{ℓ+1} − W_ℓW_ℓᵀ for ℓ = 1..L−1, at every save time."""
    return [
        jnp.einsum("tij,tik->tjk", w_next, w_next) - jnp.einsum("tij,tkj->tik", w, w)
        for w, w_next in zip(weights[:-1], weights[1:])
    ]


def test_balancedness_conserved(dln):
    """The balancedness differences W_{ℓ+1}ᵀW_{ℓ+1} − W_ℓW_ℓᵀ are conserved along the flow
    (SPEC §2), here from an unbalanced O(1) draw whose weights change by O(1)."""
    problem, net = dln
    net = init.scale(net, 100.0)  # α = 1: D(0) = O(1), not O(α²)
    sol = sj.gradient_flow(problem, net, T1, saveat=TS, rtol=1e-8, solver=TSIT5)
    weights = sol.params.weights
    moved = jnp.linalg.norm(weights[0][-1] - weights[0][0]) / jnp.linalg.norm(weights[0][0])
    assert moved > 0.1  # the invariant is not trivially satisfied by a static trajectory
    for d in _balancedness(weights):
        drift = jnp.linalg.norm(d - d[:1], axis=(1, 2)) / jnp.linalg.norm(d[0])
        # Each D_ℓ is a difference of O(1) Gram matrices computed from weights accurate to
        # ~1e−8 relative (rtol): measured drift ≤ 7e−9; 1e−7 is a 14× margin. Without conservation
        # (e.g. a wrong gradient for one layer) D changes at O(1).
        assert float(drift.max()) < 1e-7


def test_rotation_equivariance(dln, getkey):
    """Rotating the hidden layers of θ₀ by orthogonal O₁, O₂ —
    (W₁, W₂, W₃) ↦ (O₁W₁, O₂W₂O₁ᵀ, W₃O₂ᵀ) — rotates the whole trajectory the same way and leaves
    A_θ(t) unchanged (SPEC §2)."""
    problem, net = dln
    o1, _ = jnp.linalg.qr(jr.normal(getkey(), (4, 4)))
    o2, _ = jnp.linalg.qr(jr.normal(getkey(), (4, 4)))

    def rotate(w1, w2, w3):
        return o1 @ w1, o2 @ w2 @ o1.T, w3 @ o2.T

    rotated = DeepLinear(WIDTHS, key=jr.key(0))
    rotated = eqx.tree_at(lambda m: m.weights, rotated, rotate(*net.weights))
    sol = sj.gradient_flow(problem, net, T1, saveat=TS, rtol=1e-8, solver=TSIT5)
    sol_rot = sj.gradient_flow(problem, rotated, T1, saveat=TS, rtol=1e-8, solver=TSIT5)
    expected = jax.vmap(rotate)(*sol.params.weights)
    ours, theirs = _flat(sol_rot.params.weights), _flat(expected)
    err = np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    # Two solves whose step sequences differ only by rounding (the controller sees rotated
    # errors): measured 4e−8, below each solve's own error (≤ 4e−7, scipy test). 1e−6 is a 25×
    # margin; a non-equivariant flow would differ at O(1) after the escape.
    assert err.max() < 1e-6, err
    # Near the minimum the loss is ≈ 1e−11: there two solves that differ by rounding (states to
    # 4e−8) give losses differing by up to 1.2e−14 (measured), so atol = 1e−12, not 1e−14.
    np.testing.assert_allclose(sol_rot.loss, sol.loss, rtol=1e-5, atol=1e-12)


def test_escape_event_matches_dense_bisection(dln):
    """The EscapeRadius event time equals the root of ‖θ(t)‖ = r found by brentq on the dense
    output of an independent solve (scipy DOP853, rtol 1e−12, numpy gradient) (SPEC §1: t_α(r) is
    root-found, not read off the save grid)."""
    problem, net = dln
    r = 0.3  # ten times ‖θ₀‖: past the plateau, inside the escape
    sol = sj.gradient_flow(
        problem, net, T1, saveat=TS, rtol=1e-10, event=sj.EscapeRadius(r), solver=TSIT5
    )
    assert np.isfinite(sol.event_time) and sol.result == sj.RESULTS.successful
    rhs = _numpy_dln_rhs(problem, [w.shape for w in net.weights])
    v0 = np.concatenate([np.asarray(w).ravel() for w in net.weights])
    t_hi = 1.5 * float(sol.event_time)
    dense = solve_ivp(rhs, (0.0, t_hi), v0, method="DOP853", rtol=1e-12, atol=1e-16,
                      dense_output=True)
    assert dense.success
    t_ref = brentq(lambda t: np.linalg.norm(dense.sol(t)) - r, 0.0, t_hi, xtol=1e-13, rtol=1e-15)
    # Crossing at t ≈ 75 while ‖θ‖ grows at rate ~0.1/unit time: a state error δ (relative,
    # ~1e−9 at rtol 1e−10) shifts the root by ~δ/rate ≈ 1e−8 absolute, ~1e−10 relative. The
    # root finder's tolerance is 1e−12. A save-grid estimate would be off by up to 20 (the grid
    # spacing): 1e−9 relative discriminates by ten decades.
    np.testing.assert_allclose(float(sol.event_time), t_ref, rtol=1e-9)


def test_event_without_stopping(dln):
    """stop_at_event=False records the event time, continues to t1, and then agrees with an
    event-free solve at every save time (SPEC §1)."""
    problem, net = dln
    event = sj.EscapeRadius(0.3)
    stop = sj.gradient_flow(problem, net, T1, saveat=TS, rtol=1e-10, event=event, solver=TSIT5)
    go = sj.gradient_flow(
        problem, net, T1, saveat=TS, rtol=1e-10, event=event, stop_at_event=False, solver=TSIT5
    )
    free = sj.gradient_flow(problem, net, T1, saveat=TS, rtol=1e-10, solver=TSIT5)
    assert go.result == sj.RESULTS.successful
    # Both use the same first solve up to the event: identical up to rounding.
    np.testing.assert_allclose(go.event_time, stop.event_time, rtol=1e-12)
    assert np.all(np.isfinite(np.asarray(go.loss)))
    ours, theirs = _flat(go.params.weights), _flat(free.params.weights)
    err = np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    # The continuation restarts the step-size controller at the event; both are rtol = 1e−10
    # solutions, accurate to ~1e−8 through the escape (cf. the scipy test at 1e−8 → 4e−7);
    # measured 1e−9, so 2e−8 is a 20× margin. Losing the post-event part gives O(1) (or inf).
    assert err.max() < 2e-8, err
    np.testing.assert_allclose(go.loss, free.loss, rtol=1e-6, atol=1e-14)
    # A diffrax.Event passes through with its condition pytree (a dict here) and direction:
    # disarmed after it fires, it fires where the stopped solve does, and the solve goes on.
    def rising(t, y, args, **kwargs):
        return sum(jnp.vdot(w, w) for w in jax.tree_util.tree_leaves(y)) - 0.09

    event = diffrax.Event({"radius": rising}, direction=True)
    stop = sj.gradient_flow(problem, net, T1, saveat=TS, rtol=1e-10, event=event, solver=TSIT5)
    go = sj.gradient_flow(
        problem, net, T1, saveat=TS, rtol=1e-10, event=event, stop_at_event=False, solver=TSIT5
    )
    assert np.isfinite(float(stop.event_time)) and go.result == sj.RESULTS.successful
    np.testing.assert_allclose(go.event_time, stop.event_time, rtol=1e-12)
    assert float(go.stop_time) == T1


def test_max_steps_failure(dln):
    """Too few steps is RESULTS.max_steps_reached (never success), also when continuing past an
    event; with throw=True it raises a RuntimeError naming the cause."""
    problem, net = dln
    sol = sj.gradient_flow(problem, net, T1, saveat=TS, max_steps=20, throw=False)
    assert sol.result == sj.RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 20
    # The state saved before the failure is kept, and is finite.
    assert np.isfinite(float(sol.loss[0]))
    with pytest.raises(RuntimeError, match="maximum number of solver steps"):
        sj.gradient_flow(problem, net, T1, saveat=TS, max_steps=20)
    sol = sj.gradient_flow(
        problem, net, T1, saveat=TS, max_steps=20, throw=False,
        event=sj.EscapeRadius(0.3), stop_at_event=False,
    )
    assert sol.result == sj.RESULTS.max_steps_reached


def test_nonfinite_objective(dln):
    """An objective that is NaN at θ₀ gives RESULTS.nonfinite_trajectory, not success or a hang."""
    problem, net = dln

    def bad(p):
        return problem(p) + jnp.log(jnp.sum(p.weights[0]) - 1e9)  # log of a negative number

    sol = sj.gradient_flow(bad, net, T1, saveat=TS, max_steps=100, throw=False)
    assert sol.result == sj.RESULTS.nonfinite_trajectory
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        sj.gradient_flow(bad, net, T1, saveat=TS, max_steps=100)


def test_continue_flow_from_the_solver_state():
    """A flow computed to T/2 with `keep_solver_state=True` and continued to T by
    `continue_flow` (AutoStiff: its step size, implicit mode and tracked eigenvectors of ∇²L
    carried over) agrees with one solve to T (L = 4 through a plateau; at rtol = 1e−9 measured
    3e−8 in the state, asked 1e−6: the two differ only by where a step ends, the solver's
    error) and needs no warm-up: no more steps than a fresh restart from the same state.
    Misuse is refused with the fix."""
    problem = sj.matrix_completion_problem(jr.key(0), n=4, rank=2)
    net = sj.init.scale(sj.nn.DeepLinear((4, 6, 6, 6, 4), key=jr.key(1)), 0.03)
    t1 = 5e3
    kw = dict(rtol=1e-9, keep_solver_state=True, saveat=np.array([t1 / 2, t1]))
    whole = sj.gradient_flow(problem, net, t1, **kw)
    half = sj.gradient_flow(problem, net, t1 / 2, **dict(kw, saveat=np.array([t1 / 4, t1 / 2])))
    assert int(half.resume["solver_state"]["n_implicit"]) > 0  # stopped on a stiff plateau
    rest = sj.continue_flow(problem, half, t1, **kw)
    fresh = sj.gradient_flow(problem, half.final_params, t1, **dict(kw, t0=t1 / 2))
    gap = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree_util.tree_leaves(whole.stop_state),
                        jax.tree_util.tree_leaves(rest.stop_state))
    )
    assert gap <= 1e-6
    assert float(rest.ts[0]) == t1 / 2 and float(rest.stop_time) == t1
    assert int(rest.stats["num_steps"]) <= int(fresh.stats["num_steps"])
    without = eqx.tree_at(lambda s: s.resume, half, replace_fn=lambda _: None)
    with pytest.raises(ValueError, match="keep_solver_state=True"):
        sj.continue_flow(problem, without, t1, **kw)
    stopped = eqx.tree_at(lambda s: s.stop_time, half, half.stop_time / 2)  # as at an event
    with pytest.raises(ValueError, match="before its t1"):
        sj.continue_flow(problem, stopped, t1, **kw)
