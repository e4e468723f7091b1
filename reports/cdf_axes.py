"""The x-range of an empirical CDF, fitted to its samples.

A CDF drawn from 0 (or over a fixed range) squeezes data that sit far from 0 into a sliver at
the right edge: TTFTs of 1.20 to 1.25 s on an axis from 0 s show one vertical line. The range
here runs from the smallest to the largest sample with a margin on each side, so it always
contains both; when the samples span more than `LOG_DECADES` decades (a long tail of ITL gaps)
the axis is logarithmic and the margin is a factor.
"""

from __future__ import annotations

import math

import numpy as np

MARGIN = 0.05  # of the data's span on each side (of its decades on a log axis)
LOG_DECADES = 2.0  # samples spanning more decades than this get a log x axis


def cdf_range(values, margin: float = MARGIN) -> tuple[float, float, bool]:
    """(left, right, log) of the x axis for a CDF of `values` (NaN and infinities ignored).

    left <= min and right >= max always hold. Linear: the span widened by `margin` on each
    side, left kept at 0 or above when every sample is (a time is never negative); a single
    value gets +-5% of itself (or +-1 when it is 0). Log (positive samples over more than
    LOG_DECADES decades): min / f and max * f with f = (max / min) ** margin."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0, False
    lo, hi = float(v.min()), float(v.max())
    if lo > 0 and math.log10(hi / lo) > LOG_DECADES:
        f = (hi / lo) ** margin
        return lo / f, hi * f, True
    span = hi - lo
    pad = margin * span if span > 0 else (0.05 * abs(hi) if hi != 0 else 1.0)
    left = lo - pad
    if lo >= 0:
        left = max(left, 0.0)
    return left, hi + pad, False


def fit_cdf_axis(ax, values) -> tuple[float, float, bool]:
    """Set the x range (and log scale where it applies) of `ax` to `cdf_range(values)`."""
    left, right, log = cdf_range(values)
    if log:
        ax.set_xscale("log")
    ax.set_xlim(left, right)
    return left, right, log
