"""Bad input raises a ValueError naming the argument; runtime failures raise under jit/vmap
(STYLE: Errors)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax import init
from saddlejax.nn import DeepLinear, DeepReLU, SquaredReLU, TwoLayer


@pytest.fixture(scope="module")
def small():
    """A 2×2 completion problem, a (2, 3, 2) DLN and a data set of 5 samples with 2 outputs."""
    problem = sj.MatrixCompletion(jnp.eye(2), jnp.ones((2, 2)))
    net = init.scale(DeepLinear((2, 3, 2), key=jr.key(0)), 0.5)
    return problem, net


def test_objective_shapes():
    """Mismatched data shapes name `x`, `y`, `mask`; a wrong normalization names it (SPEC §3)."""
    with pytest.raises(ValueError, match="`x`"):
        sj.SquareLoss(jnp.ones(5), jnp.ones((5, 1)))
    with pytest.raises(ValueError, match="`y`"):
        sj.SquareLoss(jnp.ones((5, 3)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="`y`"):
        sj.LogisticLoss(jnp.ones((5, 3)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="`mask`"):
        sj.MatrixCompletion(jnp.ones((3, 3)), jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="`target`"):
        sj.MatrixCompletion(jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="`normalization`"):
        sj.SquareLoss(jnp.ones((5, 3)), jnp.ones((5, 2)), normalization="median")
    with pytest.raises(ValueError, match="matrix_cost"):
        sj.matrix_cost_gradient_at_zero(sj.LogisticLoss(jnp.ones((5, 3)), jnp.ones(5)))


def test_model_output_shape_mismatch(getkey):
    """A model whose output does not match `y` is a ValueError, also when it would broadcast
    silently ((n, 1) against (n, 2)), also for a list of matrices and inside jax.jit."""
    loss = sj.SquareLoss(jr.normal(getkey(), (5, 3)), jr.normal(getkey(), (5, 2)))
    for widths in ((3, 4, 1), (3, 4, 3)):
        net = DeepLinear(widths, key=getkey())
        with pytest.raises(ValueError, match="`y`"):
            loss(net)
        with pytest.raises(ValueError, match="`y`"):
            jax.jit(lambda n: loss(n))(net)
        with pytest.raises(ValueError, match="end-to-end matrix"):
            loss(list(net.weights))
    with pytest.raises(ValueError, match="`y`"):
        sj.LogisticLoss(jnp.ones((5, 3)), jnp.ones(5))(TwoLayer(3, 4, 2, key=getkey()))
    mc = sj.MatrixCompletion(jnp.ones((3, 3)), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="`target`"):
        mc(DeepLinear((3, 4, 1), key=getkey()))
    with pytest.raises(ValueError, match="`y`"):
        sj.gradient_flow(loss, DeepLinear((3, 4, 1), key=getkey()), 1.0)


@pytest.mark.parametrize("widths", [(3,), (3, 0, 2), (3, -1, 2), (3, 2.5, 2), "abc", None])
def test_bad_widths(getkey, widths):
    """Widths must be ≥ 2 positive integers (input, ..., output); `widths` is named."""
    with pytest.raises(ValueError, match="`widths`"):
        DeepLinear(widths, key=getkey())
    with pytest.raises(ValueError, match="`widths`"):
        DeepReLU(widths, key=getkey())


def test_bad_network_settings(getkey):
    """Other network arguments: sizes, negative slope, std, activation are named."""
    with pytest.raises(ValueError, match="`sizes`"):
        TwoLayer(3, 0, 1, key=getkey())
    with pytest.raises(ValueError, match="`sizes`"):
        SquaredReLU(-2, 4, key=getkey())
    with pytest.raises(ValueError, match="`negative_slope`"):
        DeepReLU((3, 4, 2), 1.5, key=getkey())
    with pytest.raises(ValueError, match="`std`"):
        DeepLinear((3, 4, 2), key=getkey(), std=-1.0)
    with pytest.raises(ValueError, match="`std`"):
        DeepLinear((3, 4, 2), key=getkey(), std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="`activation`"):
        TwoLayer(3, 4, 1, "sigmoidal", key=getkey())


def test_bad_scales(small):
    """α ≤ 0 and invalid scale conversions name `alpha`, `width`, `std` (SPEC §1)."""
    _, net = small
    for alpha in (-0.1, 0.0):
        with pytest.raises(ValueError, match="`alpha`"):
            init.scale(net, alpha)
    with pytest.raises(ValueError, match="`alpha`"):
        init.gamma_from_alpha(100, -1.0, 0.1)
    with pytest.raises(ValueError, match="`width`"):
        init.gamma_from_alpha(1, 0.1, 0.1)
    with pytest.raises(ValueError, match="`width`"):
        init.gamma_std(0, 1.0)
    with pytest.raises(ValueError, match="`std`"):
        init.alpha_from_std(-1.0, 0.1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rtol=0.0), "rtol"),
        (dict(rtol=-1e-6), "rtol"),
        (dict(atol=-1e-9), "atol"),
        (dict(atol=0.0), "atol"),
        (dict(solver="rk4"), "solver"),
        (dict(solver=3), "solver"),
        (dict(t1=0.0), "t1"),
        (dict(t1=-1.0), "t1"),
        (dict(t0=5.0, t1=3.0), "t1"),
        (dict(t1=float("inf")), "t1"),
        (dict(saveat=[-1.0, 0.5]), "saveat"),
        (dict(saveat=[0.0, 2.0]), "saveat"),
        (dict(saveat=[0.5, 0.2]), "saveat"),
        (dict(saveat=np.zeros((2, 2))), "saveat"),
        (dict(saveat=[]), "saveat"),
        (dict(saveat=diffrax.SaveAt(steps=True)), "saveat"),
        (dict(n_save=2), "n_save"),
        (dict(max_steps=0), "max_steps"),
        (dict(max_steps=10.5), "max_steps"),
        (dict(event="escape"), "event"),
    ],
)
def test_bad_flow_arguments(small, kwargs, name):
    """gradient_flow rejects bad tolerances, solver names, time spans, save times and events
    before compiling anything, with a ValueError naming the argument (STYLE: Errors)."""
    problem, net = small
    kwargs = dict(kwargs)
    t1 = kwargs.pop("t1", 1.0)
    with pytest.raises(ValueError, match=f"`{name}`"):
        sj.gradient_flow(problem, net, t1, **kwargs)


def test_bad_state(small):
    """Nothing trainable, or a trainable integer leaf, is a ValueError naming `params0`;
    so is a negative escape radius."""
    problem, net = small
    with pytest.raises(ValueError, match="`params0`"):
        sj.gradient_flow(problem, net, 1.0, trainable=lambda x: False)
    with pytest.raises(ValueError, match="trainable leaf"):
        sj.gradient_flow(lambda p: jnp.sum(p["a"] ** 2), {"a": jnp.arange(3)}, 1.0,
                         trainable=lambda x: True)
    with pytest.raises(ValueError, match="`radius`"):
        sj.EscapeRadius(-1.0)


def test_bad_descent_arguments(small):
    """gradient_descent names `learning_rate` (≤ 0), `steps` and `save_every` (not dividing)."""
    problem, net = small
    for lr in (0.0, -1e-3):
        with pytest.raises(ValueError, match="`learning_rate`"):
            sj.gradient_descent(problem, net, learning_rate=lr, steps=10)
    with pytest.raises(ValueError, match="`steps`"):
        sj.gradient_descent(problem, net, learning_rate=0.1, steps=0)
    for save_every in (3, 0, 20):
        with pytest.raises(ValueError, match="`save_every`"):
            sj.gradient_descent(problem, net, learning_rate=0.1, steps=10, save_every=save_every)


def test_bad_sweep_arguments(small):
    """sweep names `alphas` (≤ 0 or empty), tolerances, solver, chunk_size and batching."""
    problem, _ = small

    def draw(key):
        return DeepLinear((2, 3, 2), key=key)

    cases = [
        (dict(alphas=[0.1, -1.0]), "alphas"),
        (dict(alphas=[0.0]), "alphas"),
        (dict(alphas=[]), "alphas"),
        (dict(alphas=[0.1], rtol=-1.0), "rtol"),
        (dict(alphas=[0.1], atol=-1.0), "atol"),
        (dict(alphas=[0.1], solver="nope"), "solver"),
        (dict(alphas=[0.1], chunk_size=0), "chunk_size"),
        (dict(alphas=[0.1], batching="threads"), "batching"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=f"`{name}`"):
            sj.sweep(problem, draw, 1.0, progress=False, **kwargs)


def test_bad_data_builders(getkey):
    """Data builders name `observed`, `rank` and `target`."""
    with pytest.raises(ValueError, match="`observed`"):
        sj.random_mask(getkey(), (3, 3), 0.0)
    with pytest.raises(ValueError, match="`observed`"):
        sj.matrix_completion_problem(getkey(), observed=1.5)
    with pytest.raises(ValueError, match="`rank`"):
        sj.matrix_completion_problem(getkey(), n=4, rank=5)
    with pytest.raises(ValueError, match="`target`"):
        sj.clw_problem("cosh")


def test_failure_raises_under_vmap(small):
    """gradient_flow(throw=True) inside eqx.filter_jit(eqx.filter_vmap(...)) raises at run time
    (eqx.error_if) when any trajectory fails, and not when all succeed (STYLE: value-dependent
    failures inside jit). Under jit the check must not be removed as dead code."""
    problem, _ = small

    def final_loss(alpha):
        net = init.scale(DeepLinear((2, 3, 2), key=jr.key(0)), alpha)
        return sj.gradient_flow(
            problem, net, 5.0, n_save=4, max_steps=200, solver=diffrax.Tsit5()
        ).loss[-1]

    batched = eqx.filter_jit(eqx.filter_vmap(final_loss))
    # α = 1e3 makes ∇²L ~ 1e6·‖θ̃‖⁴: the explicit steps blow up to NaN. The run-time error
    # carries the failure's own message (as diffrax's `throw` does).
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        jax.block_until_ready(batched(jnp.array([0.5, 1e3])))
    losses = batched(jnp.array([0.5, 0.6]))
    assert losses.shape == (2,) and bool(jnp.all(jnp.isfinite(losses)))
