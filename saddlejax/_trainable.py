"""Which parts of a model train: filter specs for partial training (SPEC §2, last bullet)."""

from collections.abc import Callable

import equinox as eqx
import jax

from ._validate import describe


def freeze(model, where: Callable) -> object:
    """A filter spec marking every inexact array of `model` trainable except those in `where`.

    Pass the result as `trainable=` to `gradient_flow`, `gradient_descent` or `sweep`; only the
    trainable part is the state of the flow, so a deep ReLU net with all but two layers frozen is
    a 2-homogeneous model in its state (SPEC §2).

    **Arguments:**

    - `model`: any pytree (e.g. a `DeepReLU`).
    - `where`: a function selecting the frozen leaves or sub-pytrees, as in `eqx.tree_at`,
        e.g. `lambda m: m.weights[1:-1]`.

    **Returns:** a pytree of bools with the structure of `model`.
    """
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, model)
    frozen = where(spec)
    return eqx.tree_at(where, spec, replace=jax.tree_util.tree_map(lambda _: False, frozen))


def split_trainable(params, trainable=eqx.is_inexact_array):
    """(state, static) = `eqx.partition(params, trainable)`, checking the state is all floats.

    `trainable` is a filter: a callable on leaves or a pytree of bools (e.g. from `freeze`).
    """
    try:
        state, static = eqx.partition(params, trainable)
    except ValueError as e:
        raise ValueError(
            "`trainable` must be a callable filter or a pytree of bools shaped like `params0` "
            f"(see `saddlejax.freeze`): {e}"
        ) from e
    leaves = jax.tree_util.tree_leaves(state)
    if not leaves:
        raise ValueError(
            f"`trainable` = {describe(trainable)} selects no floating-point array of `params0`: "
            "nothing would move; pass a filter that selects some (default `eqx.is_inexact_array`)."
        )
    for leaf in leaves:
        if not eqx.is_inexact_array(leaf):
            raise ValueError(
                "every trainable leaf of `params0` must be a floating-point JAX/numpy array; got "
                f"{type(leaf).__name__} {getattr(leaf, 'dtype', '')}. Convert it with "
                "`jnp.asarray(x, dtype=float)` or exclude it with `trainable=`."
            )
    return state, static
