"""Firebase Cloud Messaging HTTP v1 (``fcm`` notifier)."""

from notifiers.fcm.config import FcmConfig, ServiceAccount, load_config
from notifiers.fcm.notifier import FcmNotifier, classify_response, fcm_request_body
from notifiers.fcm.oauth import AccessTokenError, ServiceAccountTokens

__all__ = [
    "AccessTokenError",
    "FcmConfig",
    "FcmNotifier",
    "ServiceAccount",
    "ServiceAccountTokens",
    "classify_response",
    "fcm_request_body",
    "load_config",
]
