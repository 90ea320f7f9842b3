"""Power-law fits recover a known exponent within their reported uncertainty."""
import math
import random

import pytest

from spt_dist.study.fit import fit_power_law


@pytest.mark.parametrize("b, noise", [(0.3, 0.03), (0.7, 0.1), (0.15, 0.0)])
def test_known_exponent_is_recovered(b, noise):
    rng = random.Random(int(b * 100))
    xs, ys = [], []
    for n in (100, 300, 1000, 3000, 10000):
        for _ in range(3):  # seeds
            xs.append(n)
            ys.append(40.0 * n ** (-b) * math.exp(rng.gauss(0.0, noise)))
    fit = fit_power_law(xs, ys)
    assert fit.points == 15
    assert abs(fit.b - b) <= max(2 * fit.b_se, 1e-9)
    if noise:
        assert 0 < fit.b_se < 0.1
    assert fit(1000) == pytest.approx(40.0 * 1000 ** (-b), rel=0.2)


def test_coverage_over_many_draws():
    """The 2-sigma interval holds the true exponent in about 95 % of noisy studies."""
    rng, hits, trials = random.Random(1), 0, 400
    for _ in range(trials):
        xs = [n for n in (100, 1000, 10000) for _ in range(3)]
        ys = [20.0 * x ** -0.4 * math.exp(rng.gauss(0, 0.1)) for x in xs]
        fit = fit_power_law(xs, ys)
        hits += abs(fit.b - 0.4) <= 2 * fit.b_se
    assert 0.88 <= hits / trials <= 0.995


def test_too_few_points_give_no_fit():
    assert fit_power_law([10, 10, 10], [1, 2, 3]) is None
    assert fit_power_law([10, 100], [1, 0.5]) is None
