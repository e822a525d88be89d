"""The threaded WebSocket server: sockets and threads only, no Django.

See :mod:`.core` for the threading model and the application interface.
"""

from .config import ServerConfig
from .connection import Phase, ServerConnection, SharedMessage
from .core import Server

__all__ = ["Server", "ServerConfig", "ServerConnection", "SharedMessage", "Phase"]
