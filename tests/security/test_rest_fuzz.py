"""Schema-driven fuzzing of the REST API (schemathesis): every operation in the served OpenAPI document,
whatever endpoints exist when this runs, with valid and invalid inputs, as a user and as a service role.
No response may be a 5xx, and each must conform to the document (status, content type, body schema)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import Api
from tests.ws_client import serve_app

EXAMPLES_PER_OPERATION = 12
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]
# Documented statuses are checked for valid inputs only: an invalid path parameter (not a UUID) matches no
# route and is a 404 problem, which the operations do not list.
CHECKS_FOR_VALID_INPUT = [*CHECKS, status_code_conformance]


def _fuzz_operation(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str], session: Any) -> None:
    checks = CHECKS_FOR_VALID_INPUT if mode is GenerationMode.POSITIVE else CHECKS

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
        case.validate_response(response, checks=checks)

    run()


def _fuzz(raw_schema: dict[str, Any], base_url: str, tokens: dict[str, str]) -> list[str]:
    """Run every operation with each token and generation mode; returns what was exercised."""
    schema = schemathesis.openapi.from_dict(raw_schema)
    exercised: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for who, token in tokens.items():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz_operation(operation, mode, base_url, {"Authorization": f"Bearer {token}"}, session)
                exercised.append(f"{operation.method.upper()} {operation.path} as {who} ({mode.value})")
    return exercised


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.asyncio
async def test_no_5xx_and_responses_conform(api_factory: Any, database_url: str) -> None:
    settings_: Settings = make_settings(database_url, rate_limit={"enabled": False})
    api: Api = await api_factory(settings_)
    user, backend_caller = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(user, "Fuzzed")
    raw = (await api.client.get("/schema/openapi.json")).json()
    tokens = {"user": api.token(user), "service role": api.token(backend_caller, role="service_role")}
    async with serve_app(api.app) as ws_base:
        base_url = "http" + ws_base.removeprefix("ws")
        exercised = await asyncio.to_thread(_fuzz, raw, base_url, tokens)
    paths = {line.split(" as ")[0] for line in exercised}
    # The document drives the run: every operation it lists was exercised, whatever was added since.
    documented = {f"{m.upper()} {p}" for p, ops in raw["paths"].items() for m in ops if m != "parameters"}
    assert paths == documented
    assert {"POST /connection-keys", "PUT /profiles/{user_id}"} <= paths
