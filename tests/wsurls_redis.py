"""The WebSocket URLconf of the ``runws`` processes in tests/test_groups_redis.py.

``/ws/groups/<group>/?name=<n>&user=<pk>``: joins ``<group>`` (announcing
``{"name": n}`` when given); ``?user=`` authenticates as that user id
(through ``AUTHENTICATE``), so the automatic ``user:<pk>`` group is joined.
The connection id is in the ``X-Conn-Id`` response header. Commands, as
JSON text: ``{"push": g, "message": m, "exclude_me": bool}`` (raw send),
``{"relay": g, "text": t}`` (event send; each member sends ``t``).
"""

from types import SimpleNamespace

from django.urls import path

from django_rawws.consumers import JsonWebSocketConsumer
from django_rawws.groups import push


def authenticate(request, handshake):
    user = request.GET.get("user")
    if user is None or not user.isdigit():
        return None
    return SimpleNamespace(pk=int(user), is_authenticated=True, is_anonymous=False)


class GroupsConsumer(JsonWebSocketConsumer):
    def connect(self):
        name = self.request.GET.get("name")
        self.join(self.kwargs["group"], presence={"name": name} if name else None)
        self.accept(headers={"X-Conn-Id": self.id})

    def receive_json(self, content):
        if "push" in content:
            push(content["push"], content["message"], exclude=self if content.get("exclude_me") else None)
        elif "relay" in content:
            push(content["relay"], event={"type": "relay", "text": content["text"]})

    def relay(self, event):
        self.send(text=event["text"])


urlpatterns = [path("ws/groups/<str:group>/", GroupsConsumer.as_consumer())]
