"""The chat-orm benchmark's Django app: one model, a consumer for runws and one for Channels.

Both servers save each chat message with the same model in the same
PostgreSQL database and deliver it to the room's group; see
``bench/servers/bench_chat_settings.py`` (runws) and
``bench/servers/bench_chat_channels_settings.py`` (Channels + Daphne).
"""
