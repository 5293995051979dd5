"""Bias-free deep (leaky-)ReLU networks (SPEC §2, §9; Bantzis, Simon & Jacot)."""

from collections.abc import Sequence

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from .._validate import check_real
from ._kinks import leaky_relu
from ._layers import check_std, check_widths, default_std, gaussian_matrices, smoothed_leaky_relu


class DeepReLU(eqx.Module):
    """f_θ(x) = W_L σ(W_{L−1} ⋯ σ(W_1 x)), σ = (leaky) ReLU; L-homogeneous in θ.

    **Arguments:**

    - `widths`: layer sizes (n_0, ..., n_L).
    - `negative_slope`: 0 for ReLU, in (0, 1) for leaky ReLU.
    - `std`, `dtype`: as for `DeepLinear`.
    - `key`: a JAX PRNG key (keyword only).
    - `smoothing`: ε ≥ 0 (default 0: the exact kink). With ε > 0 unit j's max(zⱼ, 0) becomes a
        softplus of width ε·sⱼ, sⱼ the size of the terms that sum to zⱼ (with a floor from the
        dead inputs' pre-activations), which scales with zⱼ, so the net stays L-homogeneous
        with every rescaling symmetry (`smoothed_leaky_relu`). Use it (e.g. 1e−4) for gradient
        flows that slide along a kink (zⱼ held at 0 from both sides: no classical solution;
        adaptive steps chatter across it by the thousand and, at tight rtol, collapse into a
        `max_steps_reached` failure): the smoothed flow converges to the sliding (Filippov)
        flow as ε → 0, its distance from gradient descent at η → 0 falling ≈ 10× per decade of
        ε; smaller ε is stiffer (benchmarks/README.md, `bench_relu_kinks.py`).
    """

    weights: tuple[Float[Array, "n_out n_in"], ...]
    negative_slope: float = eqx.field(static=True)
    smoothing: float = eqx.field(static=True, default=0.0)

    def __init__(
        self,
        widths: Sequence[int],
        negative_slope: float = 0.0,
        *,
        key: PRNGKeyArray,
        std: float | Sequence[float] | None = None,
        dtype=None,
        smoothing: float = 0.0,
    ):
        widths = check_widths(widths)
        # [0, 1): 0 is ReLU
        negative_slope = check_real(
            "negative_slope", negative_slope, low=0.0, high=1.0, high_open=True
        )
        std = check_std(default_std(widths) if std is None else std, len(widths) - 1)
        shapes = [(n_out, n_in) for n_in, n_out in zip(widths[:-1], widths[1:])]
        self.weights = gaussian_matrices(key, shapes, std, dtype)
        self.negative_slope = float(negative_slope)
        self.smoothing = check_real("smoothing", smoothing, low=0.0, high=1.0)

    @property
    def depth(self) -> int:
        return len(self.weights)

    def __call__(self, x: Float[Array, " n_in"]) -> Float[Array, " n_out"]:
        z = None  # the input has no pre-activations
        for w in self.weights[:-1]:
            if self.smoothing > 0:
                x, z = smoothed_leaky_relu(w, x, self.negative_slope, self.smoothing, z)
            else:
                x = leaky_relu(w @ x, self.negative_slope)
        return self.weights[-1] @ x
