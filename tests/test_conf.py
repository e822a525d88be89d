"""django_rawws.conf: RAWWS merged over DEFAULTS, cached, rebuilt on override, mapped to ServerConfig."""

from __future__ import annotations

import pathlib
import re

from django.test import override_settings

from django_rawws import conf
from django_rawws.conf import DEFAULTS, deflate_options, get_config, on_config_change, server_config
from django_rawws.protocol.deflate import DeflateOptions
from django_rawws.server.config import ServerConfig, default_worker_count

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_every_default_is_present_when_rawws_is_not_set():
    with override_settings(RAWWS=None):
        assert get_config() == DEFAULTS


def test_keys_set_in_rawws_win_and_the_others_keep_their_default():
    with override_settings(RAWWS={"WORKERS": 3, "CHECK_ORIGIN": False}):
        config = get_config()
    assert config["WORKERS"] == 3
    assert config["CHECK_ORIGIN"] is False
    assert config["MAX_MESSAGE_SIZE"] == DEFAULTS["MAX_MESSAGE_SIZE"]


def test_get_config_is_cached_until_rawws_changes():
    first = get_config()
    assert get_config() is first
    with override_settings(RAWWS={"WORKERS": 2}):
        inside = get_config()
        assert inside is not first
        assert inside["WORKERS"] == 2
    assert get_config()["WORKERS"] == first["WORKERS"]


def test_a_change_of_another_setting_keeps_the_cache():
    first = get_config()
    with override_settings(DEBUG=True):
        assert get_config() is first


def test_unknown_keys_are_kept_so_the_checks_can_report_them():
    with override_settings(RAWWS={"WORKER": 2}):
        assert get_config()["WORKER"] == 2


def test_listeners_run_when_rawws_changes():
    calls = []
    on_config_change(lambda: calls.append("changed"))
    try:
        with override_settings(RAWWS={"WORKERS": 2}):
            pass
    finally:
        conf._listeners.pop()
    assert calls == ["changed", "changed"]  # entering and leaving the override


def test_server_config_maps_every_server_option():
    rawws = {
        "WORKERS": 5,
        "MAX_CONNECTIONS": 10,
        "MAX_MESSAGE_SIZE": 1000,
        "MAX_FRAME_SIZE": 500,
        "MAX_REQUEST_LINE": 100,
        "MAX_HEADERS": 7,
        "MAX_HEAD": 2000,
        "HANDSHAKE_TIMEOUT": 1.5,
        "PING_INTERVAL": None,
        "PING_TIMEOUT": 3.0,
        "CLOSE_TIMEOUT": 4.0,
        "LINGER_TIMEOUT": 0.5,
        "MAX_OUTGOING_BUFFER": 4096,
        "MAX_PENDING_MESSAGES": 3,
        "COMPRESSION_THRESHOLD": 64,
        "HEALTH_PATH": "/up",
        "BACKLOG": 16,
        "REUSE_PORT": True,
    }
    with override_settings(RAWWS=rawws):
        config = server_config()
    assert config == ServerConfig(
        workers=5,
        max_connections=10,
        max_message_size=1000,
        max_frame_size=500,
        max_request_line=100,
        max_headers=7,
        max_head=2000,
        handshake_timeout=1.5,
        ping_interval=None,
        ping_timeout=3.0,
        close_timeout=4.0,
        linger_timeout=0.5,
        max_outgoing_buffer=4096,
        max_pending_messages=3,
        deflate=DeflateOptions(),
        compression_threshold=64,
        health_path="/up",
        backlog=16,
        reuse_port=True,
    )


def test_workers_none_means_the_servers_default_count():
    with override_settings(RAWWS={"WORKERS": None}):
        assert server_config().workers == default_worker_count()


def test_empty_health_path_disables_the_health_check():
    with override_settings(RAWWS={"HEALTH_PATH": ""}):
        assert server_config().health_path is None


def test_server_config_overrides_win_over_the_setting():
    with override_settings(RAWWS={"WORKERS": 5}):
        assert server_config(workers=1, linger_timeout=0.1).workers == 1


def test_compression_options_map_to_deflate_options():
    rawws = {
        "COMPRESSION_WINDOW_BITS": 10,
        "COMPRESSION_MEM_LEVEL": 8,
        "COMPRESSION_LEVEL": 1,
        "COMPRESSION_CONTEXT_TAKEOVER": True,
    }
    with override_settings(RAWWS=rawws):
        options = deflate_options()
        assert server_config().deflate == options
    assert options == DeflateOptions(
        enabled=True,
        server_max_window_bits=10,
        server_no_context_takeover=False,
        mem_level=8,
        compress_level=1,
    )


def test_compression_false_disables_permessage_deflate():
    with override_settings(RAWWS={"COMPRESSION": False}):
        assert server_config().deflate.enabled is False


def test_deflate_options_are_rebuilt_when_rawws_changes():
    with override_settings(RAWWS={"COMPRESSION_LEVEL": 2}):
        assert deflate_options().compress_level == 2
    assert deflate_options().compress_level == DEFAULTS["COMPRESSION_LEVEL"]


def test_every_key_is_documented_with_its_default_in_docs_settings():
    text = DOCS.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\|\s*`([A-Z_]+)`\s*\|\s*([^|]+?)\s*\|", text, flags=re.MULTILINE))
    assert set(rows) == set(DEFAULTS)
    for key, value in DEFAULTS.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            assert repr(value) in rows[key] or str(value) in rows[key], (key, rows[key])
