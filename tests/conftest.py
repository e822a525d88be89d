"""Suite-wide configuration: the services switch and the hypothesis profiles."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Read once: with RAWWS_REQUIRE_SERVICES=1 (set by .ci/run) a test that would
# skip for a missing service (PostgreSQL, Redis, Chromium) fails instead.
REQUIRE_SERVICES = os.environ.get("RAWWS_REQUIRE_SERVICES", "") == "1"

settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def skip_or_fail_without_service(reason: str) -> None:
    """Skip the calling test for a missing service, or fail it when CI requires services."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable (RAWWS_REQUIRE_SERVICES=1): {reason}", pytrace=False)
    pytest.skip(reason)
