"""Settings for ``manage.py runws`` processes started by tests/test_groups_redis.py.

The Redis backend's options come from the environment, so every test run
uses a key prefix of its own: ``RAWWS_TEST_REDIS_URL``,
``RAWWS_TEST_REDIS_PREFIX``, ``RAWWS_TEST_PRESENCE_TTL``.
"""

import os

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_rawws",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django_rawws.groups": {"handlers": ["stderr"], "level": "INFO"}},
}
RAWWS = {
    "URLCONF": "tests.wsurls_redis",
    "AUTHENTICATE": "tests.wsurls_redis.authenticate",
    "ACCESS_LOG": False,
    "PING_INTERVAL": None,
    "SHUTDOWN_GRACE": 2.0,
    "CLOSE_TIMEOUT": 2.0,
    "GROUP_BACKEND": "django_rawws.groups.redis.RedisGroupBackend",
    "GROUP_OPTIONS": {
        "url": os.environ.get("RAWWS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "prefix": os.environ.get("RAWWS_TEST_REDIS_PREFIX", "rawws-test"),
        "presence_ttl": float(os.environ.get("RAWWS_TEST_PRESENCE_TTL", "30")),
        "resumable": ["room.*"],
        "resume_count": 5,
    },
}
