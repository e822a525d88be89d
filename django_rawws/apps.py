from __future__ import annotations

from django.apps import AppConfig


class RawWSConfig(AppConfig):
    name = "django_rawws"
    verbose_name = "django-rawws"

    def ready(self) -> None:
        # Importing registers the system checks (rawws.E001...).
        from . import auth, checks  # noqa: F401

        # Session-bound sockets: logout, flush, cycle_key and password changes reach open sockets.
        auth.install()
