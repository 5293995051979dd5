"""`kink_descent`: a first-order descent across a kink near a critical point, against closed
forms (a kink at a known distance whose far side falls at a known rate), and no false alarm at
smooth critical points whose escape is quadratic or cubic."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj

P = 20
E1 = jnp.zeros(P).at[1].set(1.0)  # ϑ: the probe radii are relative to ‖ϑ‖, so ϑ ≠ 0


def _bowl(x):
    return 0.5 * jnp.sum((x - E1) ** 2)


@pytest.mark.parametrize("m", [1e-6, 1e-4])
def test_a_descending_kink_at_a_known_distance(m):
    """L = ½‖x − ϑ‖² − c·relu(x₀ − m): ϑ is L's minimum on its own piece, and past the kink
    x₀ = m the loss falls at rate c − O(m); along e₀, L(ϑ + se₀) − L(ϑ) = ½s² − c(s − m) = 0 at
    s₀ = m + m²/(2c) + …, so the distance found is m to within the probes' tilt off e₀
    (|v − e₀| ≈ r/c, r ≤ 100·m·√P here): 2 %. The slope measured past the kink: c to 10 %."""
    c = 0.5
    f = lambda x: _bowl(x) - c * jnp.maximum(x[0] - m, 0.0)  # noqa: E731
    k = sj.kink_descent(f, E1, key=jr.key(0))
    assert k is not None and k.n_found > 0
    np.testing.assert_allclose(k.distance, m, rtol=0.02)
    np.testing.assert_allclose(k.slope, c, rtol=0.1)
    assert float(k.direction[0]) > 0.99
    assert float(f(E1 + 2 * k.distance * k.direction)) < float(f(E1))


def test_an_ascending_kink_is_not_a_descent():
    """L = ½‖x − ϑ‖² + c·relu(x₀ − m) rises on both sides of the kink: None."""
    f = lambda x: _bowl(x) + 0.5 * jnp.maximum(x[0] - 1e-5, 0.0)  # noqa: E731
    assert sj.kink_descent(f, E1, key=jr.key(0)) is None


@pytest.mark.parametrize("term", ["quadratic", "cubic"])
def test_smooth_saddles_are_not_kinks(term):
    """Smooth saddles at ϑ: a strict one (L = ½‖x − ϑ‖² − 2x₀², index 1) and one whose escape
    is cubic on the Hessian's null space (L = ½‖x − ϑ‖² − ½x₀² − x₀³, the null space e₀, as a
    DLN's rank-r saddle): the loss falls along the escape direction, but quadratically or
    cubically, not at a rate that stays finite as the distance → 0: None."""
    if term == "quadratic":
        f = lambda x: _bowl(x) - 2.0 * x[0] ** 2  # noqa: E731
    else:
        f = lambda x: _bowl(x) - 0.5 * x[0] ** 2 - x[0] ** 3  # noqa: E731
    assert sj.kink_descent(f, E1, key=jr.key(0)) is None


def test_the_origin_is_refused():
    with pytest.raises(ValueError, match="`x` is 0"):
        sj.kink_descent(_bowl, jnp.zeros(P), key=jr.key(0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(r_min=0.0), "`r_min`"), (dict(r_max=1e-10), "`r_max`"), (dict(n_dirs=0), "`n_dirs`"),
    (dict(n_radii=2.0), "`n_radii`"), (dict(key=0), "`key`"),
])
def test_bad_arguments(kwargs, match):
    kwargs = dict(dict(key=jr.key(0)), **kwargs)
    with pytest.raises(ValueError, match=match):
        sj.kink_descent(_bowl, E1, **kwargs)
