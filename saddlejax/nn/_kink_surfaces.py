"""The kink surfaces of a function built from `leaky_relu`, and its smooth pieces.

A ReLU net's loss L is smooth off the surfaces z_s(θ) = 0, one per pre-activation s (a unit on
a sample), and on each side of them it is the restriction of a smooth function: the piece in
which every `leaky_relu` keeps one branch. Integrating a flow piece by piece, with the kinks
located as events, is what lets a solver follow a flow that slides along a kink
(`sliding_flow`). Both functions here evaluate `fn`'s jaxpr, so they work for any function of
the library's primitive (nested `jit`s and custom derivative rules included; a `leaky_relu`
inside a loop or a branch is refused).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.extend.core import Literal, jaxprs_in_params
from jaxtyping import Array, ArrayLike

from ._kinks import has_kinks, leaky_relu_p

# The parameter holding the sub-jaxpr of a call-like primitive whose body is inlined here.
_CALL_JAXPRS = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}


def _evaluate(jaxpr, consts, args, kinks: list, pattern, shift):
    """Evaluate `jaxpr`, appending each `leaky_relu` input to `kinks` (in order); where
    `pattern` is given, kink s takes the linear branch iff pattern[s], and `shift`[s]·(1 − slope)
    is added to its output."""
    env = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive is leaky_relu_p:
            (z,) = invals
            start = sum(k.size for k in kinks)
            kinks.append(z)
            slope = eqn.params["negative_slope"]
            if pattern is None:
                out = leaky_relu_p.bind(z, **eqn.params)
            else:
                on = pattern[start:start + z.size].reshape(z.shape)
                out = jnp.where(on, z, slope * z)
            if shift is not None:
                out = out + (1.0 - slope) * shift[start:start + z.size].reshape(z.shape)
            outs = [out]
        elif any(has_kinks(sub) for sub in jaxprs_in_params(eqn.params)):
            name = eqn.primitive.name
            if name not in _CALL_JAXPRS:
                raise NotImplementedError(
                    f"a `leaky_relu` inside `{name}`: its kinks cannot be enumerated (write the "
                    "loop or branch out, or use `DeepReLU(smoothing=)`)."
                )
            sub = eqn.params[_CALL_JAXPRS[name]]
            sub_consts = sub.consts if hasattr(sub, "consts") else ()
            sub = sub.jaxpr if hasattr(sub, "consts") else sub
            outs = _evaluate(sub, sub_consts, invals, kinks, pattern, shift)
        else:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _run(fn, x, pattern, shift):
    closed = jax.make_jaxpr(fn)(x)
    kinks: list = []
    outs = _evaluate(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(x), kinks, pattern,
                     shift)
    return outs, kinks


def kink_values(fn: Callable, x: ArrayLike, pattern: ArrayLike | None = None) -> Array:
    """z(x): every pre-activation that `fn(x)` passes through `leaky_relu`, flat, in a fixed
    order (one entry per unit and sample for a net on data); empty when `fn` has no kinks.
    With `pattern`, on that smooth piece (`on_piece`): a deeper layer's z is then smooth in x
    across the kinks of the layers before it."""
    _, kinks = _run(fn, x, None if pattern is None else jnp.asarray(pattern), None)
    x = jnp.asarray(x)
    if not kinks:
        return jnp.zeros((0,), x.dtype)
    return jnp.concatenate([k.ravel() for k in kinks])


def on_piece(fn: Callable, x: ArrayLike, pattern: ArrayLike, shift: ArrayLike | None = None):
    """fn(x) on the smooth piece `pattern` (kink s on its linear branch iff pattern[s], as
    `kink_values` orders them), with `shift`[s]·(1 − slope) added to kink s's output:
    ∂/∂shift at 0 is the jump c_s of ∂fn/∂z_s across the kink, so that the gradients of the
    two pieces on either side of z_s = 0 differ by c_s·∇z_s."""
    (out,), _ = _run(fn, x, jnp.asarray(pattern), shift)
    return out
