"""The example's consumers, written with the public API only."""

from django_rawws.consumers import WebSocketConsumer
from django_rawws.groups import push
from django_rawws.protocol.codes import CloseCode

BROADCAST_GROUP = "broadcast"


class EchoConsumer(WebSocketConsumer):
    """Send every message back as it came: text as text, binary as binary."""

    # Over the RAWWS["MAX_MESSAGE_SIZE"] default (1 MiB) for this route only;
    # a bigger message closes the connection with 1009.
    max_message_size = 16 << 20

    def receive(self, text=None, bytes=None):
        self.send(text=text, bytes=bytes)


class BroadcastConsumer(WebSocketConsumer):
    """Every text message goes to every client connected here, the sender included."""

    def connect(self):
        # Join before accepting: once the client reads the 101, it is a member
        # and receives whatever anyone sends next.
        self.join(BROADCAST_GROUP)
        self.accept()

    def receive(self, text=None, bytes=None):
        if text is None:
            self.close(CloseCode.UNSUPPORTED_DATA, "text messages only")
            return
        # A raw send: framed once, queued on every member, no consumer code runs.
        push(BROADCAST_GROUP, text)
