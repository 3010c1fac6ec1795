"""Settings of the FCM notifier, read from ``[plugins.config.fcm]``, and the Google service account."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from msgspec import Meta, Struct

from notifiers.config import ConfigError, convert_table, read_secret, require_http_url

__all__ = ["CONFIG_NAME", "FCM_SCOPE", "FcmConfig", "ServiceAccount", "load_config"]

CONFIG_NAME = "fcm"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_PROJECT_ID = re.compile(r"[a-z0-9][a-z0-9:.-]{0,99}")


class FcmConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Settings, field by field. An absent or empty table, or ``enabled = false``, registers no notifier.

    Attributes:
        enabled: set ``false`` to keep the table but send nothing.
        service_account_json: the service-account key file's JSON text; best given by the environment
            (``CK_PLUGINS__CONFIG__FCM__SERVICE_ACCOUNT_JSON``). Never logged.
        service_account_file: or a path to that file. Exactly one of the two is required.
        project_id: the Firebase project; empty takes the service account's ``project_id``.
        base_url: the FCM API root (``/v1/projects/<id>/messages:send`` is appended).
        token_uri: the OAuth 2.0 token endpoint; empty takes the service account's ``token_uri``.
        platforms: device platforms routed to FCM.
        timeout_seconds: limit on one HTTP call, connect to last byte.
        max_concurrency: sends in flight at once (FCM v1 takes one message per request).
        android_priority: ``high`` wakes the device for a visible notification; ``normal`` may be delayed.
        token_refresh_margin_seconds: renew the OAuth access token this long before it expires.
    """

    enabled: bool = True
    service_account_json: str = ""
    service_account_file: str = ""
    project_id: str = ""
    base_url: str = "https://fcm.googleapis.com"
    token_uri: str = ""
    platforms: Annotated[tuple[str, ...], Meta(min_length=1)] = ("android",)
    timeout_seconds: Annotated[float, Meta(gt=0, le=120)] = 10.0
    max_concurrency: Annotated[int, Meta(ge=1, le=1000)] = 16
    android_priority: Literal["high", "normal"] = "high"
    token_refresh_margin_seconds: Annotated[float, Meta(ge=0, le=1800)] = 300.0

    def __repr__(self) -> str:
        return f"FcmConfig(project_id={self.project_id!r}, base_url={self.base_url!r}, platforms={self.platforms!r})"

    __str__ = __repr__

    @property
    def send_url(self) -> str:
        return f"{self.base_url}/v1/projects/{self.project_id}/messages:send"


class ServiceAccount(Struct, frozen=True, kw_only=True):
    """The fields of a Google service-account key file this notifier uses (others are ignored)."""

    client_email: Annotated[str, Meta(min_length=1)]
    private_key: Annotated[str, Meta(min_length=1)]
    private_key_id: str = ""
    project_id: str = ""
    token_uri: str = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
    type: str = "service_account"

    def __repr__(self) -> str:
        return f"ServiceAccount(client_email={self.client_email!r}, project_id={self.project_id!r})"

    __str__ = __repr__


def load_config(raw: Mapping[str, Any]) -> tuple[FcmConfig, ServiceAccount] | None:
    """The settings and the service account, or ``None`` when FCM is not configured (table absent, empty
    or disabled). Raises :class:`notifiers.config.ConfigError` naming the offending key."""
    if not raw:
        return None
    config = convert_table(raw, FcmConfig, CONFIG_NAME)
    if not config.enabled:
        return None
    text = read_secret(
        config.service_account_json,
        config.service_account_file,
        ("service_account_json", "service_account_file"),
        CONFIG_NAME,
    )
    try:
        account = msgspec.json.decode(text.strip().encode(), type=ServiceAccount)
    except msgspec.DecodeError as exc:
        # The message may quote the file; say only which field is wrong.
        reason = "not valid JSON" if not isinstance(exc, msgspec.ValidationError) else str(exc).split(" - ")[0]
        raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: the service account is {reason}") from None
    if account.type != "service_account":
        raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: the key file is not a service account")
    try:
        key = load_pem_private_key(account.private_key.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"invalid [plugins.config.{CONFIG_NAME}]: the service account's private_key is not a PEM key"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: the service account's private_key is not RSA")
    project_id = config.project_id.strip() or account.project_id
    if not _PROJECT_ID.fullmatch(project_id):
        raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: project_id is missing or malformed")
    token_uri = require_http_url(config.token_uri or account.token_uri, "token_uri", CONFIG_NAME)
    config = msgspec.structs.replace(
        config,
        project_id=project_id,
        token_uri=token_uri,
        base_url=require_http_url(config.base_url, "base_url", CONFIG_NAME),
    )
    return config, account
