"""HTTP views for the same-port tests (set with ``override_settings(ROOT_URLCONF="tests.http_urls")``).

The slow view reports that it started and waits for the test to release it,
so tests wait on events rather than on the clock.
"""

from __future__ import annotations

import threading

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


class SlowViews:
    """Counts slow views in progress; holds them until :meth:`release`."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.started = 0
        self._released = threading.Event()

    def reset(self) -> None:
        with self._condition:
            self.started = 0
        self._released.clear()

    def enter(self) -> None:
        with self._condition:
            self.started += 1
            self._condition.notify_all()
        # Bounded: a test that fails before releasing must not leave the thread behind forever.
        self._released.wait(10.0)

    def wait_started(self, count: int, timeout: float = 5.0) -> None:
        with self._condition:
            done = self._condition.wait_for(lambda: self.started >= count, timeout)
        assert done, f"expected {count} slow view(s) to start, {self.started} did"

    def release(self) -> None:
        self._released.set()


slow_views = SlowViews()


def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse("<h1>A page served on the WebSocket port</h1>", content_type="text/html")


@csrf_exempt
def echo(request: HttpRequest) -> HttpResponse:
    """The request body back, with the method and the body's length in headers."""
    response = HttpResponse(request.body, content_type=request.content_type or "application/octet-stream")
    response["X-Method"] = request.method
    response["X-Body-Length"] = str(len(request.body))
    return response


def scheme(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"scheme": request.scheme, "secure": request.is_secure(), "uri": request.build_absolute_uri()}
    )


def slow(request: HttpRequest) -> HttpResponse:
    slow_views.enter()
    return HttpResponse("slow view done", content_type="text/plain")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter([b"streamed ", b"in three ", b"parts"]), content_type="text/plain")


urlpatterns = [
    path("page/", page),
    path("echo/", echo),
    path("scheme/", scheme),
    path("slow/", slow),
    path("stream/", stream),
]
