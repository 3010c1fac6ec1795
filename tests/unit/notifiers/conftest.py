"""Fixtures for the notifier tests: the fake FCM and APNs servers (``tests/fake_push_servers.py``), a
hand-moved clock and notifier factories."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from notifiers.apns.config import load_config as load_apns_config
from notifiers.apns.notifier import ApnsNotifier
from notifiers.fcm.config import load_config as load_fcm_config
from notifiers.fcm.notifier import FcmNotifier
from tests.fake_push_servers import (
    APNS_KEY_ID,
    APNS_TEAM_ID,
    APNS_TOPIC,
    ApnsKey,
    FakeApns,
    FakeFcm,
    apns_key,
    apns_server,
    fcm_server,
)

__all__ = ["FakeClock", "apns_key", "apns_server", "fcm_server"]


class FakeClock:
    """Epoch seconds moved by hand, starting at the real time (the fakes check token times)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fcm_table(server: FakeFcm, **overrides: Any) -> dict[str, Any]:
    """A ``[plugins.config.fcm]`` table pointing at the fake."""
    assert server.account is not None
    return {"service_account_json": server.account.json, "base_url": server.base_url, **overrides}


def apns_table(server: FakeApns, key: ApnsKey, **overrides: Any) -> dict[str, Any]:
    """A ``[plugins.config.apns]`` table pointing at the fake."""
    return {
        "team_id": APNS_TEAM_ID,
        "key_id": APNS_KEY_ID,
        "private_key": key.private_pem,
        "topic": APNS_TOPIC,
        "base_url": server.base_url,
        "ca_file": server.ca_file,
        **overrides,
    }


@pytest.fixture
def make_fcm(fcm_server: FakeFcm, clock: FakeClock) -> Callable[..., FcmNotifier]:
    fcm_server.clock = clock

    def make(**overrides: Any) -> FcmNotifier:
        loaded = load_fcm_config(fcm_table(fcm_server, **overrides))
        assert loaded is not None
        return FcmNotifier(*loaded, clock=clock)

    return make


@pytest.fixture
def make_apns(apns_server: FakeApns, apns_key: ApnsKey, clock: FakeClock) -> Callable[..., ApnsNotifier]:
    apns_server.clock = clock

    def make(server: FakeApns | None = None, **overrides: Any) -> ApnsNotifier:
        if server is not None:
            server.clock = clock
        config = load_apns_config(apns_table(server or apns_server, apns_key, **overrides))
        assert config is not None
        return ApnsNotifier(config, clock=clock)

    return make
