"""Skipping the origin by Lemma 13: `origin_handoff` and `gradient_flow(origin_defect=)`.

Reference: the flow of L integrated directly from θ₀ with Dopri8 at rtol 1e−11."""

import diffrax
import jax.numpy as jnp
import jax.random as jr
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


def test_handoff_rejects_a_non_critical_origin_and_bad_tolerance():
    problem, net = _problem(1e-2)
    with pytest.raises(ValueError, match="defect_tol"):
        sj.origin_handoff(problem, net, defect_tol=0.0)
    with pytest.raises(ValueError, match="critical point"):
        sj.origin_handoff(lambda p: jnp.sum(p["w"]), {"w": jnp.ones(3) * 1e-3})
