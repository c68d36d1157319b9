"""Percentile summaries and ratios: the only arithmetic the report does."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Summary = dict[str, Any]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in [0, 100]."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def summarize(values: Sequence[float], *, scale: float = 1.0, digits: int = 3) -> Summary:
    """``count``, ``p50``, ``p90``, ``p99``, ``max`` and ``mean`` of ``values`` times ``scale``.

    An empty sample gives ``count: 0`` and ``None`` for every figure, so a report
    never shows a made-up number.
    """
    ordered = sorted(v * scale for v in values)
    if not ordered:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 50), digits),
        "p90": round(percentile(ordered, 90), digits),
        "p99": round(percentile(ordered, 99), digits),
        "max": round(ordered[-1], digits),
        "mean": round(sum(ordered) / len(ordered), digits),
    }


def ratio(numerator: float | None, denominator: float | None, digits: int = 1) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the denominator is 0.

    Ratios below 1 keep two significant digits (0.02, not 0.0).
    """
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = numerator / denominator
    return round(value, digits) if value >= 1 else float(f"{value:.2g}")
