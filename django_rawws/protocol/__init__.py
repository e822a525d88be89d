"""The sans-I/O protocol core: bytes in, events out; calls in, bytes out.

Nothing in this package opens a socket, starts a thread or reads Django's
settings; limits arrive as plain parameters.
"""
