"""The α → 0 chain of saddles, computed without small-α simulation (Jacot et al. Conj. 3;
SPEC §4, §5, §8), for any network and loss.

From ϑ⁰ = 0: (1) the leading Taylor term at the saddle, on the directions the flow can leave
by, and its escape direction; (2) the escape path from the saddle, i.e. the flow started on
that direction at a small radius, to the next critical point; (3) its classification by the
Hessian spectrum (HVPs); repeat while it is a saddle.

**Which directions.** At a strict saddle (∇²L has a negative eigenvalue) H(δ) = ½δᵀ∇²Lδ,
k = 2, and the escape directions are the bottom eigenvectors. Where ∇²L ⪰ 0 and ≠ 0 (a
DLN's rank-r saddle for L > 2, Jacot et al. Remark 6) the flow can only leave through the
null space N of ∇²L: the term is that of L restricted to N, H_N(δ) = (1/k!)D^kL(ϑ)[(P_Nδ)^k],
k ≥ 3. At the origin of an L-homogeneous net (∇²L = 0 for L > 2) N is everything. A point
whose term on N is ≥ 0 on the sphere (or vanishes to `max_order`) is a minimum.

**Which direction is followed.** The flow from αθ̃ does not pick an arbitrary escape
direction: it carries a small part u (at scale α; u = θ̃ at the origin). For k > 2 the chain
integrates the H-flow of u to its blow-up (`blowup_time`; at the origin of a ReLU net, whose
term has the net's kinks, the sliding flow, `kinked_blowup_time`); the direction it aligns
with, polished by Newton's method, is followed, and the time T it takes is the plateau's length
α^{−(k−2)}·T (Lemma 13). For k = 2 u is projected onto the bottom eigenspace (what e^{−t∇²L}
does); the plateau's length is (e·log(1/α) − log|c|)/s with c the projection's size and e the
exponent of α that u's component has when the flow arrives (1 at the origin; for later k = 2
saddles, reduced by the growth it had at the earlier ones: the Rayleigh quotient of ∇²L there
along the new direction — exact when that direction is an eigenvector at every earlier saddle,
as for shallow DLNs).

**What is carried to the next saddle.** A later plateau's length is set by the part of size α
that the flow brings to ϑ^{j+1}. The escape does not transport it linearly: components across
the escape direction grow as the escaping part does (by (T − t)^{μ/((k−2)s)}, μ < 0 an
eigenvalue of the term's Hessian there), to sizes α^{1+μ/s} ≫ α, and feed the part of size α
at second order; the largest of them move the flow along the next saddle's orbit of
symmetries, by O(1). So the chain hands over at amplitude α (`_handed_over`): the term's H-flow
to the path's radius, the flow of L from there to the next saddle, and the point reached,
moved along the model's symmetry orbit to ϑ^{j+1} (`gauge_aligned`; DLN: rotations of the
hidden units), less ϑ^{j+1}, over α, with ϑ^{j+1} taken at the balanced point of its orbit
under GL(n_ℓ) (`balanced_representative`), where the flows, which conserve balancedness,
arrive. The plateau's T then depends on α (slowly), and is computed at each α asked for
(`carry_alphas`). For models whose symmetries are not known (and
on ReLU paths, `sliding`) u keeps the H-flow's part transverse to the followed direction at
(1 − η)T (`carry_eta`), one T for every α.
"""

import math
import warnings
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._results import RESULTS, NumericalWarning
from .._trainable import split_trainable
from .._validate import check_key, check_real
from ..flow import CriticalPoint, LossBelow, gradient_flow, sliding_flow
from ..nn import DeepLinear, DeepReLU, TwoLayer
from ..nn._kinks import applies_kinks
from ..nn._smoothing import has_kink_smoothing
from ..theory import (
    blowup_time,
    escape_speed,
    kkt_residual,
    optimal_escape,
    refine_escape_direction,
    strictness_test,
    taylor_term,
)
from ..theory._h_flow import solve_h_flow
from ..theory._taylor import _kth_ray_derivative
from ._alignment import balanced_representative, gauge_aligned, has_gauge
from ._crossings import crossing_times, hermite_interp
from ._kinked_h_flow import kinked_blowup_time, kinked_h_flow_at
from ._kinks import KinkDescent, kink_descent
from ._matrices import bottleneck_rank
from ._ranks import numerical_rank
from ._spectra import hessian_spectrum


class ChainSaddle(eqx.Module):
    """One critical point ϑ^j of a `SaddleChain` and how it is left.

    **Fields:**

    - `params`: ϑ^j (a pytree shaped like the initialisation).
    - `loss`, `grad_norm`: L(ϑ^j), ‖∇L(ϑ^j)‖.
    - `rank`: the model's rank (DLN: rank of A_ϑ; deep ReLU: bottleneck rank; two-layer net:
        the number of distinct directions of its active neurons; or the `rank` callable's).
    - `n_params`: P, the number of trainable parameters.
    - `kind`: "saddle", "minimum", "loss_floor" (the chain reached `loss_floor` + `loss_tol`
        and stopped there), "not_followed" (after `max_saddles`), "on_kinks" (a critical
        point of the sliding flow on ReLU kinks, where the chain stops), "diverging" (the path
        towards it drifts to infinity, `RESULTS.path_diverged`: where it stood at the horizon),
        or "not_reached" (the path towards it failed; the point where it stopped).
    - `hessian_index`: the number of negative eigenvalues of ∇²L(ϑ^j) (of those computed:
        a lower bound when it equals `n_eig`); −1 when not computed.
    - `n_positive`: the number of positive eigenvalues, −1 when not computed; `null_dim`
        = P − `n_positive` − `hessian_index`, the null space's dimension (symmetry orbits and
        continua of critical points included), when the Hessian was decomposed in full
        (`hessian_index` < `n_eig`).
    - `order`, `next_order`: k and m of the leading term on the allowed directions (module
        docstring); None at a minimum.
    - `restricted`: True when the term is that of L on the Hessian's null space.
    - `speed`: s*, the optimal escape speed on the allowed directions (0 at a minimum).
    - `direction`: ρ, the escape direction followed (unit, flat over the trainable
        parameters); `direction_speed`: its speed s.
    - `multiplicity`: k = 2: the dimension of the bottom eigenspace (≥, when every bottom
        eigenvalue computed is in it); k > 2: the number of distinct optimal directions the
        restarts found.
    - `degenerate`: the escape direction is not unique (`multiplicity` > 1), or the followed
        direction is slower than s*.
    - `strict`: Prop. 14 at every non-optimal escape direction found (k > 2; None otherwise).
    - `plateau`: how the plateau at ϑ^j lasts at scale α: ("power", k, T) for α^{−(k−2)}·T,
        ("log", a, b) for a·log(1/α) + b; None at a minimum. T at the smallest of
        `saddle_chain`'s `carry_alphas`.
    - `blowups`: ((α, T_α), …) where T depends on α (a later k > 2 plateau: T is the blow-up
        time of the part of size α carried to ϑ^j, which the escapes before transport
        nonlinearly, so T_α drifts slowly with α; plus α^{k−2}·τ, τ the path-clock time at
        which that part was read); empty where T is one number.
    - `gap`, `deviation_coefficient`: k = 2: 1 − λ₂/λ₁, with λ₁ = s the followed growth rate
        (−λ_min(∇²L)) and λ₂ the next fastest, −(the most negative eigenvalue outside the
        bottom eigenspace), 0 when there is none; and c₂·c₁^{−λ₂/λ₁}, c₁ and c₂ the sizes of
        the carried part's projections on the two eigenspaces (on everything outside the
        bottom eigenspace when λ₂ = 0). The flow from αθ̃ leaves the saddle off the chain's
        path by that coefficient × α^{e·gap} (`SaddleChain.path_deviations`): how fast the
        flows approach the chain as α → 0. None for k > 2, at a minimum, or when every bottom
        eigenvalue computed lies in the eigenspace (λ₂ unknown).
    - `kink`: a `KinkDescent` where a kink within `kink.distance` of ϑ^j leads to a
        first-order descent (ReLU nets), else None (`kink_descent`; probed at every point
        after the origin whose curvature is computed). The α → 0 flow rests at ϑ^j; a flow
        that arrives farther off it than that distance passes it without a plateau.
    """

    params: PyTree
    loss: float
    grad_norm: float
    rank: int
    n_params: int
    kind: str
    hessian_index: int
    n_positive: int
    order: int | None
    next_order: int | None
    restricted: bool
    speed: float
    direction: Array | None
    direction_speed: float
    multiplicity: int
    degenerate: bool
    strict: bool | None
    plateau: tuple | None
    gap: float | None = None
    deviation_coefficient: float | None = None
    kink: KinkDescent | None = None
    blowups: tuple = ()

    def blowup_at(self, alpha: float) -> float:
        """T of a ("power", k, T) plateau at scale α: `blowups` interpolated linearly in log α
        (held constant beyond the scales computed), or `plateau`'s T."""
        if not self.blowups:
            return self.plateau[2]
        a, t = np.log([b[0] for b in self.blowups]), np.array([b[1] for b in self.blowups])
        return float(np.interp(math.log(alpha), a, t))

    @property
    def deviation_exponent(self) -> float | None:
        """e·gap of a k = 2 plateau ("log", a, b), e = a·s: the flow from αθ̃ leaves the saddle
        off the chain's path by `deviation_coefficient`·α^{e·gap}; None where `gap` is."""
        if self.plateau is None or self.plateau[0] != "log" or self.gap is None:
            return None
        return self.plateau[1] * self.direction_speed * self.gap

    @property
    def null_dim(self) -> int | None:
        if self.n_positive < 0 or self.hessian_index < 0:
            return None
        return self.n_params - self.n_positive - self.hessian_index


class ChainPath(eqx.Module):
    """The escape path from ϑ^j to ϑ^{j+1}, in its own clock τ: x(τ) − ϑ^j ≈ ρe^{sτ} (k = 2)
    or ρ((k−2)s(−τ))^{−1/(k−2)} (k > 2) as τ → −∞ (SPEC §5), so that the flow from αθ̃ is
    x(t − t_j) with t_j from the plateaus (`SaddleChain.escape_times`).

    **Fields:** `ts` (τ at the saves), `loss`, `grad_norm`, `norm` (‖θ‖); `start_radius` r₀
    and `start_time` τ₀ where the flow was started on the H-path; `arrival_time` τ where the
    next critical point was reached; `steps`; `result` (`RESULTS.path_diverged` for a path that
    drifts to infinity, `_drifting`); `kinks_at_arrival`: on a net with ReLU kinks (the path
    integrated by `sliding_flow`), the kinks the flow slid along where it stopped: > 0 at a
    critical point of the sliding flow (Clarke-critical) that is not one of L's smooth pieces.
    """

    ts: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    norm: np.ndarray
    start_radius: float
    start_time: float
    arrival_time: float
    steps: int
    result: RESULTS
    kinks_at_arrival: int = 0


class ChainBranch(eqx.Module):
    """Another escape direction from the same saddle, followed to its critical point:
    `direction`, `speed`, `loss` and `rank` of the point reached, `params` there, `path`."""

    direction: Array
    speed: float
    loss: float
    rank: int
    params: PyTree
    path: ChainPath


class SaddleChain(eqx.Module):
    """The output of `saddle_chain`: `saddles` ϑ⁰ = 0, ϑ¹, …, `paths` between them, `branches`
    (per saddle, the other escape directions followed, if asked), `stop_reason`."""

    saddles: list[ChainSaddle]
    paths: list[ChainPath]
    branches: list[list[ChainBranch]]
    stop_reason: str

    @property
    def losses(self) -> np.ndarray:
        return np.array([s.loss for s in self.saddles])

    @property
    def n_arrived(self) -> int:
        """The number of paths, from the first, that reached their critical point, or (the
        last one) drift to infinity past their drop (`RESULTS.path_diverged`): the predictions
        (`plateau_lengths`, `escape_times`, `drop_times`, `staircase`) cover them."""
        n = 0
        ok = (RESULTS.successful, RESULTS.path_diverged)
        while n < len(self.paths) and any(self.paths[n].result == r for r in ok):
            n += 1
        return n

    @property
    def ranks(self) -> np.ndarray:
        return np.array([s.rank for s in self.saddles])

    @property
    def orders(self) -> list:
        return [s.order for s in self.saddles]

    @property
    def speeds(self) -> np.ndarray:
        return np.array([s.speed for s in self.saddles])

    def plateau_lengths(self, alpha: float) -> np.ndarray:
        """Predicted time the flow from αθ̃ spends at each saddle that is left (SPEC §8):
        α^{−(k−2)}·T for k > 2, a·log(1/α) + b for k = 2."""
        if not 0 < alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1), got {alpha}.")
        out = []
        for s in self.saddles[: self.n_arrived]:
            kind, *c = s.plateau
            if kind == "power":
                k, T = c[0], s.blowup_at(alpha)
                with np.errstate(over="ignore"):
                    out.append(np.power(float(alpha), -(k - 2)) * T)
            else:
                a, b = c
                out.append(a * math.log(1 / alpha) + b)
        return np.array(out)

    def log10_escape_times(self, alpha: float) -> np.ndarray:
        """log₁₀ t_j, for α so small that t_j overflows float64 (α^{−(k−2)}·T at α = 1e−60,
        k = 4, is 1e120 — representable —, at α = 1e−200 it is not): the plateau lengths are
        added in log space. The flow near path j is x_j(t − t_j): t_j is the offset, the
        path's own clock τ resolves the drop, which lasts O(1) at any α."""
        if not 0 < alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1), got {alpha}.")
        log_t, out = -np.inf, []
        for j, s in enumerate(self.saddles[: self.n_arrived]):
            kind, *c = s.plateau
            if kind == "power":
                k, T = c[0], s.blowup_at(alpha)
                log_len = -(k - 2) * math.log(alpha) + math.log(T)
            else:
                a, b = c
                log_len = math.log(max(a * math.log(1 / alpha) + b, 1e-300))
            if j > 0 and s.plateau[0] == "log":
                log_t = np.logaddexp(log_t, math.log(max(self.paths[j - 1].arrival_time, 1e-300)))
            log_t = np.logaddexp(log_t, log_len)
            out.append(log_t / math.log(10))
        return np.array(out)

    def escape_times(self, alpha: float) -> np.ndarray:
        """t_j: the flow time of each path's τ = 0 (the flow is x_j(t − t_j) near path j)."""
        lengths = self.plateau_lengths(alpha)
        unknown = np.flatnonzero(np.isnan(lengths))
        if unknown.size:
            raise ValueError(
                f"the plateau at saddle {int(unknown[0])} has no predicted length: its carried "
                "part's H-flow did not reach a blow-up (the chain warned; a ReLU term's H-flow "
                "can slide along kinks). `plateau_lengths` shows which are known."
            )
        if not np.all(np.isfinite(lengths)):
            raise OverflowError(
                f"at `alpha` = {alpha:g} a plateau outlasts float64 (≈ 10^"
                f"{np.max(self.log10_escape_times(alpha)):.0f}): use `log10_escape_times`."
            )
        t, out = 0.0, []
        for j, length in enumerate(lengths):
            t = t + length
            out.append(t)
            if j + 1 < len(lengths) and self.saddles[j + 1].plateau[0] == "log":
                t = t + self.paths[j].arrival_time  # the next plateau starts on arrival
        return np.array(out)

    def drop_times(self, alpha: float) -> np.ndarray:
        """Predicted time of each drop: where the loss is half-way between consecutive saddle
        levels (`crossing_times` on each path)."""
        out = []
        for j, t_j in enumerate(self.escape_times(alpha)):
            p = self.paths[j]
            mid = 0.5 * (self.saddles[j].loss + self.saddles[j + 1].loss)
            out.append(t_j + crossing_times(p.ts, p.loss, [mid], p.grad_norm)[0])
        return np.array(out)

    def path_deviations(self, alpha: float) -> np.ndarray:
        """Per saddle that is left, c·α^{e·gap} (`ChainSaddle.gap`, c its
        `deviation_coefficient`, e = a·s of the k = 2 plateau, 1 at the origin): how far off the
        chain's path the flow from αθ̃ leaves the saddle, so the order of the chain's error as a
        prediction of that flow. The part along the next fastest unstable direction grows from
        c₂α^e as e^{λ₂t} while the followed one grows from c₁α^e to 1, in time
        log(1/(c₁α^e))/λ₁, and ends at c₂c₁^{−λ₂/λ₁}α^{e(1 − λ₂/λ₁)} (exact at the origin; at
        a later saddle it assumes both parts arrive at the scale α^e). A drop time is off by
        at most about this, less where the deviation acts only at second order. NaN for k > 2
        and where λ₂ is unknown. A small gap means the flows reach the chain's α → 0 limit
        only at far smaller α (two-layer tanh with three outputs: gap 0.23)."""
        if not 0 < alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1), got {alpha}.")
        out = []
        for s in self.saddles[: self.n_arrived]:
            exponent = s.deviation_exponent
            if exponent is None:
                out.append(math.nan)
            else:
                out.append(s.deviation_coefficient * math.exp(exponent * math.log(alpha)))
        return np.array(out)

    def staircase(self, alpha: float, ts) -> np.ndarray:
        """The predicted loss of the flow from αθ̃ at times `ts`: the saddle levels, joined by
        the paths' loss curves placed at `escape_times(alpha)` (between a path's saves the
        cubic Hermite interpolant with the flow's own slopes dL/dτ = −‖∇L‖²). Path j is drawn
        from where path j − 1 arrived (its clock reaches far back, over the earlier plateaus)."""
        ts = np.asarray(ts, float)
        out = np.full(ts.shape, self.saddles[0].loss)
        start = -np.inf
        for j, t_j in enumerate(self.escape_times(alpha)):
            p = self.paths[j]
            tau = ts - t_j
            inside = (tau >= p.ts[0]) & (tau <= p.ts[-1]) & (ts >= start)
            out[inside] = hermite_interp(tau[inside], p.ts, p.loss, -p.grad_norm**2)
            out[tau > p.ts[-1]] = self.saddles[j + 1].loss
            start = t_j + p.ts[-1]
        return out


# ---------------------------------------------------------------------------------------------
# the model's rank


def default_rank(params, rank_tol: float = 0.1) -> int:
    """DLN: rank of A_θ; deep ReLU: bottleneck rank; two-layer net: the number of distinct
    directions (cosine < 1 − 1e−3) among neurons with |a_j|·‖w_j‖ above `rank_tol` × the
    largest; else −1 (unknown)."""
    if isinstance(params, DeepLinear):
        return int(numerical_rank(params.matrix(), rank_tol))
    if isinstance(params, DeepReLU):
        return int(bottleneck_rank(params.weights, rank_tol, relative=True))
    if isinstance(params, TwoLayer):
        size = np.linalg.norm(np.asarray(params.a), axis=0) * np.linalg.norm(
            np.asarray(params.w), axis=1
        )
        if not size.max() > 0:
            return 0
        dirs = []
        for j in np.flatnonzero(size > rank_tol * size.max()):
            w = np.asarray(params.w[j]) / np.linalg.norm(params.w[j])
            if not any(abs(float(w @ d)) > 1 - 1e-3 for d in dirs):
                dirs.append(w)
        return len(dirs)
    return -1


# ---------------------------------------------------------------------------------------------
# the Hessian at a critical point


class _Curvature(eqx.Module):
    """Eigen-information of ∇²L(ϑ): the bottom pairs, the positive eigenspace (a basis, or
    None when ∇²L = 0), its count, the negative count, and the scale max|λ|."""

    bottom: np.ndarray
    bottom_vectors: np.ndarray
    positive: np.ndarray | None
    n_positive: int
    index: int
    scale: float


def _zero_tol(scale, hess_rtol, dtype) -> float:
    """|λ| below this is 0: relative to max|λ|, with the rounding floor of `hessian_spectrum`
    (so that a vanishing Hessian's ±1e−15 noise is not an index)."""
    return max(hess_rtol * scale, 100 * float(np.finfo(dtype).eps) * (1 + scale))


@eqx.filter_jit
def _dense_hessian(f, x):
    """∇²L(x), compiled: op by op its first call costs ≈ 5 s of per-primitive compiles (P = 1,200)
    against 0.8 s compiled."""
    return jax.hessian(f)(x)


def _converged(spec):
    """`spec`, with a warning where LOBPCG ran out of iterations: its eigenvalues then set the
    saddle's index and allowed directions unconverged."""
    if spec.result != RESULTS.successful:
        warnings.warn(
            "LOBPCG on the Hessian at a critical point did not converge: the saddle's index and "
            "null space below come from unconverged eigenpairs. Raise `dense_max` above P to "
            "use the dense Hessian.", NumericalWarning, stacklevel=3,
        )
    return spec


def _curvature(f, x, *, hess_rtol, dense_max, n_eig, max_positive, key) -> _Curvature:
    n = x.size
    if n <= dense_max:
        lam, vecs = np.linalg.eigh(np.asarray(_dense_hessian(f, x)))
        scale = float(np.max(np.abs(lam)))
        tol = _zero_tol(scale, hess_rtol, lam.dtype)
        if not scale > tol:
            scale = 0.0
        pos = vecs[:, lam > tol] if scale > 0 else None
        # Every negative pair and the next: a bottom eigenspace larger than `n_eig` (a
        # two-layer net's origin: one copy per neuron) is then whole, and λ₂ known.
        m = min(n, max(n_eig, int(np.sum(lam < -tol)) + 1))
        return _Curvature(
            lam[:m], vecs[:, :m], pos, int(np.sum(lam > tol)) if scale > 0 else 0,
            int(np.sum(lam < -tol)) if scale > 0 else 0, scale,
        )
    objective = lambda y: f(y)  # noqa: E731
    k = max(1, min(n_eig, (n - 1) // 5))
    spec = _converged(
        hessian_spectrum(objective, x, k=k, which="both", key=key, index_tol=hess_rtol)
    )
    top = np.asarray(spec.top)
    scale = float(max(np.max(np.abs(top)), np.max(np.abs(np.asarray(spec.bottom)))))
    bottom = np.asarray(spec.bottom)
    bottom_vectors = np.asarray(spec.bottom_vectors).T
    tol = _zero_tol(scale, hess_rtol, bottom.dtype)
    if not scale > tol:  # ∇²L = 0 to rounding (the origin of an L ≥ 3 network)
        return _Curvature(bottom, bottom_vectors, None, 0, 0, 0.0)
    index = int(np.sum(bottom < -tol))
    # The positive eigenspace: more top pairs until the smallest found is ≈ 0.
    while top[-1] > tol and 2 * k < min(max_positive, (n - 1) // 5) + 1:
        k = min(2 * k, max_positive, (n - 1) // 5)
        spec = _converged(
            hessian_spectrum(objective, x, k=k, which="top", key=key, index_tol=hess_rtol)
        )
        top = np.asarray(spec.top)
    if top[-1] > tol and index == 0:
        raise ValueError(
            f"∇²L at the critical point has more than {k} positive eigenvalues: the null space "
            "cannot be separated with `max_positive` top eigenpairs. Raise `max_positive` or "
            "`dense_max` (the dense Hessian of P parameters is P² numbers)."
        )
    pos = np.asarray(spec.top_vectors).T[:, top > tol]
    return _Curvature(bottom, bottom_vectors, pos, pos.shape[1], index, scale)


# ---------------------------------------------------------------------------------------------
# one saddle: its term on the allowed directions and the direction followed


class _Escape(eqx.Module):
    order: int | None
    next_order: int | None
    restricted: bool
    H: Callable | None
    speed: float
    rho: np.ndarray | None
    rho_speed: float
    multiplicity: int
    strict: bool | None
    blowup: float | None  # T of the H-flow from the carried part (k > 2)
    coefficient: float | None  # |c|, the carried part's size along ρ (k = 2)
    carried: np.ndarray | None = None  # the carried part when the plateau ends (k > 2)
    others: tuple = ()  # other escape directions, for branches
    gap: float | None = None  # 1 − λ₂/λ₁ (k = 2)
    deviation_coefficient: float | None = None  # c₂·c₁^{−λ₂/λ₁} (k = 2)
    project: Callable | None = None  # P_N, onto the directions the term lives on (k > 2)


def _strict_escape(curv, u, degenerate_rtol) -> _Escape:
    lam_min = float(curv.bottom[0])
    in_space = curv.bottom <= lam_min * (1 - degenerate_rtol)
    E = curv.bottom_vectors[:, in_space]
    c = E.T @ u
    size = float(np.linalg.norm(c))
    rho = E @ c / size if size > 1e-12 * max(float(np.linalg.norm(u)), 1e-300) else E[:, 0]
    others = [-rho] + [e for e in E.T if abs(float(e @ rho)) < 1 - 1e-6]
    rest = curv.bottom[~in_space]
    gap = coefficient = None
    if rest.size:
        # λ₂ < 0 only where `index` counts more negative eigenvalues than the bottom space's.
        negative = curv.index > int(in_space.sum())
        lam_2 = float(np.min(rest)) if negative else 0.0
        ratio = lam_2 / lam_min  # λ₂/λ₁ of the growth rates −λ
        gap = 1.0 - ratio
        if negative:
            E_2 = curv.bottom_vectors[:, ~in_space][:, rest <= lam_2 * (1 - degenerate_rtol)]
            c_2 = float(np.linalg.norm(E_2.T @ u))
        else:
            c_2 = float(np.linalg.norm(u - E @ c))
        coefficient = c_2 * max(size, 1e-300) ** -ratio
    return _Escape(
        2, None, False, None, -lam_min, rho, -lam_min, int(in_space.sum()), None, None,
        max(size, 1e-300), None, tuple(others), gap, coefficient,
    )


class _FlatLoss(eqx.Module):
    """L as a function of the raveled trainable parameters."""

    objective: Callable
    static: PyTree
    unravel: Callable = eqx.field(static=True)

    def params(self, y):
        return eqx.combine(self.unravel(y), self.static)

    def __call__(self, y):
        return self.objective(self.params(y))


class _OnNullSpace(eqx.Module):
    """d ↦ L(ϑ + P_N d), P_N = I − VVᵀ the projection off the positive eigenspace (V's
    columns, zero-padded to 64 or the next power of 2, so that the saddles share one compiled
    set of solvers)."""

    loss: _FlatLoss
    point: Array
    basis: Array

    def project(self, d):
        return d - self.basis @ (self.basis.T @ d)

    def __call__(self, d):
        return self.loss(self.point + self.project(d))


class _RayTerm(eqx.Module):
    """H(d) = (1/k!)·d^k/dt^k g(td) at t = 0 (SPEC §4), for g = L on the null space. Only the
    order is static, so saddles with equal k share one compiled H."""

    loss: _OnNullSpace
    order: int = eqx.field(static=True)

    def __call__(self, d):
        return _kth_ray_derivative(self.loss, jnp.zeros_like(d), d, self.order)


class _OriginH(eqx.Module):
    """The objective's own Taylor term at the origin, on raveled parameters."""

    term: eqx.Module
    loss: _FlatLoss

    def __call__(self, d):
        return self.term.H(self.loss.params(d))


class _QuadraticOnNullSpace(Exception):
    """The term on the null space came out quadratic: eigenvalues taken as 0 were not."""


def _restricted_escape(f, x, curv, u, origin_term, invariant, config, key) -> _Escape | None:
    """The term on the Hessian's null space and its escape; None at a minimum."""
    count = 0 if curv.positive is None else curv.positive.shape[1]
    width = min(x.size, max(64, 1 << max(count - 1, 0).bit_length()))
    basis = np.zeros((x.size, width), x.dtype)
    basis[:, :count] = curv.positive if count else 0.0
    restricted = _OnNullSpace(f, x, jnp.asarray(basis))
    P = restricted.project
    if origin_term is not None:
        term = origin_term
        H = term.H
    else:
        term = taylor_term(
            restricted, jnp.zeros_like(x), key=key, rtol=config["taylor_rtol"],
            max_order=config["max_order"],
        )
        H = _RayTerm(restricted, term.order)
        if term.order == 1:
            raise ValueError(
                "the point the path reached is not critical to `taylor_rtol` on the Hessian's "
                "null space (order 1 found): lower `grad_rtol` or raise `taylor_rtol`."
            )
    k = term.order
    if k == 2:  # the restriction left a non-zero quadratic: small eigenvalues counted as 0
        raise _QuadraticOnNullSpace()
    k1, k2, k3 = jr.split(key, 3)
    esc = optimal_escape(
        H, k, jnp.zeros_like(x), key=k1, n_restarts=config["n_restarts"],
        invariant=None if invariant is None else invariant(k),
    )
    if esc.result == RESULTS.no_escape_direction or not float(esc.speed) > 0:
        return None
    s_star = float(esc.speed)
    speeds = np.asarray(esc.speeds)
    optimal = int(np.sum(np.abs(speeds - s_star) <= 1e-6 * s_star))
    strict = None
    if speeds.size > 1:
        strict = all(
            bool(strictness_test(H, esc.directions[i], s_star, key=k2).strict)
            for i in range(speeds.size)
            if speeds[i] < s_star * (1 - 1e-6)
        )
    pu = P(jnp.asarray(u))
    blow, tries = None, (_TIGHT_TOLERANCES, _KINK_TOLERANCES)
    # The origin's term with ReLU kinks (the net's own, at order k): only the sliding flow
    # integrates its flow exactly. A later saddle's term is a jet of L, whose kinks at dead
    # units `sliding_flow` cannot locate: Dopri8, relaxed if it chatters.
    exact = origin_term is not None and applies_kinks(H, pu)
    if float(jnp.linalg.norm(pu)) > 0:
        if exact:
            blow = kinked_blowup_time(H, pu, k, s_star)
        else:
            blow = blowup_time(H, pu, order=k, throw=False, **tries[0])
        if blow.result == RESULTS.max_steps_reached and not exact:  # kinks Dopri8 cannot see
            tries = tries[1:]
            blow = blowup_time(H, pu, order=k, throw=False, **tries[0])
        if blow.result != RESULTS.successful:
            warnings.warn(
                f"the H-flow of the carried part did not reach its blow-up ({RESULTS[blow.result]}"
                "): this saddle's plateau length is unknown (NaN in `plateau`), and the optimal "
                "direction is followed.",
                NumericalWarning, stacklevel=3,
            )
            blow = None
    rho, rho_speed = _followed(H, k, blow, esc)
    carried = _carried(H, pu, blow, rho, config["carry_eta"], tries, exact)
    others = tuple(
        np.asarray(esc.directions[i])
        for i in range(speeds.size)
        if abs(speeds[i] - s_star) <= 1e-6 * s_star
        and abs(float(np.asarray(esc.directions[i]) @ rho)) < 1 - 1e-6
    )
    return _Escape(
        k, term.next_order, curv.positive is not None, H, s_star,
        rho, rho_speed, optimal, strict,
        None if blow is None else float(blow.time), None, carried, others, project=P,
    )


# The H-flows of a chain (blow-up, carried part): Dopri8 at the H-flows' own tolerances, or at
# relaxed ones where the term has kinks (ReLU), on which Dopri8 at 1e−11 chatters until its step
# limit. Smooth terms take 48–171 steps (Jacot Fig. 1, width 20); the limit, a hundred times
# that, is what a kinked term wastes before the relaxed retry (at 1e−5 it took 936–1,301 steps,
# deep ReLU (4, 8, 8, 2)). One limit for both tries: `max_steps` is static, one compile.
_H_MAX_STEPS = 20_000
_TIGHT_TOLERANCES = dict(rtol=1e-11, atol=1e-13, max_steps=_H_MAX_STEPS)
_KINK_TOLERANCES = dict(rtol=1e-5, atol=1e-7, max_steps=_H_MAX_STEPS)


def _carried(H, pu, blow, rho, eta, tries, exact) -> np.ndarray:
    """The part of the carried u left behind when the escaping part blows up: the H-flow at
    (1 − η)T less its component along ρ (module docstring), by the sliding flow where H has
    kinks (`exact`), else by Dopri8 at the tolerances `tries` in order (those the blow-up time
    did not give up on). Without a blow-up, or where the H-flow cannot be integrated, u less
    its ρ-component, unevolved."""
    pu, rho = np.asarray(pu), np.asarray(rho)
    end = None
    if blow is not None:
        t = float(blow.time) * (1 - eta)
        if exact:
            end = kinked_h_flow_at(H, pu, t)
        else:
            for tols in tries:
                sol = solve_h_flow(H, jnp.asarray(pu), t, saveat=diffrax.SaveAt(t1=True), **tols)
                if sol.result == diffrax.RESULTS.successful:
                    end = np.asarray(sol.ys[-1])
                    break
    end = pu if end is None else end
    return end - float(end @ rho) * rho


# Inexact Newton for the polish: escape directions at a later saddle come in continua (the
# model's symmetries), so the Riemannian Hessian is singular along them, and a tight Krylov solve
# spends its iterations there and moves ρ along the continuum, away from ŵ (measured: 2–5e−2 at
# 1e−12, 1–6e−3 at 1e−2, Jacot Fig. 1, width 20), at 8× the cost. A 1e−2 forcing term still
# reaches a relative KKT residual ≤ 1e−11 in 2–4 steps.
_POLISH_SOLVER = lx.GMRES(rtol=1e-2, atol=0.0, restart=20, max_steps=20)


def _followed(H, k, blow, esc) -> tuple[np.ndarray, float]:
    """The escape direction the carried part blows up along: the blow-up direction ŵ, polished
    by inexact Newton on the sphere when its relative KKT residual is above 1e−9 (and kept if
    Newton does not converge from it); the optimal direction when nothing blows up."""
    if blow is None:
        return np.asarray(esc.direction), float(esc.speed)
    w = blow.direction
    rel = float(_relative_kkt(H, w))
    if rel > 1e-9:
        ref = refine_escape_direction(H, k, w, max_steps=8, linear_solver=_POLISH_SOLVER)
        if ref.result == RESULTS.successful and float(ref.speed) > 0:
            return np.asarray(ref.direction), float(ref.speed)
    return np.asarray(w), float(_escape_speed(H, k, w))


@eqx.filter_jit
def _relative_kkt(H, w):
    """The KKT residual of w relative to ‖∇H(w)‖, compiled (H is a jet of L: op by op each call
    dispatches hundreds of primitives)."""
    return kkt_residual(H, w) / jnp.linalg.norm(jax.grad(H)(w))


_escape_speed = eqx.filter_jit(escape_speed)


# ---------------------------------------------------------------------------------------------
# following a path


def _start_time(k, s, r0) -> float:
    return math.log(r0) / s if k == 2 else -(r0 ** (-(k - 2))) / ((k - 2) * s)


def _save_times(tau0, arrival, s, n) -> np.ndarray:
    """Saves for a path: geometric after the start and towards the arrival, and uniform over
    |τ| ≤ 30/s, where the H-path reaches O(1) (τ = 0) and the loss drops."""
    span = arrival - tau0
    a = tau0 + span * np.geomspace(1e-7, 1.0, n // 4)
    b = arrival - span * np.geomspace(1.0, 1e-7, n // 4)
    c = np.linspace(max(tau0, -30.0 / s), min(arrival, 30.0 / s), n - 2 * (n // 4))
    ts = np.sort(np.concatenate([[tau0], a, b, c]))[: n + 1]
    ts = np.clip(ts, tau0, arrival)
    for i in range(1, ts.size):  # strictly increasing, as diffrax needs
        ts[i] = max(ts[i], np.nextafter(ts[i - 1], np.inf))
    return ts


def _follow(
    objective, unravel_params, x, rho, k, s, loss0, config, polish
) -> tuple[PyTree, ChainPath]:
    """The flow from ϑ + r₀ρ at τ₀ (on the H-path) to the next critical point: a search for
    the arrival, then one solve that saves along the way. The search runs to 30 × the escape
    time first, and on to the horizon only if the path neither arrived nor drifts (`_drifting`).
    The path ends early at a dip of ‖∇L‖ (`_dips`) only where `polish` (Newton's method) from
    there reaches a critical point: a slowdown with no critical point next to it is passed.
    An arrived path's end is that critical point (polished); a failed one's where it stopped."""
    r0 = config["radius"]
    tau0 = _start_time(k, s, r0)
    scale = abs(tau0) + 1.0 / s
    horizon = config["horizon_factor"] * scale
    drop = config["min_drop"] * max(abs(loss0), 1e-300)
    n = config["n_save"]
    kwargs = dict(
        event=(
            CriticalPoint(config["grad_tol"], loss0 - drop),
            LossBelow(config["loss_floor"] + config["loss_tol"]),
        ),
        trainable=config["trainable"],
        **config["flow_options"],
    )
    flow = sliding_flow if config["sliding"] else gradient_flow
    if not config["sliding"]:
        kwargs.update(stop_at_event=True, throw=False)
    elif config["continue_smoothing"] is not None:
        kwargs.update(continue_smoothing=config["continue_smoothing"])
    start = unravel_params(x + r0 * rho)
    t_from, params_from, pieces, steps = tau0, start, [], 0
    fired, result = False, RESULTS.successful
    for stop in sorted({min(horizon, 30.0 * scale), horizon}):
        sol = flow(objective, params_from, tau0 + stop, t0=t_from, n_save=n + 1, **kwargs)
        steps += int(sol.stats["num_steps"])
        pieces.append(_saved(sol, float(sol.stop_time)))
        fired = bool(jnp.isfinite(sol.event_time))
        result = sol.result
        if fired or result != RESULTS.successful:
            break
        ts, loss, _, norm = (np.concatenate(a) for a in zip(*pieces))
        if _drifting(ts, norm, loss):
            result = RESULTS.path_diverged
            break
        result = RESULTS.stage_not_converged
        t_from, params_from = float(sol.stop_time), sol.final_params
    end = sol.final_params
    arrival = float(sol.event_time) if fired else float(sol.stop_time)
    if result == RESULTS.successful:
        ts = _save_times(tau0, arrival, s, n)
        t1 = max(arrival + 1e-9 * max(1.0, abs(arrival)), ts[-1])
        sol = flow(objective, start, t1, t0=tau0, saveat=ts, **kwargs)
        result, steps = sol.result, int(sol.stats["num_steps"])
        end, saved = sol.final_params, _saved(sol, float(sol.stop_time))
        dips = _dips(saved[1], saved[2], loss0 - drop) if result == RESULTS.successful else []
        for dip in dips:
            polished, settled = polish(sol.params_at(dip))
            if settled:
                end, arrival = polished, float(sol.ts[dip])
                saved = _saved(sol, arrival)
                break
        else:
            if result == RESULTS.successful:
                end = polish(end)[0]
        pieces = [saved]
    ts, loss, grad, norm = (np.concatenate(a) for a in zip(*pieces))
    path = ChainPath(
        ts=ts, loss=loss, grad_norm=grad, norm=norm, start_radius=r0, start_time=tau0,
        arrival_time=arrival, steps=steps, result=result,
        kinks_at_arrival=int(sol.stats.get("active_at_stop", 0)),
    )
    return end, path


def _saved(sol, until: float) -> list[np.ndarray]:
    """The solve's saved τ, L, ‖∇L‖, ‖θ‖ up to time `until`."""
    keep = np.asarray(sol.ts) <= until
    return [np.asarray(a)[keep] for a in (sol.ts, sol.loss, sol.grad_norm, sol.norm)]


def _drifting(ts, norm, loss, ratio=0.9, settled=1e-3) -> bool:
    """A path that reached its horizon τ₁ drifts to infinity: over [τ₁/2, τ₁] (τ = 0 is its
    drop) L fell by at most `settled` × |L(τ₁)| (it has settled near its infimum, not still
    descending) and monotonically, ‖θ‖ rose monotonically, and by at least `ratio` × what it
    rose over [τ₁/4, τ₁/2]. An approach to a critical point, ‖θ‖ → c − a·τ^{−p}, rises 2^{−p}
    times as much per doubling of τ, while a drift (‖θ‖ ∝ log τ or faster) rises as much or
    more; `ratio` = 0.9 calls an approach slower than τ^{−0.15} a drift."""
    t1 = ts[-1]
    late = ts >= t1 / 2
    if not (t1 > 0 and ts.size >= 8 and np.sum(late) >= 3):
        return False
    if not (np.all(np.diff(norm[late]) >= 0) and np.all(np.diff(loss[late]) <= 0)):
        return False
    if not loss[late][0] - loss[-1] <= settled * abs(loss[-1]):
        return False
    quarter, half = np.interp([t1 / 4, t1 / 2], ts, norm)
    early_rise, late_rise = half - quarter, norm[-1] - half
    return bool(late_rise > 1e-6 * norm[-1] and late_rise >= ratio * early_rise)


def _dips(loss, grad, below, depth=1e-2) -> list[int]:
    """Saves where ‖∇L‖ dipped below `depth` × its largest value along the path and rose
    again ten-fold, after the loss fell `below`, one per dip at its deepest save, in order:
    where the flow may have passed a saddle it did not settle at (the parts that round-off
    seeds grow while a slow approach lasts), or only slowed down."""
    if grad.size < 3:
        return []
    top = np.maximum.accumulate(grad)
    later = np.maximum.accumulate(grad[::-1])[::-1]
    ok = (loss < below) & (grad < depth * top) & (later > 10 * grad)
    ok[-1] = False
    out, i = [], 0
    while i < ok.size:
        if not ok[i]:
            i += 1
            continue
        j = i
        while ok[j + 1]:
            j += 1
        out.append(i + int(np.argmin(grad[i : j + 1])))
        i = j + 1
    return out


@eqx.filter_jit
def _newton_step(f, x):
    """x − ∇²L(x)⁺∇L(x): LSMR's minimum-norm least-squares step, so the symmetries' null space
    of ∇²L (a continuum of critical points) does not move x along it."""
    g = jax.grad(f)(x)
    op = lx.FunctionLinearOperator(
        lambda v: jax.jvp(jax.grad(f), (x,), (v,))[1],
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        lx.symmetric_tag,
    )
    sol = lx.linear_solve(op, -g, lx.LSMR(rtol=1e-12, atol=0.0, max_steps=4 * x.size), throw=False)
    return x + sol.value, jnp.linalg.norm(g)


def _flat(params, trainable) -> Array:
    return ravel_pytree(split_trainable(params, trainable)[0])[0]


def _polisher(f, grad_f, grad_tol, trainable) -> Callable:
    """params ↦ (`_polish` from there, as params; whether it reached ‖∇L‖ ≤ `grad_tol`)."""

    def polish(params) -> tuple[PyTree, bool]:
        y = _polish(f, grad_f, _flat(params, trainable), grad_tol)
        return f.params(y), float(jnp.linalg.norm(grad_f(y))) <= grad_tol

    return polish


def _polish(f, grad_f, x, grad_tol, max_steps=8):
    """Newton's method on ∇L = 0 from where a path arrived (‖∇L‖ ≤ `grad_tol`): converges
    quadratically to the critical point nearby, whatever its index. A step that raises ‖∇L‖ or
    moves L by more than 1e−3 of itself (towards another critical point) is refused."""
    g0 = float(jnp.linalg.norm(grad_f(x)))
    loss = float(f(x))
    for _ in range(max_steps):
        y, _ = _newton_step(f, x)
        g = float(jnp.linalg.norm(grad_f(y)))
        if not (g < g0 and abs(float(f(y)) - loss) <= 1e-3 * max(abs(loss), 1e-300)):
            break
        x, g0 = y, g
        if g0 <= 1e-6 * grad_tol:
            break
    return x


# ---------------------------------------------------------------------------------------------
# the small part carried through a path


def _blowups(esc, carried: dict) -> dict | None:
    """T per α: the blow-up time of the H-flow from each scale's carried part (the smallest
    scale's is the escape's own); None where one does not blow up."""
    out = {}
    for alpha, u in carried.items():
        if alpha == min(carried):
            out[alpha] = esc.blowup
            continue
        blow = blowup_time(esc.H, esc.project(jnp.asarray(u)), order=esc.order, throw=False,
                           **_TIGHT_TOLERANCES)
        if blow.result != RESULTS.successful:
            return None
        out[alpha] = float(blow.time)
    return out


def _handed_over(
    objective, params_of, x, esc, u, blowup, alpha, x_next, loss_j, loss_next, path, config
):
    """The part of size α that the flow from α·θ̃ carries to ϑ^{j+1}, at unit scale: the
    term's H-flow from the carried part u at ϑ^j to where α·ψ reaches the path's radius r₀
    (the term dominates L there), then the flow of L from ϑ^j + α·ψ to the next critical
    point; that point moved along the model's symmetry orbit to ϑ^{j+1} (`gauge_aligned`),
    less ϑ^{j+1}, over α. The transport is nonlinear at amplitude α: the flow's components
    that grow along the escape (of sizes α^{1+μ/s}, μ < 0 an eigenvalue of the term's Hessian
    across the escape direction) feed the part of size α at second order. None where a solve
    fails or the flow arrives at another point.

    **Returns:** the carried part and the path-clock time τ (path j's, τ = 0 where its H-path
    is O(1)) at which it was read: the next plateau lasts τ + α^{−(k'−2)}·T(part)."""
    k, s = esc.order, esc.rho_speed
    eta = (alpha / config["radius"]) ** (k - 2) / ((k - 2) * s * blowup)
    psi = esc.project(jnp.asarray(u))
    tau0 = -(alpha ** (-(k - 2))) * blowup * min(eta, 1.0)  # the start, in path j's clock
    if eta < 1:  # else α·u is already past r₀: the flow of L starts there
        h = solve_h_flow(esc.H, psi, blowup * (1 - eta), saveat=diffrax.SaveAt(t1=True),
                         **_TIGHT_TOLERANCES)
        if h.result != diffrax.RESULTS.successful:
            return None
        psi = h.ys[-1]
    options = dict(config["flow_options"])
    options.pop("atol", None)  # rtol·RMS(θ₀): the part of size α is resolved to rtol/α
    options["rtol"] = min(float(options.get("rtol", 1e-6)), _HANDOVER_RTOL, 1e-3 * alpha)
    t1 = 4.0 * (path.arrival_time - path.start_time) - 2.0 * tau0
    sol = gradient_flow(
        objective, params_of(x + alpha * psi), t1, saveat=np.geomspace(t1 * 1e-4, t1, 256),
        throw=False, trainable=config["trainable"], **options,
    )
    if sol.result != RESULTS.successful:
        return None
    # Read where ‖∇L‖ is least between the drop's half-way level and the next drop: the
    # decaying stable part has gone and the part of size α has not yet grown (by the next
    # plateau's own H-flow, α^{k−1}-slow).
    loss = np.asarray(sol.loss)
    drop = loss_j - loss_next
    arrived = np.flatnonzero(loss < loss_next + 0.5 * drop)
    left = np.flatnonzero(loss < loss_next - 1e-3 * drop)
    if not arrived.size:
        return None
    grad = np.asarray(sol.grad_norm)[: left[0] if left.size else loss.size]
    if grad.size <= arrived[0]:
        return None
    i = arrived[0] + int(np.argmin(grad[arrived[0]:]))
    end = sol.params_at(i)
    aligned = _flat(gauge_aligned(end, params_of(x_next)), config["trainable"])
    carried = (aligned - x_next) / alpha
    if not alpha * float(jnp.linalg.norm(carried)) <= _ARRIVED_RTOL * float(
        jnp.linalg.norm(x_next - x)
    ):
        return None
    return np.asarray(carried), tau0 + float(sol.ts[i])


# The handover's flow resolves the part of size α to rtol/α of itself (its solve at α/1000);
# 1e−8 at least, as the paths' own polish.
_HANDOVER_RTOL = 1e-8
# The handover arrived at the chain's next point when the aligned distance is below this
# fraction of ‖ϑ^{j+1} − ϑ^j‖ (the carried part is O(α); another critical point is O(1) away).
_ARRIVED_RTOL = 0.1


# ---------------------------------------------------------------------------------------------
# the chain


def _continuation(init, smoothing) -> float | None:
    """`continue_smoothing` checked; None where the model has no kink smoothing to set."""
    if smoothing is None:
        return None
    smoothing = check_real("continue_smoothing", smoothing, low=0.0, high=1.0, low_open=True)
    return smoothing if has_kink_smoothing(init) else None


def _check_alphas(alphas) -> list[float]:
    try:
        out = sorted(float(a) for a in alphas)
    except TypeError:
        raise ValueError(f"`carry_alphas` must be a sequence of scales, got {alphas!r}.") from None
    if not out or not all(0 < a < 1 for a in out) or len(set(out)) < len(out):
        raise ValueError(
            f"`carry_alphas` must be distinct scales in (0, 1), got {alphas!r}: the α's whose "
            "flows the chain predicts, e.g. (1e-3, 1e-4)."
        )
    return out


def _check_args(radius, max_saddles, max_branches, grad_rtol, hess_rtol):
    if not 0 < radius < 1:
        raise ValueError(
            f"`radius` must be in (0, 1), got {radius}: the path starts at ϑ + r₀ρ, where the "
            "Taylor term must dominate (1e−4 to 1e−2 of the parameters' scale)."
        )
    for name, v in (("max_saddles", max_saddles), ("max_branches", max_branches)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "max_saddles" else 0):
            raise ValueError(f"`{name}` must be a non-negative int (max_saddles ≥ 1), got {v!r}.")
    for name, v in (("grad_rtol", grad_rtol), ("hess_rtol", hess_rtol)):
        if not 0 < v < 1:
            raise ValueError(f"`{name}` must be in (0, 1), got {v}.")


def saddle_chain(
    objective: Callable,
    init: PyTree,
    *,
    key: PRNGKeyArray | None = None,
    max_saddles: int = 10,
    max_branches: int = 0,
    radius: float = 1e-3,
    grad_rtol: float = 1e-8,
    min_drop: float = 1e-3,
    loss_floor: float = 0.0,
    loss_tol: float | None = None,
    hess_rtol: float = 1e-6,
    degenerate_rtol: float = 1e-6,
    taylor_rtol: float = 1e-6,
    max_order: int = 8,
    n_restarts: int = 8,
    n_eig: int = 8,
    dense_max: int = 2500,
    max_positive: int = 256,
    horizon_factor: float = 1e4,
    n_save: int = 256,
    rank: Callable | None = None,
    dedupe: bool = True,
    trainable=eqx.is_inexact_array,
    sliding: bool | None = None,
    carry_eta: float = 1e-4,
    carry_alphas: Sequence[float] = (1e-4,),
    continue_smoothing: float | None = 1e-4,
    **flow_options,
) -> SaddleChain:
    """The chain of saddles ϑ⁰ = 0, ϑ¹, … that gradient flow from αθ̃ visits as α → 0
    (Jacot et al. Conj. 3; SPEC §4–§8), for any network, without small-α simulation.

    At each saddle: the leading Taylor term on the directions the flow can leave by and the
    escape direction that the flow from `init` takes (module docstring); the escape path,
    started on it at radius `radius`·‖θ̃‖ on the H-path and integrated by `gradient_flow`
    (auto-switching stiff solver) to the next critical point (‖∇L‖ ≤ `grad_rtol`·g, g the
    gradient scale of the first escape, after the loss fell by `min_drop`), polished by
    Newton's method (minimum-norm steps) to the critical point there; that point's
    Hessian spectrum (dense below `dense_max` parameters, LOBPCG on HVPs above), and a probe
    for a kink near it across which L falls at first order (`kink_descent`; ReLU nets). The
    chain stops at a minimum, at `loss_floor` + `loss_tol`, after `max_saddles`, or on a failed
    path.

    **Arguments:**

    - `objective`: L, a callable of the model (a saddlejax objective or any function).
    - `init`: θ̃, the unit-scale initialisation whose small-α flows the chain describes (the
        flow from α·θ̃); its `trainable` leaves are the parameters.
    - `key`: PRNG key (probes, restarts, LOBPCG; default `jr.key(0)`).
    - `max_saddles`: at most this many escapes.
    - `max_branches`: at each degenerate saddle follow up to this many other escape
        directions (the other optimal directions the restarts found, or −ρ for k = 2) to their
        critical points, reported in `branches`.
    - `radius`: r₀ relative to ‖θ̃‖; the path's first point is ϑ + r₀‖θ̃‖ρ.
    - `grad_rtol`, `min_drop`, `loss_floor`, `loss_tol` (default 1e−4·L(0)): when a path has
        arrived and when the chain ends.
    - `hess_rtol`: eigenvalues with |λ| ≤ `hess_rtol`·max|λ| are zero.
    - `degenerate_rtol`: bottom eigenvalues within this fraction of λ_min span the escape space.
    - `taylor_rtol`, `max_order`: of `taylor_term` on the null space.
    - `n_restarts`: of `optimal_escape`. `n_eig`: bottom eigenpairs computed.
    - `dense_max`, `max_positive`: the Hessian's eigen-decomposition (above).
    - `horizon_factor`: a path runs at most this many times its escape time.
    - `n_save`: saves per path. `rank`: the model's rank, a callable of the params (default
        `default_rank`). `trainable`: filter of the parameters.
    - `dedupe`: two escape directions of a k > 2 term are the same when they change the
        model's outputs (A_θ for a DLN, f(X) for an objective with data `x`) equally at order
        k, i.e. modulo the symmetries that fix the saddle (rotations of a DLN's hidden units).
    - `sliding`: follow the paths with `sliding_flow` (the Filippov flow, which slides along
        ReLU kinks where `gradient_flow` crawls); default: where L has `leaky_relu` kinks and
        `init` is not a smoothed net (`smoothing` > 0). A path that arrives at a critical
        point of the sliding flow on a kink (Clarke-critical, not a critical point of a smooth
        piece) ends the chain there, as "on_kinks": its Taylor terms do not classify it.
    - `carry_eta`: where no handover is made (`carry_alphas`), η of the part carried past a
        k > 2 escape: the H-flow's part transverse to the followed direction at (1 − η)·T
        (module docstring). The flow from α·θ̃ hands over at η ~ α; the carried part settles
        as η → 0, but too small an η is within the blow-up's own error, where the followed
        direction's misalignment, times the radius, swamps it
        (`benchmarks/bench_relu_chain_drops.py --carry-etas`).
    - `carry_alphas`: the scales α at which the part carried past each k > 2 escape is
        moved through the path (`_handed_over`: the escape's H-flow to the path's radius, then
        the flow of L at that amplitude, compared with the next saddle modulo the model's
        symmetries), for models whose symmetries `gauge_aligned` knows (`DeepLinear`) and
        smooth paths (at an α so large that α·u is past the radius already, the flow of L
        starts at α·u, and runs the plateau itself, short at such α). A later plateau's T
        depends on α through that part, slowly (`ChainSaddle.blowups`): give the α's the
        predictions are for. Elsewhere, and where a handover fails (warned), the part is
        `carry_eta`'s, one T for every α.
    - `continue_smoothing`: with `sliding`, where a path's sliding flow stops on dense kink
        switching (`kink_events_dense`: kinks of units still tiny meet at a corner), it goes on
        as the flow of the same weights at this kink smoothing ε (`sliding_flow`'s
        `continue_smoothing`; only for `DeepReLU` and ReLU `TwoLayer` models, whose
        `nn.with_smoothing` exists), within O(ε) of the exact path; the point it arrives at is
        polished on the exact L. None: such a path fails.
    - `**flow_options`: of `gradient_flow`, or of `sliding_flow` (`rtol`, `atol`, `solver`,
        `max_steps`: 100,000 per path by default; a path that crawls along ReLU kinks without
        `sliding` fails in minutes, reported).

    **Returns:** a `SaddleChain`; its `staircase(alpha, ts)`, `escape_times(alpha)` and
    `drop_times(alpha)` are the predictions for the flow from α·θ̃.
    """
    _check_args(radius, max_saddles, max_branches, grad_rtol, hess_rtol)
    key = jr.key(0) if key is None else check_key("key", key)
    rank = default_rank if rank is None else rank
    state, static = split_trainable(init, trainable)
    theta, unravel = ravel_pytree(state)
    norm0 = float(jnp.linalg.norm(theta))
    if not norm0 > 0:
        raise ValueError("`init` is 0: pass the unit-scale initialisation θ̃ (the flow from αθ̃).")
    flow_options.setdefault("max_steps", 100_000)
    f = _FlatLoss(objective, static, unravel)
    if sliding is None:  # a smoothed net keeps the primitive only where it is exact
        sliding = applies_kinks(f, theta) and not getattr(init, "smoothing", 0)
    params_of = f.params
    grad_f = jax.jit(jax.grad(f))

    x = jnp.zeros_like(theta)
    alphas = _check_alphas(carry_alphas)
    # The small part at unit scale, per α: the flow starts at α·θ̃. Carried through the paths
    # at amplitude α where the model's symmetries are known (`_handed_over`).
    carried = {a: np.asarray(theta) for a in alphas}
    offsets = dict.fromkeys(alphas, 0.0)  # the path-clock time each part was read at
    handover = has_gauge(init) and not sliding and not jax.tree_util.tree_leaves(
        eqx.filter(static, eqx.is_array)
    )
    u, per_alpha = carried[alphas[0]], False
    loss0 = float(f(x))
    tol = 1e-4 * abs(loss0) if loss_tol is None else loss_tol
    floor = (loss_floor + tol) * (1 + 1e-4)  # the floor event, located to ~1e−5
    config = dict(
        radius=radius * norm0, min_drop=min_drop, loss_floor=loss_floor, loss_tol=tol,
        taylor_rtol=taylor_rtol, max_order=max_order, n_restarts=n_restarts, n_save=n_save,
        horizon_factor=horizon_factor, flow_options=flow_options, grad_tol=None, sliding=sliding,
        carry_eta=check_real("carry_eta", carry_eta, low=0.0, high=1.0, low_open=True,
                             high_open=True),
        continue_smoothing=_continuation(init, continue_smoothing),
        trainable=trainable,
    )
    saddles: list[ChainSaddle] = []
    paths: list[ChainPath] = []
    branches: list[list[ChainBranch]] = []
    log_stages: list[tuple] = []  # (x, a, b) of earlier k = 2 plateaus, for the exponents
    stop_reason = "max_saddles"
    for j in range(max_saddles + 1):
        key, k_curv, k_esc = jr.split(key, 3)
        loss_j = float(f(x))
        here = params_of(x)
        point = dict(params=here, loss=loss_j, grad_norm=float(jnp.linalg.norm(grad_f(x))),
                     rank=int(rank(here)), n_params=int(x.size))
        if loss_j <= floor:
            saddles.append(_unclassified(point, "loss_floor"))
            stop_reason = "loss_floor"
            break
        if paths and paths[-1].kinks_at_arrival > 0:
            saddles.append(_unclassified(point, "on_kinks"))
            stop_reason = (
                f"on_kinks: the path arrived at a critical point of the sliding flow held on "
                f"{paths[-1].kinks_at_arrival} ReLU kinks (Clarke-critical), which the smooth "
                "pieces' Taylor terms do not classify"
            )
            break
        curv = _curvature(
            f, x, hess_rtol=hess_rtol, dense_max=dense_max, n_eig=n_eig,
            max_positive=max_positive, key=k_curv,
        )
        if j > 0:  # the origin's one-sided terms are exact: its kinks are in the Taylor term
            point["kink"] = kink_descent(f, x, key=jr.fold_in(k_curv, 1), scale=curv.scale)
        if j == max_saddles:
            saddles.append(_unclassified(point, "not_followed", curv))
            break
        if curv.index > 0:
            esc = _strict_escape(curv, u, degenerate_rtol)
        else:
            origin = None
            if j == 0:  # at an origin the "outputs" route is exact for any activation, and fast
                term = taylor_term(objective, here, key=k_esc)
                if term.method == "outputs":
                    origin = _OriginTerm(_OriginH(term, f), term.order, term.next_order)
            invariant = _output_invariant(objective, params_of, x) if dedupe else None
            for factor in (10.0, 100.0, 1000.0, None):
                try:
                    esc = _restricted_escape(f, x, curv, u, origin, invariant, config, k_esc)
                    break
                except _QuadraticOnNullSpace:
                    if factor is None:
                        raise ValueError(
                            "the Hessian's null space keeps a non-zero quadratic term up to "
                            f"`hess_rtol` = {1000 * hess_rtol:g}: the point is not critical "
                            "enough (lower `grad_rtol`) or its small eigenvalues are genuine."
                        ) from None
                    curv = _curvature(
                        f, x, hess_rtol=factor * hess_rtol, dense_max=dense_max, n_eig=n_eig,
                        max_positive=max_positive, key=k_curv,
                    )
        blowups = None
        if per_alpha and esc is not None and esc.order > 2 and esc.blowup is not None:
            blowups = _blowups(esc, carried)
            if blowups is None:
                warnings.warn(
                    "the H-flow of a carried part did not blow up at every `carry_alphas`: this "
                    "saddle's plateau length is the smallest α's at every α.",
                    NumericalWarning, stacklevel=2,
                )
        # The plateau lasts τ + α^{−(k−2)}·T from where its part was read (path-clock τ).
        lengths = None if blowups is None else {
            a: t + a ** (esc.order - 2) * offsets[a] for a, t in blowups.items()
        }
        saddle = _classified(point, curv, esc, f, x, log_stages, lengths)
        saddles.append(saddle)
        if esc is None:
            stop_reason = "minimum"
            break
        if config["grad_tol"] is None:
            config["grad_tol"] = grad_rtol * _gradient_scale(esc.order, esc.speed, loss0)
        end, path = _follow(
            objective, params_of, x, jnp.asarray(esc.rho), esc.order, esc.rho_speed, loss_j,
            config, _polisher(f, grad_f, config["grad_tol"], trainable),
        )
        paths.append(path)
        branches.append(
            _branches(objective, f, grad_f, x, esc, loss_j, config, rank, max_branches)
        )
        if path.result != RESULTS.successful:
            diverged = path.result == RESULTS.path_diverged
            stop_reason = f"path_failed: {RESULTS[path.result]}"
            if diverged:
                half = float(np.interp(path.ts[-1] / 2, path.ts, path.norm))
                stop_reason = (
                    f"path_diverged: ‖θ‖ rose from {half:.4g} to {path.norm[-1]:.4g} over "
                    f"the second half of the horizon while L fell to {path.loss[-1]:.7g} "
                    f"and ‖∇L‖ to {path.grad_norm[-1]:.3g}. {RESULTS[path.result]}"
                )
            end_x = _flat(end, trainable)
            saddles.append(_unclassified(dict(
                params=end, loss=float(f(end_x)),
                grad_norm=float(jnp.linalg.norm(grad_f(end_x))), rank=int(rank(end)),
                n_params=int(x.size)), "diverging" if diverged else "not_reached"))
            break
        if handover:  # the flows reach the balanced point of the saddle's GL-orbit
            end = balanced_representative(end)
        x_next = _flat(end, trainable)
        loss_next = float(f(x_next))
        handed = None
        if handover and esc.order > 2 and esc.blowup is not None and loss_next > floor:
            handed = {}
            for a in alphas:
                handed[a] = _handed_over(
                    objective, params_of, x, esc, carried[a], (blowups or {}).get(a, esc.blowup),
                    a, x_next, loss_j, loss_next, path, config,
                )
            if any(c is None for c in handed.values()):
                handed = None
                warnings.warn(
                    "the part carried through a path could not be handed over at every "
                    "`carry_alphas` (a solve failed, or the flow at that amplitude arrived "
                    "elsewhere): the next plateau's length comes from `carry_eta`.",
                    NumericalWarning, stacklevel=2,
                )
        if handed is None:
            u = esc.carried if esc.carried is not None else u - float(u @ esc.rho) * esc.rho
            carried, offsets = dict.fromkeys(alphas, u), dict.fromkeys(alphas, 0.0)
        else:
            carried = {a: c for a, (c, _) in handed.items()}
            offsets = {a: tau for a, (_, tau) in handed.items()}
        per_alpha = handed is not None
        x, u = x_next, carried[alphas[0]]
        if not np.linalg.norm(u) > 0:
            warnings.warn(
                "the carried small part is 0 after an escape: the next direction is the "
                "optimal one, and the plateau lengths are unknown.", NumericalWarning,
                stacklevel=2,
            )
    return SaddleChain(saddles, paths, branches, stop_reason)


def _outputs(objective, params):
    if hasattr(params, "matrix"):
        return params.matrix()
    x = getattr(objective, "x", None)
    if x is None:
        return None
    return jax.vmap(params)(x)


def _output_invariant(objective, params_of, x):
    """ρ ↦ the order-k coefficient of the outputs along ϑ + tρ (outputs(ρ) at the origin of a
    homogeneous net, by homogeneity), flattened; None if the model has no outputs to read."""
    if _outputs(objective, params_of(x)) is None:
        return None
    at_origin = not bool(jnp.any(x != 0))

    def outputs_at(y):
        return jnp.ravel(_outputs(objective, params_of(y)))

    def make(k):
        def invariant(rho):
            if at_origin:
                return outputs_at(rho)
            return _kth_ray_derivative(outputs_at, x, rho, k)

        return invariant

    return make


class _OriginTerm(eqx.Module):
    H: Callable
    order: int = eqx.field(static=True)
    next_order: int | None = eqx.field(static=True)


def _gradient_scale(k, s, loss0) -> float:
    """‖∇H‖ where H along the optimal path reaches L(0): s·r^{k−1} at r = (k·L(0)/s)^{1/k}."""
    r = (k * abs(loss0) / s) ** (1 / k)
    return s * r ** (k - 1)


def _log_plateau(f, x, esc, log_stages) -> tuple[float, float]:
    """a, b of a k = 2 plateau a·log(1/α) + b: the carried component's exponent after the
    growth it had at the earlier k = 2 saddles (their Rayleigh quotients along ρ)."""
    rho = jnp.asarray(esc.rho)
    a_sum, b_sum = 0.0, 0.0
    for x_i, a_i, b_i in log_stages:
        r_i = -float(rho @ jax.jvp(jax.grad(f), (x_i,), (rho,))[1])
        a_sum += r_i * a_i
        b_sum += r_i * b_i
    s = esc.rho_speed
    return (1.0 - a_sum) / s, (-math.log(esc.coefficient) - b_sum) / s


def _unclassified(point, kind, curv=None) -> ChainSaddle:
    """A point that is not left: the loss floor, the last one, or where a path failed."""
    return ChainSaddle(
        **point, kind=kind, hessian_index=-1 if curv is None else curv.index,
        n_positive=-1 if curv is None else curv.n_positive, order=None, next_order=None,
        restricted=False, speed=0.0, direction=None, direction_speed=0.0, multiplicity=0,
        degenerate=False, strict=None, plateau=None,
    )


def _classified(point, curv, esc, f, x, log_stages, blowups=None) -> ChainSaddle:
    """A critical point with its curvature and (for a saddle) how it is left."""
    if esc is None:
        return _unclassified(point, "minimum", curv)
    if esc.order == 2:
        a, b = _log_plateau(f, x, esc, log_stages)
        plateau = ("log", a, b)
        log_stages.append((x, a, b))
    elif blowups:
        plateau = ("power", esc.order, blowups[min(blowups)])
    else:
        plateau = ("power", esc.order, esc.blowup if esc.blowup is not None else math.nan)
    return ChainSaddle(
        **point, kind="saddle", hessian_index=curv.index, n_positive=curv.n_positive,
        order=esc.order, next_order=esc.next_order, restricted=esc.restricted,
        speed=esc.speed, direction=esc.rho, direction_speed=esc.rho_speed,
        multiplicity=esc.multiplicity,
        degenerate=esc.multiplicity > 1 or esc.rho_speed < esc.speed * (1 - 1e-6),
        strict=esc.strict, plateau=plateau, gap=esc.gap,
        deviation_coefficient=esc.deviation_coefficient,
        blowups=() if blowups is None else tuple(sorted(blowups.items())),
    )


def _branches(objective, f, grad_f, x, esc, loss_j, config, rank, max_branches):
    """The other escape directions (−ρ and the rest of the bottom eigenspace for k = 2; the
    other optimal directions, distinct modulo `invariant`, for k > 2), each followed to its
    critical point."""
    if max_branches == 0:
        return []
    others = esc.others
    out = []
    for rho in others[:max_branches]:
        end, path = _follow(
            objective, f.params, x, jnp.asarray(rho), esc.order, esc.rho_speed, loss_j, config,
            _polisher(f, grad_f, config["grad_tol"], config["trainable"]),
        )
        loss = float(objective(end))
        out.append(ChainBranch(rho, esc.rho_speed, loss, int(rank(end)), end, path))
    return out
