"""``bench_settings`` with the Redis group backend: for the cross-process fan-out scenario.

``bench/run.py`` starts two ``runws`` processes with these settings; they
share groups through Redis (``RAWWS_BENCH_REDIS_URL``, default
``redis://127.0.0.1:6379/0``) under the key prefix ``RAWWS_BENCH_REDIS_PREFIX``
(one per harness run, so a benchmark never touches another's keys).
"""

from __future__ import annotations

import os

from bench_settings import *  # noqa: F403
from bench_settings import RAWWS as _RAWWS  # type: ignore[attr-defined]

RAWWS = {
    **_RAWWS,
    # 1000 receivers come from one address, 127.0.0.1: no per-address quota here.
    "MAX_CONNECTIONS_PER_ADDRESS": None,
    "GROUP_BACKEND": "django_rawws.groups.redis.RedisGroupBackend",
    "GROUP_OPTIONS": {
        "url": os.environ.get("RAWWS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "prefix": os.environ.get("RAWWS_BENCH_REDIS_PREFIX", "rawws-bench"),
    },
}
