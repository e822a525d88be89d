"""The WebSocket urlconf of the test suite (RAWWS["URLCONF"] in tests/settings.py)."""

from django.urls import include, path, re_path

from . import wsconsumers as c

api_patterns = [
    path("items/<uuid:item>/", c.RouteConsumer, name="item"),
]

urlpatterns = [
    path("ws/echo/", c.EchoConsumer, name="echo"),
    path("ws/rooms/<int:room>/<slug:name>/", c.RouteConsumer, name="room"),
    re_path(r"^ws/re/(\d+)/([a-z]+)/$", c.RouteConsumer, name="positional"),
    path("ws/api/", include((api_patterns, "api"), namespace="api")),
    path("ws/greeting/", c.RouteWithGreeting.as_consumer(greeting="bonjour"), name="greeting"),
    path("ws/café/<str:word>/", c.RouteConsumer, name="unicode"),
    path("ws/info/", c.RequestInfoConsumer, name="info"),
    path("ws/subprotocol/", c.SubprotocolConsumer),
    path("ws/user/", c.UserConsumer),
    path("ws/login/", c.LoginRequiredConsumer),
    path("ws/perm/", c.PermissionConsumer),
    path("ws/denied/", c.DeniedConsumer),
    path("ws/reject/<int:status>/", c.RejectConsumer),
    path("ws/fail/", c.FailingConsumer),
    path("ws/fail-connect/", c.ConnectFailingConsumer),
    path("ws/fail-disconnect/", c.DisconnectFailingConsumer),
    path("ws/json/", c.EchoJsonConsumer),
    path("ws/lang/", c.LanguageConsumer),
    path("ws/atomic/", c.AtomicConsumer),
    path("ws/slow/", c.SlowConsumer),
    path("ws/group/", c.GroupConsumer),
    path("ws/nodeflate/", c.EchoConsumer.as_consumer(compression=False)),
    path("ws/small/", c.EchoConsumer.as_consumer(max_message_size=16)),
]
