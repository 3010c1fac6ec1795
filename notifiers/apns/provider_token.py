"""APNs provider authentication tokens: ES256 JWTs (``iss`` = team id, ``kid`` = key id), re-signed
only when they reach their refresh age, as Apple asks."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt

__all__ = ["ProviderToken"]


class ProviderToken:
    """The current provider token, signed at most once per ``refresh_seconds`` (and again after
    :meth:`invalidate`, when APNs answers ``ExpiredProviderToken``)."""

    def __init__(
        self,
        team_id: str,
        key_id: str,
        private_key: str,
        *,
        refresh_seconds: float = 3000.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._team_id = team_id
        self._key_id = key_id
        self._private_key = private_key
        self._refresh = refresh_seconds
        self._clock = clock
        self._token: str | None = None
        self._issued_at = 0.0
        self.signed = 0  # how many tokens were signed (for tests and describe())

    def __repr__(self) -> str:
        return f"ProviderToken(team_id={self._team_id!r}, key_id={self._key_id!r})"

    def current(self) -> str:
        """The token to send as ``authorization: bearer <token>``."""
        now = self._clock()
        if self._token is None or now - self._issued_at >= self._refresh:
            issued_at = int(now)
            self._token = jwt.encode(
                {"iss": self._team_id, "iat": issued_at},
                self._private_key,
                algorithm="ES256",
                headers={"kid": self._key_id},
            )
            self._issued_at = issued_at
            self.signed += 1
        return self._token

    def invalidate(self, token: str) -> None:
        """Re-sign on the next call, unless another request already did."""
        if token == self._token:
            self._token = None
