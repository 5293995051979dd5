"""The relu-lowrank experiment's own logic (Bantzis, Simon & Jacot; SPEC §9): config validation
and the independent single-neuron value ŝ₁. The preset's quick mode runs in
tests/test_notebooks.py (notebooks/bantzis_relu_escape.ipynb)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax.experiments import configure
from saddlejax.experiments._relu_lowrank import (
    ReluLowRankConfig,
    single_neuron_speed,
    teacher_problem,
)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(depths=(1, 2)), "depths"),
        (dict(depths=(3, 3)), "depths"),
        (dict(depths=()), "depths"),
        (dict(width=0), "width"),
        (dict(negative_slope=1.0), "negative_slope"),
        (dict(restarts=0), "restarts"),
        (dict(speed_rtol=2.0), "speed_rtol"),
        (dict(rank_rtol=0.0), "rank_rtol"),
    ],
)
def test_config_names_the_bad_field(change, field):
    """A bad value raises a one-line ValueError naming the field in backquotes."""
    with pytest.raises(ValueError, match=f"`{field}`") as info:
        ReluLowRankConfig(**change)
    assert "\n" not in str(info.value)


def test_preset_resolves():
    """The preset loads; depths are sorted; the quick mode is smaller."""
    full = configure("relu-lowrank")[0].config
    quick = configure("relu-lowrank", quick=True)[0].config
    assert full.depths == tuple(sorted(full.depths)) and full.depths[0] == 2
    assert quick.width < full.width and len(quick.depths) <= len(full.depths)
    assert ReluLowRankConfig(depths=(4, 2)).depths == (2, 4)


def test_teacher_is_the_escape_commands_data():
    """`teacher_problem(seed)` is the data of `saddlejax escape --preset relu3 --seed seed`."""
    from saddlejax.experiments._escape import EscapeConfig, _problem

    p = teacher_problem(3)
    q, _ = _problem(EscapeConfig(model="relu", problem="teacher"), jr.split(jr.key(3))[0])
    assert np.array_equal(np.asarray(p.x), np.asarray(q.x)) and p.x.shape == (64, 8)


@pytest.mark.parametrize("slope", [0.0, 0.3])
def test_single_neuron_speed_is_the_maximum_on_the_circle(slope, getkey):
    """On 2-D inputs the sphere is a circle: ŝ₁ = max_φ ‖Σ_i g_i σ(w_φᵀx_i)‖ by brute force
    over 200,000 angles agrees with the projected-gradient search (a max on a kink included)."""
    x = jr.normal(getkey(), (30, 2))
    y = jr.normal(getkey(), (30, 2))
    problem = sj.SquareLoss(x, y)
    found = single_neuron_speed(problem, slope, key=getkey(), n_starts=1024)
    phi = np.linspace(0, 2 * np.pi, 200_000)
    w = np.stack([np.cos(phi), np.sin(phi)])
    z = np.asarray(x) @ w
    g = -np.asarray(problem.output_gradient_at_zero())
    brute = np.linalg.norm(g.T @ np.where(z > 0, z, slope * z), axis=0).max()
    # the grid's own error is O((2π/2e5)·‖∇‖) ≈ 1e-5 relative
    assert found == pytest.approx(brute, rel=1e-4)
    assert found >= brute * (1 - 1e-4)


def test_single_neuron_speed_is_a_two_layer_escape_speed(getkey):
    """The normalisation of ŝ₁ is the library's s*: the width-1 two-layer direction
    ρ = (w*ᵀ/√2, a/√2), w* the maximiser on the circle and a = c(w*)/‖c(w*)‖,
    c(w) = Σ_i g_i σ(wᵀx_i), has s = −2H(ρ) = ‖c(w*)‖ = ŝ₁ (Cauchy–Schwarz makes it the
    two-layer optimum)."""
    x = jr.normal(getkey(), (30, 2))
    problem = sj.SquareLoss(x, jr.normal(getkey(), (30, 2)))
    s1 = single_neuron_speed(problem, 0.0, key=getkey(), n_starts=1024)
    phi = np.linspace(0, 2 * np.pi, 200_000)
    z = np.asarray(x) @ np.stack([np.cos(phi), np.sin(phi)])
    g = -np.asarray(problem.output_gradient_at_zero())
    c = g.T @ np.maximum(z, 0)
    best = int(np.argmax(np.linalg.norm(c, axis=0)))
    w_star = np.array([np.cos(phi[best]), np.sin(phi[best])])
    a = c[:, best] / np.linalg.norm(c[:, best])
    net = sj.nn.DeepReLU((2, 1, 2), key=getkey())
    rho = eqx.tree_at(
        lambda m: m.weights,
        net,
        (jnp.asarray(w_star[None, :] / np.sqrt(2)), jnp.asarray(a[:, None] / np.sqrt(2))),
    )
    origin = jax.tree_util.tree_map(
        lambda v: jnp.zeros_like(v) if eqx.is_inexact_array(v) else v, net
    )
    term = sj.taylor_term(problem, origin, method="outputs")
    speed = float(sj.escape_speed(term.H, 2, rho))
    assert speed == pytest.approx(s1, rel=1e-4)
