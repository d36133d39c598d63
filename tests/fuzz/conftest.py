"""Hypothesis profiles for the fuzz suites.

``ci`` (the default): a fixed seed, so a failure in CI reproduces on any machine, and
no example database written into the checkout. ``deep``: random seeds and ten times
the examples, for a long local run: ``HYPOTHESIS_PROFILE=deep ./scripts/test tests/fuzz``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
