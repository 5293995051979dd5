"""Escape-time scaling across initialisation scales α, fitted per seed and set beside the theory
(Jacot et al. Thm 2, App. C.5, Lemma 13; SPEC §1, §8).

The escape time t_α(r) (first t with ‖θ_α(t)‖ = r, from θ₀ = αθ̃) of a flow whose leading
Taylor term at the origin has order k obeys

    k = 2:  t_α = a·log(1/α) + b + o(1),        a = 1/s*,
    k > 2:  t_α = a·α^{−(k−2)} + b + o(1),      a = T_H(θ̃),

the second by Lemma 13: the flow of H from αθ̃ is αΓ_H(α^{k−2}t, θ̃), which leaves every
neighbourhood of 0 at α^{−(k−2)}T_H(θ̃) up to an O(1) time (the stretch from where H stops
describing L to the radius r takes a time independent of α), so α^{k−2}·t_α = T_H(θ̃) +
b·α^{k−2} + …: the correction to the scaled time is O(α^{k−2}). Both laws are linear in (a, b),
and are fitted by least squares per seed: k = 2 on t_α against log(1/α); k > 2 on α^{k−2}t_α
against α^{k−2} (so that every α weighs the same relative error), where a two-point fit is the
Richardson extrapolation of α^{k−2}t_α to α = 0.
"""

import equinox as eqx
import numpy as np
from jaxtyping import ArrayLike, Bool, Float


class EscapeTimeScaling(eqx.Module):
    """The fitted law t_α = a·g(α) + b per seed, g = log(1/α) (k = 2) or α^{−(k−2)} (k > 2),
    beside the theory's a (see `escape_time_scaling`).

    **Fields:**

    - `order`: k. `alphas` (n_alpha,), decreasing; `escape_times` (n_alpha, n_seed), rows in
        the order of `alphas`.
    - `scaled_times`: t_α/g(α): t_α/log(1/α) (k = 2) or α^{k−2}·t_α (k > 2).
    - `coefficients`: a per seed — the slope of t_α against log(1/α) (k = 2) or the limit
        lim_{α→0} α^{k−2}t_α (k > 2). `coefficient_errors`: its standard error from the fit's
        residuals (NaN with only two α's in the fit). `intercepts`: b per seed.
    - `mean`, `std`, `sem`: of `coefficients` over the valid seeds (std with ddof 1; sem =
        std/√n) — the spread over θ̃, meaningful for k = 2 where a = 1/s* for every seed.
    - `theory`: the theory's a per seed (1/s* for k = 2, T_H(θ̃) for k > 2), NaN if not given.
    - `relative_errors`: a/theory − 1 per seed.
    - `correction_exponents`: k > 2 only, per seed: q in α^{k−2}t_α = a + c·α^q fitted to the
        three smallest α of the fit (theory: q = k − 2); NaN when fewer than 3 α's or the
        differences do not have one sign.
    - `valid`: per seed, whether every escape time used in the fit is finite.
    - `n_fit`: the number of (smallest) α's used in the fit.
    """

    order: int = eqx.field(static=True)
    alphas: Float[np.ndarray, " n_alpha"]
    escape_times: Float[np.ndarray, "n_alpha n_seed"]
    scaled_times: Float[np.ndarray, "n_alpha n_seed"]
    coefficients: Float[np.ndarray, " n_seed"]
    coefficient_errors: Float[np.ndarray, " n_seed"]
    intercepts: Float[np.ndarray, " n_seed"]
    mean: float
    std: float
    sem: float
    theory: Float[np.ndarray, " n_seed"]
    relative_errors: Float[np.ndarray, " n_seed"]
    correction_exponents: Float[np.ndarray, " n_seed"]
    valid: Bool[np.ndarray, " n_seed"]
    n_fit: int = eqx.field(static=True)

    def table(self) -> str:
        """The fit per seed as a text table."""
        what = "slope a (1/s*)" if self.order == 2 else "lim α^{k−2}t_α (T_H)"
        head = f"{'seed':>4} {what:>22} {'± s.e.':>10} {'theory':>12} {'rel. error':>11}"
        lines = [head, "-" * len(head)]
        for j in range(self.coefficients.size):
            lines.append(
                f"{j:>4d} {self.coefficients[j]:>22.10g} {self.coefficient_errors[j]:>10.2g} "
                f"{self.theory[j]:>12.10g} {self.relative_errors[j]:>11.3e}"
            )
        lines.append(f"mean {self.mean:.10g} ± {self.sem:.2g} (std {self.std:.2g})")
        return "\n".join(lines)


def _check_inputs(alphas, event_times, order, n_fit, theory):
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 2:
        raise ValueError(
            f"`order` must be an int k ≥ 2 (k = L for a depth-L network at its origin), got "
            f"{order!r}."
        )
    alphas = np.asarray(alphas, dtype=float)
    times = np.asarray(event_times, dtype=float)
    if alphas.ndim != 1 or alphas.size < 2:
        raise ValueError(f"`alphas` must be a 1-D array of at least 2 scales, got {alphas.shape}.")
    if np.any(~(alphas > 0)) or np.unique(alphas).size != alphas.size:
        raise ValueError(f"`alphas` must be positive and distinct, got {alphas.tolist()}.")
    if order == 2 and np.any(alphas >= 1):
        raise ValueError(f"for k = 2, log(1/α) needs every α < 1, got {alphas.tolist()}.")
    if times.ndim == 1:
        times = times[:, None]
    if times.ndim != 2 or times.shape[0] != alphas.size:
        raise ValueError(
            f"`event_times` must have shape (n_alpha, n_seed) = ({alphas.size}, ...) or "
            f"(n_alpha,), got {times.shape}; pass `SweepResult.solution.event_time`."
        )
    n_fit = alphas.size if n_fit is None else n_fit
    if isinstance(n_fit, bool) or not isinstance(n_fit, int) or not 2 <= n_fit <= alphas.size:
        raise ValueError(f"`n_fit` must be an int in [2, {alphas.size}], got {n_fit!r}.")
    n_seed = times.shape[1]
    if theory is None:
        theory = np.full(n_seed, np.nan)
    else:
        theory = np.asarray(theory, dtype=float)
        if theory.ndim > 1 or theory.size not in (1, n_seed):
            raise ValueError(
                f"`theory` must be a number or one value per seed ({n_seed}), got shape "
                f"{theory.shape}."
            )
        theory = np.broadcast_to(theory.reshape(-1), (n_seed,)).copy()
    order_ = np.argsort(-alphas)  # decreasing α: the fit uses the last n_fit rows
    return int(order), alphas[order_], times[order_], n_fit, theory


def _correction_exponent(alphas, scaled) -> float:
    """q with y(α) = a + c·α^q through three points (α₁ > α₂ > α₃): the root of
    (α₁^q − α₂^q)/(α₂^q − α₃^q) = (y₁ − y₂)/(y₂ − y₃), monotone in q."""
    d12, d23 = scaled[0] - scaled[1], scaled[1] - scaled[2]
    if not (np.isfinite(d12) and np.isfinite(d23)) or d12 * d23 <= 0:
        return np.nan
    target = np.log(d12 / d23)
    la = np.log(alphas)

    def f(q):  # log of the ratio of power differences, written stably in q
        num = q * la[0] + np.log(-np.expm1(q * (la[1] - la[0])))
        den = q * la[1] + np.log(-np.expm1(q * (la[2] - la[1])))
        return num - den - target

    lo, hi = 1e-3, 20.0
    if f(lo) * f(hi) > 0:
        return np.nan
    from scipy.optimize import brentq  # scipy's modules are imported where used (start-up)

    return float(brentq(f, lo, hi, xtol=1e-12))


def escape_time_scaling(
    alphas: Float[ArrayLike, " n_alpha"],
    event_times: Float[ArrayLike, "n_alpha n_seed"] | Float[ArrayLike, " n_alpha"],
    *,
    order: int,
    theory: float | Float[ArrayLike, " n_seed"] | None = None,
    n_fit: int | None = None,
) -> EscapeTimeScaling:
    """Fit the escape-time law across α per seed and set it beside the theory (SPEC §8).

    k = 2 (L = 2): t_α = a·log(1/α) + b, least squares per seed; theory a = 1/s*
    (t_α ≈ (1/s*)log(1/α) + O(1)). The remainder is o(1) (components along slower escape
    directions decay like α^{1 − s₂/s*}), so the slope is fitted, not read off one α.

    k > 2 (L > 2): α^{k−2}·t_α = a + b·α^{k−2}, least squares per seed; a is the
    extrapolation of α^{k−2}t_α to α = 0 and the theory is a = T_H(θ̃) (Lemma 13;
    `blowup_time`). The correction order k − 2 follows from Lemma 13 (module docstring); it is
    checked, not assumed, by `correction_exponents`, fitted from the three smallest α. With
    two α's the fit is Richardson's extrapolation; with more, its residuals give the standard
    error. Use `n_fit` to fit only the smallest α's when the largest lie outside the
    asymptotic regime.

    A seed with a non-finite escape time among the fitted α's (the event never fired: raise
    `t1`) gets NaN and is left out of `mean`, `std`, `sem`.

    **Arguments:**

    - `alphas`: the scales, any order.
    - `event_times`: t_α(r) per α and seed, shape (n_alpha, n_seed) or (n_alpha,), e.g.
        `SweepResult.solution.event_time` of a sweep with `event=EscapeRadius(r)`.
    - `order`: k, the order of the leading Taylor term at the origin (k = L for a DLN).
    - `theory`: the theory's a: 1/s* for k = 2 (e.g. `1 / dln_optimal_speed(G, 2)`),
        T_H(θ̃) per seed for k > 2 (`blowup_time(H, θ̃).time`), or None.
    - `n_fit`: how many of the smallest α's to fit (default: all; at least 2).

    **Returns:** an `EscapeTimeScaling`.

    **Example:**

    ```python
    res = saddlejax.sweep(problem, draw, t1, alphas=[1e-2, 1e-3, 1e-4], seeds=[0, 1],
                          event=saddlejax.EscapeRadius(1.0))
    fit = escape_time_scaling(res.alphas, res.solution.event_time, order=3,
                              theory=[blowup_time(H, draw(jr.key(s)).weights).time for s in (0, 1)])
    print(fit.table())
    ```
    """
    order, alphas, times, n_fit, theory = _check_inputs(alphas, event_times, order, n_fit, theory)
    p = order - 2
    g = np.log(1.0 / alphas) if order == 2 else alphas ** (-float(p))
    scaled = times / g[:, None]
    fit_rows = slice(alphas.size - n_fit, alphas.size)
    if order == 2:  # t = a·log(1/α) + b
        x = np.stack([g[fit_rows], np.ones(n_fit)], axis=1)
        y = times[fit_rows]
    else:  # α^p t = a + b·α^p
        x = np.stack([np.ones(n_fit), alphas[fit_rows] ** p], axis=1)
        y = scaled[fit_rows]
    valid = np.all(np.isfinite(y), axis=0)
    n_seed = times.shape[1]
    coef = np.full((2, n_seed), np.nan)
    err = np.full(n_seed, np.nan)
    if valid.any():
        coef[:, valid], *_ = np.linalg.lstsq(x, y[:, valid], rcond=None)
        if n_fit > 2:
            rss = np.sum((y[:, valid] - x @ coef[:, valid]) ** 2, axis=0)
            cov00 = np.linalg.inv(x.T @ x)[0, 0]
            err[valid] = np.sqrt(rss / (n_fit - 2) * cov00)
    a, b = coef  # k > 2: α^p t = a + b·α^p is t = a·α^{−p} + b, so b is the intercept too
    exponents = np.full(n_seed, np.nan)
    if order > 2 and n_fit >= 3:
        last3 = slice(alphas.size - 3, alphas.size)
        exponents = np.asarray(
            [_correction_exponent(alphas[last3], scaled[last3, j]) for j in range(n_seed)]
        )
    good = a[valid]
    n = good.size
    std = float(np.std(good, ddof=1)) if n > 1 else np.nan
    return EscapeTimeScaling(
        order=order,
        alphas=alphas,
        escape_times=times,
        scaled_times=scaled,
        coefficients=a,
        coefficient_errors=err,
        intercepts=b,
        mean=float(np.mean(good)) if n else np.nan,
        std=std,
        sem=std / np.sqrt(n) if n > 1 else np.nan,
        theory=theory,
        relative_errors=a / theory - 1.0,
        correction_exponents=exponents,
        valid=valid,
        n_fit=n_fit,
    )
