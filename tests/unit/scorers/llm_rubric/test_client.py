"""The HTTP client's classification of failures, and Retry-After parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from scorers.llm_rubric.client import CallFailedError, ChatClient, parse_retry_after


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        (" 0.5 ", 0.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now) == expected


async def _complete(handler: httpx.MockTransport) -> str:
    url = "http://llm.test/v1/chat/completions"
    async with ChatClient(url, "m", timeout_seconds=1, max_connections=1, transport=handler) as client:
        return await client.complete("system", "user")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("response", "retryable", "reason"),
    [
        (httpx.Response(500), True, "HTTP 500"),
        (httpx.Response(502), True, "HTTP 502"),
        (httpx.Response(408), True, "HTTP 408"),
        (httpx.Response(429, headers={"Retry-After": "7"}), True, "HTTP 429"),
        (httpx.Response(400), False, "HTTP 400"),
        (httpx.Response(401), False, "HTTP 401"),
        (httpx.Response(404), False, "HTTP 404"),
        (httpx.Response(200, text="<html>"), True, "not a chat completion"),
        (httpx.Response(200, json={"choices": []}), True, "no message content"),
        (httpx.Response(200, json={"choices": [{"message": {"content": None}}]}), True, "no message content"),
    ],
)
async def test_failures_are_classified(response: httpx.Response, retryable: bool, reason: str) -> None:
    with pytest.raises(CallFailedError, match=reason) as caught:
        await _complete(httpx.MockTransport(lambda request: response))
    assert caught.value.retryable is retryable
    assert caught.value.retry_after == (7.0 if response.status_code == 429 else None)


@pytest.mark.asyncio
async def test_connection_errors_are_retryable_and_hide_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused to http://user:secret@llm.test", request=request)

    with pytest.raises(CallFailedError, match="connection error") as caught:
        await _complete(httpx.MockTransport(refuse))
    assert caught.value.retryable and "secret" not in str(caught.value)


@pytest.mark.asyncio
async def test_returns_the_message_content() -> None:
    ok = httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": '{"grades": []}'}}]})
    assert await _complete(httpx.MockTransport(lambda request: ok)) == '{"grades": []}'
