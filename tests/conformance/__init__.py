"""Our own Autobahn-style conformance suite: cases as data, run over any transport.

``cases.py`` holds the table and the driver; ``tests/protocol/test_conformance.py``
runs it against the sans-I/O core, and the server tests will run the same
table over real sockets.
"""
