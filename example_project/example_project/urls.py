"""HTTP routes. The WebSocket routes are in ``chat/wsurls.py`` (``RAWWS["URLCONF"]``)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
