"""The same weights with another kink smoothing: to continue an exact-ReLU flow past a point
where it stops (`RESULTS.kink_events_dense`) with the smoothed net's flow."""

import copy

import equinox as eqx

from .._validate import check_real
from ._kinks import relu


def has_kink_smoothing(model) -> bool:
    """Whether `model` is a ReLU net whose kink smoothing `with_smoothing` can set."""
    return hasattr(model, "smoothing") and getattr(model, "activation", relu) is relu


def with_smoothing(model: eqx.Module, smoothing: float) -> eqx.Module:
    """`model` (a `DeepReLU`, or a `TwoLayer` with `activation="relu"`) with its kink smoothing
    ε set to `smoothing` (≥ 0; 0: exact kinks) and its weights unchanged (`smoothed_leaky_relu`:
    ε is a static field, which `eqx.tree_at` cannot replace)."""
    if not hasattr(model, "smoothing"):
        raise ValueError(
            f"`model` must be a net with a ReLU kink smoothing (`DeepReLU`, or `TwoLayer` with "
            f'`activation="relu"`), got a {type(model).__name__}.'
        )
    smoothing = check_real("smoothing", smoothing, low=0.0, high=1.0)
    activation = getattr(model, "activation", relu)
    if smoothing > 0 and activation is not relu:
        name = getattr(activation, "__name__", activation)
        raise ValueError(
            f"`smoothing` smooths the ReLU's kink, but `model`'s activation is {name!r}: use a "
            "ReLU net or `smoothing=0`."
        )
    out = copy.copy(model)
    object.__setattr__(out, "smoothing", smoothing)
    return out
