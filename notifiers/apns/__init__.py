"""Apple Push Notification service, provider API over HTTP/2 with token auth (``apns`` notifier)."""

from notifiers.apns.config import PRODUCTION_URL, SANDBOX_URL, ApnsConfig, load_config
from notifiers.apns.notifier import ApnsNotifier, apns_headers, apns_payload, classify_response
from notifiers.apns.provider_token import ProviderToken

__all__ = [
    "PRODUCTION_URL",
    "SANDBOX_URL",
    "ApnsConfig",
    "ApnsNotifier",
    "ProviderToken",
    "apns_headers",
    "apns_payload",
    "classify_response",
    "load_config",
]
