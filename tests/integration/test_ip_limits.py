"""Per-address limits: many accounts from one address are throttled; a service role is not."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest

from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import Api

CREATE = "mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }"


@pytest.mark.asyncio
async def test_creates_from_one_address_share_a_budget(
    api_factory: Callable[[Settings], Awaitable[Api]], database_url: str
) -> None:
    limits = {"create_per_ip_per_minute": 2, "create_per_user_per_minute": 100}
    api = await api_factory(make_settings(database_url, rate_limit=limits))
    target = uuid.uuid4()
    await api.upsert_profile(target, "Target")
    codes = []
    for _ in range(3):  # three accounts, one address (the test client's)
        result = await api.gql(CREATE, uuid.uuid4(), t=str(target))
        codes.append(result["errors"][0]["extensions"]["code"] if "errors" in result else "OK")
    assert codes == ["OK", "OK", "RATE_LIMITED"]

    # A backend acting for users over REST speaks for many people from one address: not limited by it.
    service = api.headers(uuid.uuid4(), role="service_role")
    for _ in range(3):
        body = {"targetUserId": str(target), "requesterUserId": str(uuid.uuid4())}
        response = await api.client.post("/connection-keys", json=body, headers=service)
        assert response.status_code == 201, response.text
