"""Skipping the origin by Lemma 13: `origin_handoff` and `gradient_flow(origin_defect=)`.

Reference: the flow of L integrated directly from θ₀ with Dopri8 at rtol 1e−11."""

import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from optax.tree_utils import tree_add_scale
from optimistix import two_norm

import saddlejax as sj


def _problem(alpha):
    problem = sj.matrix_completion_problem(jr.key(0), n=6, rank=2)
    net = sj.init.scale(sj.nn.DeepLinear((6, 12, 12, 6), key=jr.key(1)), alpha)
    return problem, net


def _direct(problem, net, t):
    sol = sj.gradient_flow(
        problem, net, t, saveat=jnp.array([t]), solver=diffrax.Dopri8(), rtol=1e-11
    )
    return sol.params_at(0)


@pytest.mark.parametrize("alpha", [1e-2, 1e-3])
def test_handoff_error_is_bounded_by_the_reported_defect(alpha):
    """The handoff state is within the reported relative defect ε_s of the directly integrated
    flow at the same time (measured ≈ 0.3–0.5·ε_s on this problem and the default one),
    the defect stops at the tolerance, and t_s obeys Lemma 13's rescaling t_s = τ_s/λ^{k−2}."""
    problem, net = _problem(alpha)
    tol = 1e-4
    ho = sj.origin_handoff(problem, net, defect_tol=tol)
    assert ho.result == sj.RESULTS.successful
    assert ho.order == 3
    assert float(ho.defect) == pytest.approx(tol, rel=1e-6)  # root-found on the defect
    assert float(ho.time) == pytest.approx(float(ho.rescaled_time) / float(ho.scale), rel=1e-12)
    ref = _direct(problem, net, float(ho.time))
    err = two_norm(tree_add_scale(ho.params.weights, -1.0, ref.weights)) / two_norm(ref.weights)
    assert float(err) < float(ho.defect)
    # The handoff radius is set by the defect (ε ∝ ‖θ‖^{m−k} = ‖θ‖³ here), not by α: 0.156
    # at both α.
    assert 0.1 < float(two_norm(ho.params.weights)) < 0.3


def test_gradient_flow_with_origin_defect_matches_direct_flow():
    """Same escape time (to 1e−5 relative) and loss curve as the flow integrated from θ₀."""
    problem, net = _problem(1e-2)
    t1 = 300.0 / 1e-2
    kw = dict(event=sj.EscapeRadius(2.0), stop_at_event=False, rtol=1e-8)
    direct = sj.gradient_flow(problem, net, t1, **kw)
    skipped = sj.gradient_flow(problem, net, t1, origin_defect=1e-5, **kw)
    assert float(skipped.stats["origin_time"]) > 0.5 * float(direct.event_time)
    assert float(skipped.stats["origin_defect"]) <= 1e-5 * (1 + 1e-6)
    rel = abs(float(skipped.event_time) - float(direct.event_time)) / float(direct.event_time)
    assert rel < 1e-5
    # Save times before the handoff come from the rescaled H-flow: the loss there is L's.
    before = skipped.ts < skipped.stats["origin_time"]
    assert int(jnp.sum(before)) > 10
    assert float(jnp.max(jnp.abs(skipped.loss - direct.loss))) < 1e-4
    assert int(skipped.stats["clock_restarts"]) == 0  # t·‖∇L‖/‖θ‖ stays below 1e7
    # Restarting the clock (offset + a new clock from 0) changes nothing measurable: here it
    # restarts wherever θ moves by its own size in less than t/3, 3 times (traced: the same
    # compiled solve; the loss curves stay 2.9e−7 from the direct flow's, as without).
    restarted = sj.gradient_flow(problem, net, t1, origin_defect=1e-5, clock_restart=3.0, **kw)
    assert int(restarted.stats["clock_restarts"]) >= 2
    rel = abs(float(restarted.event_time) - float(direct.event_time)) / float(direct.event_time)
    assert rel < 1e-5
    assert float(jnp.max(jnp.abs(restarted.loss - direct.loss))) < 1e-4


def test_handoff_rejects_a_non_critical_origin_and_bad_tolerance():
    problem, net = _problem(1e-2)
    with pytest.raises(ValueError, match="defect_tol"):
        sj.origin_handoff(problem, net, defect_tol=0.0)
    with pytest.raises(ValueError, match="critical point"):
        sj.origin_handoff(lambda p: jnp.sum(p["w"]), {"w": jnp.ones(3) * 1e-3})


TINY = [1e-3, 1e-10, 1e-30, 1e-60]


def test_handoff_reaches_tiny_alpha_at_bounded_cost():
    """Down to α = 1e−60 (t_s ≈ 10⁶⁰ here, k = 3) the handoff succeeds, α^{k−2}·t_s converges to
    the blow-up time T_H(θ̃) of `blowup_time` (a separate solve with its own tail law; 1e−9
    relative at the solvers' tolerances), the handoff state stops depending on α, and the
    unit-scale solve takes fewer than 200 steps at every α (its steps grow like log(1/α)).
    Integrated in τ, the handoff failed from α = 1e−5 on (depth 4)."""
    hos = [sj.origin_handoff(*_problem(a)) for a in TINY]
    assert all(ho.result == sj.RESULTS.successful for ho in hos)
    scaled = [a * float(ho.time) for a, ho in zip(TINY, hos)]
    unit = eqx.partition(_problem(1.0)[1], eqx.is_inexact_array)[0]
    T = float(sj.blowup_time(hos[0].term, unit).time)
    assert scaled[2] == pytest.approx(T, rel=1e-9)
    assert scaled[3] == pytest.approx(T, rel=1e-9)
    assert abs(scaled[0] - T) > 1e-6 * T  # at α = 1e−3 the O(α) remainder is visible
    far, farther = hos[2].params.weights, hos[3].params.weights
    assert float(two_norm(tree_add_scale(far, -1.0, farther)) / two_norm(far)) < 1e-8
    assert max(int(ho.stats["h_steps"]) for ho in hos) < 200


def test_flow_after_a_tiny_alpha_handoff_resolves_the_drop():
    """The flow of L runs on a clock started at the handoff: at α = 1e−15 and 1e−25 (t_s ≈ 10¹⁵,
    10²⁵, where one float spacing of t is 0.5 and 10¹⁰) the drop is resolved: its time after
    the handoff (‖θ‖ = 2 at 44.571, the two 1.3e−6 apart) is the same at both α to 1e−5, and
    at 1e−25 the event's global time is the handoff's in float64 (the sum rounds;
    `event_time_after_origin` keeps the rest). The saves before t_s come from the polar solve
    inverted at each save time: they equal λ·Γ_H(λ·t, u₀) integrated directly in τ (Dopri8,
    rtol 1e−11) to 1e−7 relative (measured ≤ 1.3e−8), up to τ = 0.999·τ_s. Later escapes,
    seeded at the scale α in O(1) entries, are not representable: warned. (The options are
    the direct-flow test's: one compiled solve.)"""
    after = []
    for alpha in (1e-15, 1e-25):
        problem, net = _problem(alpha)
        ho = sj.origin_handoff(problem, net, defect_tol=1e-5)
        # ≈ 100 past the handoff: a t1 ≥ t_s·(1 + 1e−16) would reach the next escape, which
        # is seeded by rounding and not resolvable (step_size_underflow).
        t1 = np.nextafter(np.nextafter(float(ho.time) + 100.0, np.inf), np.inf)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sol = sj.gradient_flow(
                problem, net, t1, origin_defect=1e-5, event=sj.EscapeRadius(2.0),
                stop_at_event=False, rtol=1e-8,
            )
        said = " ".join(str(w.message) for w in caught)
        assert "the first drop is resolved" in said and "seeded by rounding" in said
        assert sol.result == sj.RESULTS.successful
        t_s = float(sol.stats["origin_time"])
        assert float(sol.event_time) == t_s or alpha > 1e-20
        assert 1.0 < float(sol.stats["event_time_after_origin"]) < 100.0
        after.append(float(sol.stats["event_time_after_origin"]))
        assert float(sol.loss[-1]) < 0.5 * float(sol.loss[0])  # it dropped
        # the saves before the handoff
        lam, tau_s = float(ho.scale), float(ho.rescaled_time)
        frac = sol.ts / t_s
        picked = [int(i) for i in jnp.flatnonzero((frac > 0.2) & (frac < 0.999))[-3:]]
        assert len(picked) == 3 and float(frac[picked[-1]]) > 0.9
        u0 = jax.tree_util.tree_map(
            lambda x: x / lam, eqx.partition(net, eqx.is_inexact_array)[0]
        )
        for i in picked:
            ref = sj.theory.h_flow(ho.term.H, u0, float(frac[i]) * tau_s)
            got = jax.tree_util.tree_map(lambda x, i=i: x[i] / lam, sol.params)
            err = two_norm(tree_add_scale(got, -1.0, ref)) / two_norm(ref)
            assert float(err) < 1e-7, (float(frac[i]), float(err))
    assert after[0] == pytest.approx(after[1], rel=1e-5)
