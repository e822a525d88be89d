"""A minimal Django project serving the bench endpoints with Channels (see ``bench/servers/channels_daphne.py``)."""
