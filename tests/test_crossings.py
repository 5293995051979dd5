import numpy as np
import pytest

from saddlejax.analysis._crossings import crossing_times, first_crossing, hermite_interp


def test_first_crossing_is_exact_where_the_interpolant_is():
    """Each interpolation is exact on the curves it is built for: a line in (t, log v) for an
    exponential, in (log t, log v) for a power law; the Hermite cubic with the true slopes is
    O(h⁴) on e^{−t} (h = 0.5: value error ≤ h⁴/384·max|v''''| ≈ 6e−5, so ≈ 2e−4 in t at
    slope 0.3; measured 1.5e−4), where a line is off by O(h²) (measured 3e−2)."""
    ts = np.linspace(0.0, 5.0, 11)
    t, i = first_crossing(ts, np.exp(ts), 7.0, rising=True, log_values=True)
    assert i == 4 and t == pytest.approx(np.log(7.0), rel=1e-13)
    ts = np.geomspace(1.0, 1e4, 9)
    t, _ = first_crossing(ts, 3.0 * ts**-1.5, 1e-3, log_values=True, log_time=True)
    assert t == pytest.approx((3e3) ** (1 / 1.5), rel=1e-12)
    ts = np.linspace(0.0, 3.0, 7)
    level, exact = 0.3, -np.log(0.3)
    hermite, _ = first_crossing(ts, np.exp(-ts), level, slopes=-np.exp(-ts))
    line, _ = first_crossing(ts, np.exp(-ts), level)
    assert abs(hermite - exact) < 2.5e-4 < 1e-2 < abs(line - exact)


def test_first_crossing_edges():
    """Never reached: (NaN, −1); reached at the first save, or from a save already on the
    level's side: that save's time; the search starts at `start` but interpolates from the save
    before it; `crossing_times` searches each level from where the previous one was reached."""
    ts, v = np.arange(5.0), np.array([4.0, 3.0, 2.0, 1.0, 0.0])
    t, i = first_crossing(ts, v, -1.0)
    assert np.isnan(t) and i == -1
    assert first_crossing(ts, v, 5.0) == (0.0, 0)
    assert first_crossing(ts, v, 2.5, start=3) == (3.0, 3)
    assert first_crossing(ts, v, 0.5, start=3) == (3.5, 4)
    times = crossing_times(ts, v, [3.5, 4.5, 0.5, -1.0])
    np.testing.assert_array_equal(times, [0.5, 1.0, 3.5, np.nan])


def test_hermite_interp():
    """Exact on a cubic and at the saves; on e^{−t} the error falls 16× per halving of h (O(h⁴):
    measured ratios 15.6–15.9) where `np.interp`'s falls 4×; outside the saves it holds the end
    values' cubic pieces clipped to the first and last save."""
    ts = np.array([0.0, 0.3, 1.0, 2.5])
    t = np.linspace(0.0, 2.5, 101)
    cubic = lambda x: 2 * x**3 - x**2 + 0.5 * x - 1  # noqa: E731
    slope = lambda x: 6 * x**2 - 2 * x + 0.5  # noqa: E731
    np.testing.assert_allclose(hermite_interp(t, ts, cubic(ts), slope(ts)), cubic(t),
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(hermite_interp(ts, ts, cubic(ts), slope(ts)), cubic(ts))
    np.testing.assert_array_equal(hermite_interp([-1.0, 9.0], ts, cubic(ts), slope(ts)),
                                  cubic(ts[[0, -1]]))
    t = np.linspace(0.0, 4.0, 1001)
    errors, lines = [], []
    for n in (9, 17, 33):
        ts = np.linspace(0.0, 4.0, n)
        errors.append(np.max(np.abs(hermite_interp(t, ts, np.exp(-ts), -np.exp(-ts))
                                    - np.exp(-t))))
        lines.append(np.max(np.abs(np.interp(t, ts, np.exp(-ts)) - np.exp(-t))))
    assert all(14 < a / b < 17 for a, b in zip(errors, errors[1:])), errors
    assert all(3.5 < a / b < 4.5 for a, b in zip(lines, lines[1:])), lines
