"""The mean and its standard error: for episodes within an evaluation and for seeds across runs."""
from __future__ import annotations

import math
from collections.abc import Sequence


def mean_and_error(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (sample standard deviation / sqrt n) of the finite values;
    None where there is nothing, or only one value for the error."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(variance / len(finite))
