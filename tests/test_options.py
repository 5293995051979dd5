"""One set of flow options for `gradient_flow` and `sweep`, and one `RESULTS` for every
failure: with `throw=False` no numerical failure raises, and each has its own code."""

import dataclasses
import re

import diffrax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax.nn import DeepLinear

WIDTHS = (3, 4, 3)


def _problem():
    return sj.matrix_completion_problem(jr.key(0), n=3, rank=2, observed=0.7)


def _draw(key):
    return DeepLinear(WIDTHS, key=key)


# A non-default value for every field of FlowOptions, valid for a small DLN flow to t1 = 30, in
# two groups that can be combined (the origin handoff needs every layer trainable, and `n_save`
# matters only without `saveat`). Tsit5 keeps the compilations short; `AutoStiff` is the default.
GROUPS = [
    dict(
        solver=diffrax.Dopri5(),
        rtol=1e-7,
        atol=1e-10,
        t0=1.0,
        saveat=np.linspace(1.0, 30.0, 5),
        observe=lambda m: m.matrix(),
        event=sj.EscapeRadius(0.5),
        stop_at_event=False,
        require_event=True,
        trainable=sj.freeze(_draw(jr.key(0)), lambda m: m.weights[0]),
        dt0=1e-3,
        max_steps=50_000,
        record_steps=True,
        progress=True,
    ),
    dict(
        solver=diffrax.Tsit5(),
        n_save=16,
        origin_defect=1e-4,
        clock_restart=3.0,
        adjoint=diffrax.ForwardMode(),
        keep_solver_state=True,
    ),
]


def test_every_option_has_a_non_default_case():
    """The groups above cover every field of FlowOptions (a new option must be added to them)."""
    fields = {f.name for f in dataclasses.fields(sj.FlowOptions)}
    assert fields == set(GROUPS[0]) | set(GROUPS[1])
    defaults = sj.FlowOptions()
    for group in GROUPS:
        for name, value in group.items():
            assert value is not getattr(defaults, name)


@pytest.mark.parametrize("group", range(len(GROUPS)))
def test_every_flow_option_works_in_a_sweep(group):
    """Every option of `gradient_flow` is accepted by `sweep` and has the same effect: the
    sweep's trajectory equals `gradient_flow` from the same θ₀ with the same options."""
    kw = GROUPS[group]
    # The origin handoff skips a stretch only when θ₀'s defect is below `origin_defect`.
    problem, seed = _problem(), 1
    alpha, t1 = (1e-3, 100.0) if "origin_defect" in kw else (0.1, 30.0)
    ref = sj.gradient_flow(problem, sj.init.scale(_draw(jr.key(seed)), alpha), t1, **kw)
    swept = sj.sweep(problem, _draw, t1, alphas=[alpha], seeds=[seed], **kw)
    sol = swept.solution
    assert swept.failures() == []
    np.testing.assert_allclose(sol.ts[0, 0], ref.ts, rtol=1e-12)
    # One trajectory each: equal to rounding where the loss is O(1) (rtol 1e−9). Near the
    # minimum the loss is the square of the state's tolerance-level error (rtol 1e−6 at most:
    # ≤ 1e−11·L(θ₀)); the two solves' save grids differ in the last bits (t0 + span·grid in a
    # sweep), which is enough to move that floor (measured 2.3e−11 absolute): atol 1e−10·L(θ₀).
    loss0 = float(ref.loss[0])
    np.testing.assert_allclose(sol.loss[0, 0], ref.loss, rtol=1e-9, atol=1e-10 * loss0)
    # The handoff's event is root-found to 1e−12, and the vmapped solve's last bits differ
    # (t_s moved 2.2e−13 here): the flow of L then starts from a state a few ulps away, and
    # its step sequence may differ by a step or two (measured 134 / 132) while the trajectory
    # agrees to the bounds above. Without the handoff the steps are the same.
    slack = 0.02 * float(ref.stats["num_steps"]) if "origin_defect" in kw else 0
    assert abs(int(sol.stats["num_steps"][0, 0]) - int(ref.stats["num_steps"])) <= slack
    if "event" in kw:
        assert np.isfinite(float(ref.event_time))
        np.testing.assert_allclose(sol.event_time[0, 0], ref.event_time, rtol=1e-9)
    if "observe" in kw:
        assert sol.params.shape[-2:] == (3, 3)
    if "record_steps" in kw:
        np.testing.assert_allclose(sol.steps["t"][0, 0], ref.steps["t"], rtol=1e-12)
    if "origin_defect" in kw:
        assert float(ref.stats["origin_time"]) > 0
        np.testing.assert_allclose(
            sol.stats["origin_time"][0, 0], ref.stats["origin_time"], rtol=1e-9
        )
        assert sol.stats["clock_restarts"][0, 0] == ref.stats["clock_restarts"]


def test_solver_strings_are_refused_with_the_fix():
    """`solver=` takes objects; a name gets a message pointing at the objects and at
    `solver_from_name` (the CLI's convenience); a keyword that is no option is named, with the
    closest option where one is close."""
    net = sj.init.scale(_draw(jr.key(0)), 0.1)
    with pytest.raises(ValueError, match=r"solver_from_name\('tsit5'\)"):
        sj.gradient_flow(_problem(), net, 1.0, solver="tsit5")
    with pytest.raises(ValueError, match="did you mean 'rodas5p'\\? the names are tsit5"):
        sj.gradient_flow(_problem(), net, 1.0, solver="rodas5")
    with pytest.raises(ValueError, match="unknown solver name 'rodas5'; did you mean 'rodas5p'"):
        sj.solvers.solver_from_name("rodas5")
    with pytest.raises(ValueError, match="`krylov` is not an option of the flow; the options"):
        sj.gradient_flow(_problem(), net, 1.0, krylov=None)
    with pytest.raises(ValueError, match="`max_step` .* did you mean 'max_steps'"):
        sj.sweep(_problem(), _draw, 1.0, alphas=[0.1], seeds=[0], max_step=10)


def test_throw_false_returns_every_failure_kind():
    """Every failure the engine can produce comes back as its own `RESULTS` code with
    `throw=False`, never as an exception and never as success; with `throw=True` the same call
    raises a RuntimeError carrying that code's message (outside `jit` the raise follows the
    compiled solve, which is not compiled again). The default solver's `max_steps_reached` is
    `test_flow.test_max_steps_failure`'s; Tsit5 compiles in a fraction of its time."""
    problem = _problem()
    net = sj.init.scale(_draw(jr.key(1)), 0.1)
    deep = sj.init.scale(DeepLinear((3, 4, 4, 3), key=jr.key(1)), 0.01)

    def nan_objective(p):
        return problem(p) + jnp.log(jnp.sum(p.weights[0]) - 1e9)

    def minimum_at_origin(p):  # the origin is a minimum: its H-flow never leaves it
        return sum(jnp.sum(w**2) for w in p.weights) ** 2

    tsit5 = diffrax.Tsit5()
    cases = [
        # (objective, params0, t1, options, expected code)
        (problem, net, 300.0, dict(max_steps=5, solver=tsit5), sj.RESULTS.max_steps_reached),
        (nan_objective, net, 300.0, dict(max_steps=100, solver=tsit5),
         sj.RESULTS.nonfinite_trajectory),
        (minimum_at_origin, deep, 1e4, dict(origin_defect=1e-4, solver=tsit5),
         sj.RESULTS.origin_not_left),
        (problem, deep, 1.0, dict(origin_defect=1e-4, solver=tsit5),
         sj.RESULTS.origin_handoff_after_t1),
    ]
    for objective, params0, t1, options, code in cases:
        sol = sj.gradient_flow(objective, params0, t1, throw=False, n_save=4, **options)
        assert sol.result == code, (code, sj.RESULTS[sol.result])
        assert not bool(sol.successful)
        with pytest.raises(RuntimeError, match=re.escape(sj.RESULTS[code][:30])):
            sj.gradient_flow(objective, params0, t1, n_save=4, **options)
    # Gradient descent's own failure (a step above 2/λ_max).
    sol = sj.gradient_descent(problem, net, learning_rate=1e3, steps=200, throw=False)
    assert sol.result == sj.RESULTS.nonfinite_trajectory
    # The origin handoff on its own reports, it does not raise.
    ho = sj.origin_handoff(minimum_at_origin, deep)
    assert ho.result == sj.RESULTS.origin_not_left
    # Escape directions and the fixed point of Φ share the enumeration.
    assert sj.RESULTS.escape_not_converged != sj.RESULTS.fixed_point_not_converged


def test_sweep_reports_failures_and_throws_only_when_asked():
    """A sweep returns its failures per trajectory; `throw=True` raises after the whole grid,
    naming how many failed and why."""
    problem = _problem()
    kw = dict(alphas=[0.1], seeds=[0, 1], max_steps=5, n_save=4, progress=False)
    swept = sj.sweep(problem, _draw, 300.0, **kw)
    assert swept.stats["n_failed"] == 2
    assert {m for _, _, m in swept.failures()} == {sj.RESULTS[sj.RESULTS.max_steps_reached]}
    with pytest.raises(RuntimeError, match="2 of 2"):
        sj.sweep(problem, _draw, 300.0, throw=True, **kw)
