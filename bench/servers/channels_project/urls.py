"""No HTTP views: the benchmark speaks WebSocket only, so every HTTP request is a 404."""

from __future__ import annotations

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
