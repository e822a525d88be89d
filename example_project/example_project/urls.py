"""HTTP routes. The WebSocket routes are in ``chat/wsurls.py`` (``RAWWS["URLCONF"]``)."""

from chat.views import ChatLoginView
from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path

urlpatterns = [
    path("accounts/login/", ChatLoginView.as_view(), name="login"),
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("chat.urls")),
]
