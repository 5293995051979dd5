"""Deep-linear test cases shared by the escape-direction tests: zero layers of given widths,
and a matrix G with a prescribed spectrum (the DLN closed forms of SPEC §5 are in σᵢ(G))."""

import jax.numpy as jnp
import jax.random as jr


def _like(widths):
    return tuple(jnp.zeros((b, a)) for a, b in zip(widths[:-1], widths[1:]))


def _g_with_spectrum(key, n_out, n_in, sigmas):
    ku, kv = jr.split(key)
    u = jnp.linalg.qr(jr.normal(ku, (n_out, n_out)))[0]
    v = jnp.linalg.qr(jr.normal(kv, (n_in, n_in)))[0]
    r = len(sigmas)
    return u[:, :r] @ jnp.diag(jnp.asarray(sigmas)) @ v[:, :r].T
