"""A WebSocket urlconf with mistakes, for the routing and checks tests."""

from django.http import HttpResponse
from django.urls import URLPattern, path
from django.urls.resolvers import RoutePattern

from . import wsconsumers as c


def a_view(request):
    return HttpResponse("an HTTP view")


urlpatterns = [
    path("ws/ok/", c.EchoConsumer),
    path("ws/view/", a_view),
    # path() refuses what is not callable; built by hand as a careless project might.
    URLPattern(RoutePattern("ws/instance/", is_endpoint=True), c.EchoConsumer()),
]
