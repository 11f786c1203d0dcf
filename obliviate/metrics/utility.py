"""Model utility (TOFU, Maini et al. 2024): one number for what the model still knows.

    model_utility = harmonic mean of the 9 numbers {retain, real authors, world facts}
                    x {probability, ROUGE-L recall, truth ratio}.

The harmonic mean punishes any component near 0; if one is exactly 0 the utility is 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from scipy.stats import hmean


def model_utility(values: Mapping[str, float]) -> float:
    """Harmonic mean of the named components; 0 if any is 0. Empty, negative or NaN raises ValueError."""
    if not values:
        raise ValueError("model utility needs at least one component")
    for name, value in values.items():
        if math.isnan(value) or value < 0:
            raise ValueError(f"utility component {name!r} must be >= 0, got {value}")
    if any(value == 0 for value in values.values()):
        return 0.0
    return float(hmean(list(values.values())))
