"""Data builders for the papers' problems, each from an explicit PRNG key (SPEC §6, §10, §11)."""

from typing import Literal, NamedTuple

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PRNGKeyArray

from .._validate import check_int, check_key, check_real, describe
from ..nn._layers import MAX_WIDTH
from ._objectives import MatrixCompletion, SquareLoss


def _fraction(name, p) -> float:
    return check_real(name, p, low=0.0, high=1.0, low_open=True)


def _shape(shape) -> tuple[int, int]:
    if not isinstance(shape, list | tuple) or len(shape) != 2:
        raise ValueError(f"`shape` must be a pair (n_rows, n_cols), got {describe(shape)}.")
    return tuple(check_int("shape", n, maximum=MAX_WIDTH) for n in shape)


def random_mask(key: PRNGKeyArray, shape: tuple[int, int], observed: float):
    """A 0/1 mask with exactly round(observed · size) ones at uniformly random positions."""
    observed = _fraction("observed", observed)
    shape = _shape(shape)
    key = check_key("key", key)
    size = shape[0] * shape[1]
    n_obs = max(1, round(observed * size))
    order = jr.permutation(key, size)
    return (jnp.zeros(size).at[order[:n_obs]].set(1.0)).reshape(shape)


def matrix_completion_problem(
    key: PRNGKeyArray, n: int = 10, rank: int = 3, observed: float = 0.5, n_in: int | None = None
) -> MatrixCompletion:
    """Complete A* = U Vᵀ (U, V with N(0, 1) entries) from a random `observed` fraction of entries.

    Jacot et al. Fig. 1/4 use n = 10, rank 3 (SPEC §11; 50 % observed as in PERF-NOTES);
    Fig. 3 uses n = 30, rank 1, 20 % observed.
    """
    key = check_key("key", key)
    n = check_int("n", n, maximum=MAX_WIDTH)
    n_in = n if n_in is None else check_int("n_in", n_in, maximum=MAX_WIDTH)
    rank = check_int("rank", rank, maximum=min(n, n_in))
    observed = _fraction("observed", observed)
    ku, kv, km = jr.split(key, 3)
    u = jr.normal(ku, (n, rank))
    v = jr.normal(kv, (n_in, rank))
    return MatrixCompletion(u @ v.T, random_mask(km, (n, n_in), observed))


def diagonal_teacher_problem(
    key: PRNGKeyArray, n_samples: int = 100, diag=(1.0, 2.0, 3.0, 4.0, 5.0), scale: float = 10.0
) -> SquareLoss:
    """Teacher A* = scale·diag(diag) with Gaussian inputs, no noise (Jacot Fig. 2/5; SPEC §11)."""
    teacher = scale * jnp.diag(jnp.asarray(diag, dtype=float))
    x = jr.normal(key, (n_samples, teacher.shape[1]))
    return SquareLoss(x, x @ teacher.T)


class TrainTest(NamedTuple):
    train: SquareLoss
    test: SquareLoss
    teacher: jnp.ndarray


def noisy_low_rank_problem(
    key: PRNGKeyArray,
    n: int = 10,
    rank: int = 3,
    noise: float = 0.2,
    n_train: int = 100,
    n_test: int = 1000,
) -> TrainTest:
    """Teacher W₀W₀ᵀ (W₀ ∈ R^{n×rank}, column i of variance i) plus N(0, noise²) label noise.

    Jacot Fig. 6 (SPEC §11): 100 train and 1000 test Gaussian inputs; the test labels are
    noiseless so that the test error measures the distance to the teacher.
    """
    kw, ktr, kte, kn = jr.split(key, 4)
    w0 = jr.normal(kw, (n, rank)) * jnp.sqrt(jnp.arange(1, rank + 1, dtype=float))[None, :]
    teacher = w0 @ w0.T
    x_train = jr.normal(ktr, (n_train, n))
    x_test = jr.normal(kte, (n_test, n))
    y_train = x_train @ teacher.T + noise * jr.normal(kn, (n_train, n))
    return TrainTest(SquareLoss(x_train, y_train), SquareLoss(x_test, x_test @ teacher.T), teacher)


_CLW_TARGETS = {
    "three_tanh": lambda x: jnp.tanh(x + 7.5) + jnp.tanh(x) + jnp.tanh(x - 7.5),
    "tanh": jnp.tanh,
    "sin": jnp.sin,
}


def clw_problem(
    target: Literal["three_tanh", "tanh", "sin"] = "three_tanh",
    n_samples: int = 1000,
    interval: tuple[float, float] = (-15.0, 15.0),
) -> SquareLoss:
    """Chen–Luo–Wang's 1-D regression: n equidistant x on [−15, 15] (SPEC §10).

    The loss is ½·mean (their R = ½∫(f_θ − f)²ρ with ρ uniform on the grid).
    """
    if target not in _CLW_TARGETS:
        raise ValueError(f"unknown `target` {target!r}; use one of {sorted(_CLW_TARGETS)}.")
    x = jnp.linspace(*interval, n_samples)[:, None]
    return SquareLoss(x, _CLW_TARGETS[target](x), normalization="half_mean")


def squared_relu_toy_problem(key: PRNGKeyArray, n_samples: int = 50) -> SquareLoss:
    """Kumar & Haupt's toy (SPEC §6): unit-norm x ∈ R², y = 5·max(0, x₁)² + 4·max(0, x₂)².

    Square loss summed over samples, ½Σ(f − y)².
    """
    x = jr.normal(key, (n_samples, 2))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    y = 5 * jnp.maximum(x[:, 0], 0) ** 2 + 4 * jnp.maximum(x[:, 1], 0) ** 2
    return SquareLoss(x, y[:, None], normalization="half_sum")
