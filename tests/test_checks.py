"""django_rawws.checks: each misconfiguration gives exactly the Error or Warning documented."""

from __future__ import annotations

from django.core.checks import Error, Warning, run_checks
from django.test import SimpleTestCase, override_settings

from django_rawws.checks import check_backends, check_settings, check_urlconf

GOOD = {"URLCONF": "tests.wsurls"}


def rawws(**options):
    return override_settings(RAWWS={**GOOD, **options})


class GoodConfigurationTests(SimpleTestCase):
    @override_settings(DEBUG=True, RAWWS=GOOD)
    def test_the_test_configuration_passes_every_rawws_check(self):
        assert run_checks(tags=["rawws"]) == []

    def test_checks_are_registered_under_the_rawws_tag_by_the_app_config(self):
        with override_settings(DEBUG=True, RAWWS={}):
            ids = [message.id for message in run_checks(tags=["rawws"])]
        assert ids == ["rawws.E001"]


class UrlconfTests(SimpleTestCase):
    @override_settings(RAWWS={})
    def test_missing_urlconf_is_e001(self):
        assert check_urlconf() == [
            Error(
                'RAWWS["URLCONF"] is not set: the WebSocket server has no routes.',
                hint='Add RAWWS = {"URLCONF": "yourproject.wsurls"} to your settings, naming a module whose '
                'urlpatterns map paths to consumers: path("ws/echo/", EchoConsumer).',
                id="rawws.E001",
            )
        ]

    @rawws(URLCONF="tests.no_such_module")
    def test_unimportable_urlconf_is_e002(self):
        assert check_urlconf() == [
            Error(
                "The WebSocket urlconf 'tests.no_such_module' cannot be loaded: "
                "No module named 'tests.no_such_module'",
                hint='Check RAWWS["URLCONF"] and the module\'s imports; it must define urlpatterns.',
                id="rawws.E002",
            )
        ]

    @rawws(URLCONF="tests.wsurls_empty")
    def test_a_module_without_urlpatterns_is_e002(self):
        [error] = check_urlconf()
        assert error.id == "rawws.E002"
        assert "does not appear to have any patterns in it" in error.msg

    @rawws(URLCONF="tests.wsurls_bad")
    def test_routes_to_a_view_or_a_consumer_instance_are_e003(self):
        assert check_urlconf() == [
            Error(
                "The WebSocket route 'ws/view/' leads to a_view, which is not a WebSocketConsumer subclass.",
                hint="WebSocket urlpatterns map paths to consumer classes (subclasses of "
                "django_rawws.consumers.WebSocketConsumer); HTTP views belong in ROOT_URLCONF.",
                id="rawws.E003",
            ),
            Error(
                "The WebSocket route 'ws/instance/' has a consumer instance; a route needs the class.",
                hint="Write path(..., EchoConsumer) or EchoConsumer.as_consumer(...): "
                "an instance would be shared by every connection.",
                id="rawws.E003",
            ),
        ]

    @rawws()
    def test_routes_in_includes_and_as_consumer_factories_pass(self):
        assert check_urlconf() == []


class SettingsTests(SimpleTestCase):
    @override_settings(RAWWS=["URLCONF"])
    def test_rawws_that_is_not_a_dict_is_e004(self):
        assert check_settings() == [
            Error(
                "RAWWS must be a dict, not list.",
                hint='Write RAWWS = {"URLCONF": "yourproject.wsurls", ...}.',
                id="rawws.E004",
            )
        ]

    @rawws(MAX_MESAGE_SIZE=10)
    def test_an_unknown_key_is_w001_with_the_closest_key_as_hint(self):
        assert check_settings() == [
            Warning(
                "RAWWS has an unknown key 'MAX_MESAGE_SIZE'; it is ignored.",
                hint="Did you mean 'MAX_MESSAGE_SIZE'?",
                id="rawws.W001",
            )
        ]

    @rawws(FROBNICATE=True)
    def test_an_unknown_key_unlike_any_other_points_to_the_docs(self):
        assert check_settings() == [
            Warning(
                "RAWWS has an unknown key 'FROBNICATE'; it is ignored.",
                hint="See docs/settings.md for the valid keys.",
                id="rawws.W001",
            )
        ]

    @rawws(MAX_MESSAGE_SIZE=0)
    def test_a_limit_that_is_not_positive_is_e004(self):
        assert check_settings() == [
            Error(
                "RAWWS['MAX_MESSAGE_SIZE'] is 0; it must be a positive integer (bytes).",
                hint="Fix the value or remove the key to use the default, 1048576.",
                id="rawws.E004",
            )
        ]

    @rawws(PING_INTERVAL="20")
    def test_a_timeout_of_the_wrong_type_is_e004(self):
        assert check_settings() == [
            Error(
                "RAWWS['PING_INTERVAL'] is '20'; it must be a positive number of seconds, or None.",
                hint="Fix the value or remove the key to use the default, 20.0.",
                id="rawws.E004",
            )
        ]

    @rawws(WORKERS=True, COMPRESSION_WINDOW_BITS=8, CHECK_ORIGIN=1, HEALTH_PATH="healthz")
    def test_each_bad_value_gets_its_own_e004(self):
        messages = check_settings()
        assert [message.id for message in messages] == ["rawws.E004"] * 4
        assert [message.msg.split("]")[0] for message in messages] == [
            "RAWWS['WORKERS'",
            "RAWWS['COMPRESSION_WINDOW_BITS'",
            "RAWWS['HEALTH_PATH'",
            "RAWWS['CHECK_ORIGIN'",
        ]

    @rawws(PING_INTERVAL=None, WORKERS=None, MAX_FRAME_SIZE=None, SLOW_HANDLER_WARNING=None, HEALTH_PATH=None)
    def test_none_is_valid_where_it_disables_or_defaults(self):
        assert check_settings() == []

    @rawws(TRUSTED_PROXIES=["10.0.0.0/8", "::1", "proxy.internal"])
    def test_a_trusted_proxy_that_is_not_a_network_is_e005(self):
        assert check_settings() == [
            Error(
                "RAWWS['TRUSTED_PROXIES'] has 'proxy.internal', which is not an IP address or network.",
                hint="Use addresses or CIDR networks, such as '10.0.0.1' or '10.0.0.0/8'.",
                id="rawws.E005",
            )
        ]

    @rawws(ALLOWED_ORIGINS=["https://ok.example", "app.example.com"])
    def test_an_allowed_origin_without_scheme_is_e006(self):
        assert check_settings() == [
            Error(
                "RAWWS['ALLOWED_ORIGINS'] has 'app.example.com', which is not an origin.",
                hint="Write origins with their scheme, as for CSRF_TRUSTED_ORIGINS: "
                "'https://example.com' or 'https://*.example.com'.",
                id="rawws.E006",
            )
        ]

    @rawws(ALLOWED_ORIGINS="https://app.example.com")
    def test_a_string_instead_of_a_list_of_origins_is_e004(self):
        [error] = check_settings()
        assert error.id == "rawws.E004"
        assert error.msg.startswith(
            "RAWWS['ALLOWED_ORIGINS'] is 'https://app.example.com'; it must be a list"
        )

    @rawws(WORKERS=100)
    def test_more_than_64_workers_is_w003_counting_database_aliases(self):
        assert check_settings() == [
            Warning(
                "RAWWS['WORKERS'] is 100: the WebSocket server may hold up to 100 database connections "
                "(100 workers x 1 database alias(es)).",
                hint="Workers mostly wait on the database; fewer of them usually serve as well. "
                "Lower WORKERS, or make sure the database accepts that many connections "
                "(PostgreSQL max_connections).",
                id="rawws.W003",
            )
        ]

    @rawws(WORKERS=64)
    def test_64_workers_pass(self):
        assert check_settings() == []


class BackendTests(SimpleTestCase):
    @override_settings(DEBUG=False, RAWWS=GOOD)
    def test_the_memory_backend_without_debug_is_w002(self):
        assert check_backends() == [
            Warning(
                "The in-memory group backend reaches only the connections of this process.",
                hint="A push from another process (a web worker, a task queue, the shell) reaches "
                "nobody. With one runws process this is fine; otherwise set "
                "RAWWS['GROUP_BACKEND'] to a shared backend such as Redis.",
                id="rawws.W002",
            )
        ]

    @override_settings(DEBUG=True, RAWWS=GOOD)
    def test_the_memory_backend_in_debug_passes(self):
        assert check_backends() == []

    @override_settings(DEBUG=True, RAWWS={**GOOD, "GROUP_BACKEND": "tests.nowhere.Backend"})
    def test_an_unimportable_group_backend_is_e007(self):
        assert check_backends() == [
            Error(
                "RAWWS['GROUP_BACKEND'] 'tests.nowhere.Backend' cannot be imported: "
                "No module named 'tests.nowhere'",
                hint="Use 'django_rawws.groups.memory.MemoryGroupBackend' (one process) or a backend class "
                "you installed.",
                id="rawws.E007",
            )
        ]

    @override_settings(DEBUG=True, RAWWS={**GOOD, "AUTHENTICATE": "tests.wsconsumers.missing_hook"})
    def test_an_unimportable_authenticate_hook_is_e008(self):
        assert check_backends() == [
            Error(
                "RAWWS['AUTHENTICATE'] 'tests.wsconsumers.missing_hook' cannot be imported: "
                'Module "tests.wsconsumers" does not define a "missing_hook" attribute/class',
                hint="Name a function authenticate(request, handshake) -> user or None.",
                id="rawws.E008",
            )
        ]

    @override_settings(DEBUG=True, RAWWS={**GOOD, "AUTHENTICATE": "tests.wsconsumers.favourite"})
    def test_an_authenticate_hook_that_is_not_callable_is_e008(self):
        assert check_backends() == [
            Error(
                "RAWWS['AUTHENTICATE'] 'tests.wsconsumers.favourite' is not callable.",
                hint="Name a function authenticate(request, handshake) -> user or None.",
                id="rawws.E008",
            )
        ]

    @override_settings(DEBUG=True, RAWWS={**GOOD, "AUTHENTICATE": "tests.test_checks.rawws"})
    def test_a_callable_authenticate_hook_passes(self):
        assert check_backends() == []
