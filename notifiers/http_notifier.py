"""What the built-in HTTP notifiers share: one client opened with the notifier, one attempt per message."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from plugins.notifier import PushMessage, PushOutcome, PushStatus

__all__ = ["HttpNotifier"]


class HttpNotifier:
    """Base of the FCM and APNs notifiers: subclasses open ``_client`` in ``__aenter__`` and implement
    :meth:`_deliver` for one message; sending, concurrency and closing live here."""

    def __init__(self, max_concurrency: int, transport: httpx.AsyncBaseTransport | None) -> None:
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._semaphore = asyncio.Semaphore(max_concurrency)

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def send(self, batch: Sequence[PushMessage]) -> list[PushOutcome]:
        """One attempt per message, ``max_concurrency`` at a time (retries are the service's)."""
        return list(await asyncio.gather(*(self._send_one(message) for message in batch)))

    async def _send_one(self, message: PushMessage) -> PushOutcome:
        client = self._client
        if client is None:
            return PushOutcome(token=message.token, status=PushStatus.RETRYABLE, detail="notifier not open")
        return await self._deliver(client, message)

    async def _deliver(self, client: httpx.AsyncClient, message: PushMessage) -> PushOutcome:
        raise NotImplementedError
