"""django-rawws: WebSocket endpoints for Django on plain threads.

The protocol core lives in :mod:`django_rawws.protocol` (sans-I/O); everything
raised lives in :mod:`django_rawws.exceptions`.
"""

__version__ = "0.1.0.dev0"
