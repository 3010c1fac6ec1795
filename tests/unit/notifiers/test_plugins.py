"""The ``register_notifiers`` hook: built-in plugins registered from settings, third-party ones in a
fixture, and the checks ``collect_notifiers`` makes; the notifier contract's helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import entry_points

import msgspec
import pluggy
import pytest

import notifiers.apns.plugin
import notifiers.fcm.plugin
from notifiers.config import ConfigError
from plugins import hookimpl
from plugins.context import PluginContext
from plugins.manager import NOTIFIERS_GROUP, PluginError, build_plugin_manager, collect_notifiers
from plugins.notifier import Notifier, PushMessage, PushOutcome, PushStatus, parse_retry_after
from tests.fake_push_servers import ApnsKey, FakeApns, FakeFcm
from tests.unit.notifiers.conftest import apns_table, fcm_table

BUILT_IN = {"fcm": notifiers.fcm.plugin, "apns": notifiers.apns.plugin}


class EchoNotifier:
    """Delivers everything, like a third-party plugin's notifier might."""

    def __init__(self, name: str, *platforms: str) -> None:
        self.name = name
        self.platforms = frozenset(platforms)

    async def send(self, batch: Sequence[PushMessage]) -> list[PushOutcome]:
        return [PushOutcome(token=m.token, status=PushStatus.DELIVERED) for m in batch]


class ThrowawayPlugin:
    def __init__(self, *registered: object) -> None:
        self.registered = registered

    @hookimpl
    def register_notifiers(self, register: Callable[[Notifier], None]) -> None:
        for notifier in self.registered:
            register(notifier)  # type: ignore[arg-type]


@pytest.fixture
def pm() -> Iterator[pluggy.PluginManager]:
    """The plugin manager with no entry point loaded and the built-in notifier plugins registered by hand
    (as their entry points would be), whether or not the package's entry points are installed."""
    manager = build_plugin_manager([], notifiers=[])
    for name, module in BUILT_IN.items():
        manager.register(module, name=name)
    yield manager
    for name in list(BUILT_IN):
        manager.unregister(name=name)


def test_built_ins_register_nothing_without_settings(pm: pluggy.PluginManager) -> None:
    assert collect_notifiers(pm, PluginContext()) == {}
    assert collect_notifiers(pm, PluginContext(settings={"fcm": {"enabled": False}, "apns": {}})) == {}


def test_built_ins_register_from_their_settings_tables(
    pm: pluggy.PluginManager, fcm_server: FakeFcm, apns_server: FakeApns, apns_key: ApnsKey
) -> None:
    context = PluginContext(settings={"fcm": fcm_table(fcm_server), "apns": apns_table(apns_server, apns_key)})
    found = collect_notifiers(pm, context)
    assert sorted(found) == ["apns", "fcm"]
    assert found["fcm"].platforms == {"android"} and found["apns"].platforms == {"ios"}
    assert all(isinstance(n, Notifier) for n in found.values())


def test_an_invalid_table_stops_start_up(pm: pluggy.PluginManager) -> None:
    with pytest.raises(ConfigError, match=r"\[plugins.config.apns\]"):
        collect_notifiers(pm, PluginContext(settings={"apns": {"team_id": "nope"}}))


def test_throwaway_plugins_register_like_built_ins(pm: pluggy.PluginManager) -> None:
    plugin = ThrowawayPlugin(EchoNotifier("webpush", "web"))
    pm.register(plugin, name="throwaway")
    try:
        assert list(collect_notifiers(pm)) == ["webpush"]
    finally:
        pm.unregister(plugin)


@pytest.mark.parametrize(
    ("registered", "message"),
    [
        ((object(),), "does not implement the Notifier protocol"),
        ((EchoNotifier("a", "android"), EchoNotifier("a", "ios")), "two plugins register a notifier named 'a'"),
        ((EchoNotifier("a", "android"), EchoNotifier("b", "android")), "both serve platform 'android'"),
        ((EchoNotifier("a"),), "serves no platform"),
    ],
)
def test_collect_refuses_what_would_route_ambiguously(
    pm: pluggy.PluginManager, registered: tuple[object, ...], message: str
) -> None:
    plugin = ThrowawayPlugin(*registered)
    pm.register(plugin, name="throwaway")
    try:
        with pytest.raises(PluginError, match=message):
            collect_notifiers(pm)
    finally:
        pm.unregister(plugin)


def test_naming_a_plugin_that_is_not_installed_stops_start_up() -> None:
    with pytest.raises(PluginError, match="notifier plugins not installed: nope"):
        build_plugin_manager([], notifiers=["nope"])


@pytest.mark.skipif(
    not {"fcm", "apns"} <= {ep.name for ep in entry_points(group=NOTIFIERS_GROUP)},
    reason="the connection_key.notifiers entry points are not installed (pyproject, then pip install -e .)",
)
def test_built_ins_load_from_their_entry_points() -> None:
    pm = build_plugin_manager(["rule"], notifiers=["fcm", "apns"])  # plugins.enabled, notifications.notifiers
    assert pm.get_plugin("fcm") is notifiers.fcm.plugin and pm.get_plugin("apns") is notifiers.apns.plugin
    assert collect_notifiers(pm) == {}
    only_fcm = build_plugin_manager([], notifiers=["fcm"])
    assert {name for name, _ in only_fcm.list_name_plugin()} == {"fcm"}


# -- the contract's helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert parse_retry_after(header, now) == seconds


def test_push_message_limits_what_push_services_refuse() -> None:
    fields = {"token": "t", "platform": "android", "title": "a", "body": "b"}
    assert msgspec.convert(fields, PushMessage).ttl_seconds == 86_400
    with pytest.raises(msgspec.ValidationError, match="collapse_key"):
        msgspec.convert({**fields, "collapse_key": "x" * 65}, PushMessage)
    with pytest.raises(msgspec.ValidationError, match="ttl_seconds"):
        msgspec.convert({**fields, "ttl_seconds": -1}, PushMessage)
    with pytest.raises(msgspec.ValidationError, match="data"):
        msgspec.convert({**fields, "data": {"n": 1}}, PushMessage)  # FCM data values are strings
