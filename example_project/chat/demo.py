"""Demo data, so that the chat works right after ``migrate``: three users and three rooms.

Created by a ``post_migrate`` handler (see ``apps.py``) rather than a data
migration: it runs after every ``migrate`` and ``flush``, creates only what is
missing, and never resets a password someone changed. The users and their
password come from the settings ``CHAT_DEMO_USERS`` and ``CHAT_DEMO_PASSWORD``
(an empty list turns the demo users off); the login page lists them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEMO_ROOMS = [("lobby", "Lobby"), ("django", "Django"), ("random", "Random")]


def demo_users() -> list[str]:
    return list(getattr(settings, "CHAT_DEMO_USERS", []))


def demo_password() -> str:
    return str(getattr(settings, "CHAT_DEMO_PASSWORD", ""))


def create_demo_data(using: str = "default", **kwargs: Any) -> None:
    """Create the demo rooms and users that don't exist yet (a ``post_migrate`` receiver)."""
    from django.contrib.auth import get_user_model

    from .models import Room

    state = kwargs.get("apps")
    if state is not None:
        try:  # "migrate chat zero" also ends with post_migrate: no tables, nothing to create
            state.get_model("chat", "Room")
            state.get_model(settings.AUTH_USER_MODEL)
        except LookupError:
            return
    for slug, name in DEMO_ROOMS:
        Room.objects.using(using).get_or_create(slug=slug, defaults={"name": name})
    password = demo_password()
    if not password:
        return
    User = get_user_model()
    manager = User._default_manager.db_manager(using)
    for username in demo_users():
        if not manager.filter(**{User.USERNAME_FIELD: username}).exists():
            manager.create_user(username, password=password)
