"""Scaling curves: error as a power law, err = a * x^(-b), fitted by least squares on
log err = log a - b log x over every seed's point; the exponent's uncertainty is the slope's
standard error from the residuals (it needs at least 3 points at 2 or more distinct x)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass
class PowerLaw:
    a: float
    b: float            # the exponent: error falls as x^-b
    b_se: float         # its standard error
    points: int

    def __call__(self, x: float) -> float:
        return self.a * x ** (-self.b)


def fit_power_law(xs: Sequence[float], errors: Sequence[float]) -> Optional[PowerLaw]:
    """None when the points cannot determine a line with an uncertainty."""
    pts = [(math.log(x), math.log(e)) for x, e in zip(xs, errors) if x > 0 and e > 0]
    if len(pts) < 3 or len({p[0] for p in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    intercept = my - slope * mx
    resid = sum((p[1] - intercept - slope * p[0]) ** 2 for p in pts)
    se = math.sqrt(resid / (n - 2) / sxx) if n > 2 else float("inf")
    return PowerLaw(math.exp(intercept), -slope, se, n)
