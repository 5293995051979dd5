"""The (leaky) ReLU as a JAX primitive whose Taylor-mode rule takes the one-sided branch.

Taylor terms at a point where a pre-activation is 0 (dead neurons, neurons about to be born,
the origin) are those of t ↦ L(θ* + tδ) for t > 0 (SPEC §4): along the ray a pre-activation
z(t) = z₀ + z₁t + z₂t²/2 + … with z₀ = 0 lies, for small t > 0, on the branch of the sign of
its first non-zero coefficient. `jax.experimental.jet` decides `jnp.where`'s branch on z₀ alone
(the linear branch at 0) and averages the two branches of `jax.nn.relu` (through `max`), so
their Taylor terms there are those of another function. This primitive's jet rule picks the
branch lexicographically; its value and its `jvp`/`grad` are those of
`jnp.where(z >= 0, z, slope·z)`, so flows and Hessians are unchanged.
"""

import jax
import jax.numpy as jnp
from jax.experimental import jet as _jet
from jax.extend.core import Jaxpr, Primitive, jaxprs_in_params
from jax.interpreters import ad, batching, mlir
from jaxtyping import Array, ArrayLike

# A coefficient (z₀ included) within KINK_RTOL of the largest of them is taken to be 0: a
# critical point found by a solver holds its dead neurons' weights at rounding, not at exactly
# 0, and z(t) = 1e−17·t − t² (a rounding-sized weight times a live input, against a real
# second-order term) is negative for every t the expansion is used at.
KINK_RTOL = 1e-9


def _leaky_relu_impl(x, *, negative_slope):
    return jnp.where(x >= 0, x, negative_slope * x)


def _leaky_relu_jvp(tangent, x, *, negative_slope):
    return jnp.where(x >= 0, tangent, negative_slope * tangent)


def _leaky_relu_jet(primals, series, *, negative_slope):
    (x,), (terms,) = primals, series
    largest = jnp.abs(x)
    for term in terms:
        largest = jnp.maximum(largest, jnp.abs(term))
    floor = KINK_RTOL * largest
    positive = x > 0
    decided = jnp.abs(x) > floor
    for term in terms:
        positive = jnp.where(decided, positive, term > 0)
        decided = decided | (jnp.abs(term) > floor)
    slope = jnp.where(positive | ~decided, 1.0, negative_slope).astype(x.dtype)
    return leaky_relu_p.bind(x, negative_slope=negative_slope), [slope * t for t in terms]


leaky_relu_p = Primitive("saddlejax_leaky_relu")
leaky_relu_p.def_impl(_leaky_relu_impl)
leaky_relu_p.def_abstract_eval(lambda x, **_: x)
mlir.register_lowering(leaky_relu_p, mlir.lower_fun(_leaky_relu_impl, multiple_results=False))
ad.defjvp(leaky_relu_p, _leaky_relu_jvp)
batching.defvectorized(leaky_relu_p)
_jet.jet_rules[leaky_relu_p] = _leaky_relu_jet


def leaky_relu(x: ArrayLike, negative_slope: float) -> Array:
    """max(x, 0) + slope·min(x, 0), elementwise, with exact one-sided Taylor terms at x = 0
    (module docstring). `negative_slope` is a Python number (a static parameter)."""
    try:
        slope = float(negative_slope)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            f"`negative_slope` must be a Python number, got {type(negative_slope).__name__}: "
            "it is a static parameter of the primitive (use jnp.where for a traced slope)."
        ) from None
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(float)
    return leaky_relu_p.bind(x, negative_slope=slope)


def relu(x: ArrayLike) -> Array:
    """max(x, 0), elementwise, with exact one-sided Taylor terms at x = 0 (`leaky_relu`)."""
    return leaky_relu(x, 0.0)


def has_kinks(jaxpr: Jaxpr) -> bool:
    """Whether `jaxpr` (or one nested in it) applies `leaky_relu`: then only Taylor mode gives
    its one-sided ray derivatives, and nested `jvp`s those of one branch."""
    return any(
        eqn.primitive is leaky_relu_p or any(has_kinks(sub) for sub in jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns
    )


def applies_kinks(fn, *args) -> bool:
    """Whether `fn(*args)` applies `leaky_relu` (`has_kinks` of its traced jaxpr; not run)."""
    return has_kinks(jax.make_jaxpr(fn)(*args).jaxpr)
