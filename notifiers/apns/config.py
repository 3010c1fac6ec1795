"""Settings of the APNs notifier, read from ``[plugins.config.apns]``."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from msgspec import Meta, Struct

from notifiers.config import ConfigError, convert_table, read_secret, require_http_url

__all__ = ["CONFIG_NAME", "PRODUCTION_URL", "SANDBOX_URL", "ApnsConfig", "load_config"]

CONFIG_NAME = "apns"
PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.sandbox.push.apple.com"
_APPLE_ID = re.compile(r"[A-Z0-9]{10}")


class ApnsConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Settings, field by field. An absent or empty table, or ``enabled = false``, registers no notifier.

    Attributes:
        enabled: set ``false`` to keep the table but send nothing.
        team_id: the Apple developer team id (10 characters): the provider token's ``iss``.
        key_id: the id of the APNs auth key (10 characters): the provider token's ``kid``.
        private_key: the ``AuthKey_<key_id>.p8`` PEM text (EC P-256); best given by the environment
            (``CK_PLUGINS__CONFIG__APNS__PRIVATE_KEY``). Never logged.
        private_key_file: or a path to that file. Exactly one of the two is required.
        topic: the app's bundle id, sent as ``apns-topic``.
        base_url: ``https://api.push.apple.com``, or ``https://api.sandbox.push.apple.com`` for
            development builds of the app.
        http2: APNs speaks only HTTP/2 (negotiated by TLS ALPN). ``false`` uses HTTP/1.1, for test servers
            only. With an ``http://`` base URL and ``http2`` on, HTTP/2 is spoken in clear text (h2c, prior
            knowledge).
        platforms: device platforms routed to APNs.
        ca_file: a PEM bundle to trust instead of the system's (a test server's or a proxy's CA).
        timeout_seconds: limit on one request, connect to last byte.
        max_concurrency: requests in flight at once (streams multiplexed over the connections).
        priority: ``apns-priority``: 10 delivers at once, 5 lets the device save power.
        token_refresh_seconds: age at which the provider token is re-signed. Apple accepts tokens up to
            an hour old and refuses refreshes more often than every 20 minutes.
    """

    enabled: bool = True
    team_id: str = ""
    key_id: str = ""
    private_key: str = ""
    private_key_file: str = ""
    topic: str = ""
    base_url: str = PRODUCTION_URL
    http2: bool = True
    ca_file: str = ""
    platforms: Annotated[tuple[str, ...], Meta(min_length=1)] = ("ios",)
    timeout_seconds: Annotated[float, Meta(gt=0, le=120)] = 10.0
    max_concurrency: Annotated[int, Meta(ge=1, le=1000)] = 32
    priority: Annotated[int, Meta(ge=1, le=10)] = 10
    token_refresh_seconds: Annotated[float, Meta(ge=1200, le=3500)] = 3000.0

    def __repr__(self) -> str:
        return (
            f"ApnsConfig(team_id={self.team_id!r}, key_id={self.key_id!r}, topic={self.topic!r}, "
            f"base_url={self.base_url!r}, private_key={'<set>' if self.private_key else '<unset>'})"
        )

    __str__ = __repr__

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context: the system's trust store, or ``ca_file`` only when set."""
        return ssl.create_default_context(cafile=self.ca_file or None)


def load_config(raw: Mapping[str, Any]) -> ApnsConfig | None:
    """The settings with the private key's PEM text in ``private_key``, or ``None`` when APNs is not
    configured (table absent, empty or disabled). Raises :class:`notifiers.config.ConfigError` naming
    the offending key."""
    if not raw:
        return None
    config = convert_table(raw, ApnsConfig, CONFIG_NAME)
    if not config.enabled:
        return None
    for key in ("team_id", "key_id"):
        if not _APPLE_ID.fullmatch(getattr(config, key).strip()):
            raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: {key} must be 10 letters or digits")
    if not config.topic.strip():
        raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: topic (the app's bundle id) is required")
    pem = read_secret(config.private_key, config.private_key_file, ("private_key", "private_key_file"), CONFIG_NAME)
    try:
        key = load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: the private key is not a PEM (.p8) key") from None
    if not isinstance(key, EllipticCurvePrivateKey) or not isinstance(key.curve, SECP256R1):
        raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: the private key is not an EC P-256 key")
    if config.ca_file:
        try:
            config.ssl_context()
        except (OSError, ssl.SSLError):
            raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: ca_file cannot be loaded") from None
    return msgspec.structs.replace(
        config,
        team_id=config.team_id.strip(),
        key_id=config.key_id.strip(),
        topic=config.topic.strip(),
        private_key=pem.strip(),
        private_key_file="",
        base_url=require_http_url(config.base_url, "base_url", CONFIG_NAME),
    )
