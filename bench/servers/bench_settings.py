"""Django settings for benchmarking ``runws``: the example project's, in production mode.

``bench/run.py`` starts ``example_project/manage.py runws --noreload
--settings=bench_settings --pythonpath=bench/servers`` and names the example's
own settings module in ``RAWWS_BENCH_BASE_SETTINGS`` (read from its
manage.py). Everything is the example's except what production would change:
``DEBUG = False`` and hosts limited to the loopback the benchmark uses.
Logging, system checks and limits stay as the example sets them.
"""

from __future__ import annotations

import importlib
import os

_base = importlib.import_module(os.environ.get("RAWWS_BENCH_BASE_SETTINGS", "example_project.settings"))

globals().update({name: value for name, value in vars(_base).items() if name.isupper()})

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
