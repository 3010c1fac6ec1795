"""REST mirrors for backends and moderation tools. Thin: validate, authorise, call the use case."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from litestar.response import Response

from app.api.rest.dependencies import provide_principal, provide_services
from app.api.rest.problems import problem_responses
from app.auth import Principal
from app.db.profile_store import ProfileRecord
from app.domain.audit_chain import AuditActor
from app.domain.contract import (
    ConnectionKeyPayload,
    ConnectionKeyResponseInput,
    ConnectionKeyResult,
    CreateConnectionKeyInput,
)
from app.domain.quiz import ProfileInput
from app.errors import ErrorCode, ServiceError
from app.services.container import Services
from plugins.scorer import DescribesItself, Scorer

__all__ = ["ConnectionKeyController", "HealthController", "ProfileController"]

_ERRORS = "Errors are application/problem+json with a `code` member."


class ConnectionKeyController(Controller):
    path = "/connection-keys"
    tags = ["connection keys"]
    dependencies = {
        "services": Provide(provide_services, sync_to_thread=False),
        "principal": Provide(provide_principal),
    }

    @post(
        "/",
        status_code=201,
        summary="Issue a connection key",
        description=_ERRORS,
        responses=problem_responses(400, 401, 403, 404, 409, 429, 503),
    )
    async def create(
        self,
        data: JSONBody[CreateConnectionKeyInput],
        principal: NamedDependency[Principal],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> ConnectionKeyPayload:
        """Start a quiz about ``targetUserId``. A service-role caller may act for ``requesterUserId``."""
        requester = principal.user_id
        if data.requester_user_id is not None and data.requester_user_id != principal.user_id:
            if not principal.is_service_role:
                raise ServiceError(ErrorCode.FORBIDDEN, "Only a service role may act for another user.")
            requester = data.requester_user_id
        return await services.create_key(requester, data.target_user_id, client_ip=_end_user_ip(request, principal))

    @post(
        "/{key_id:uuid}/responses",
        status_code=201,
        summary="Submit answers",
        description="The quiz's requester submits their answers. A service-role caller may submit for the "
        "requester. So may a moderator (a token with the moderator role), for submissions made during a "
        "review, e.g. answers the requester gave a moderator while a reported scoring problem is looked "
        "into: the usual checks apply (signed payload, single use, expiry, the requester's limits), the "
        "attempt records the moderator in `submittedBy`, and the submission is audited. " + _ERRORS,
        responses=problem_responses(400, 401, 403, 404, 409, 410, 429, 503),
    )
    async def respond(
        self,
        key_id: FromPath[uuid.UUID],
        data: JSONBody[ConnectionKeyResponseInput],
        principal: NamedDependency[Principal],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> ConnectionKeyResult:
        """Score the answers to key ``key_id``; a service-role caller or a moderator may submit for the
        quiz's requester."""
        return await services.submit_key(
            principal.user_id,
            data,
            path_key_id=key_id,
            on_behalf=principal.is_service_role,
            client_ip=_end_user_ip(request, principal),
            moderator=principal.is_moderator,
        )


class ProfileController(Controller):
    path = "/profiles"
    tags = ["profiles"]
    dependencies = {
        "services": Provide(provide_services, sync_to_thread=False),
        "principal": Provide(provide_principal),
    }

    @put(
        "/{user_id:uuid}",
        summary="Create or replace a profile",
        description=_ERRORS,
        responses=problem_responses(400, 401, 403, 503),
    )
    async def upsert(
        self,
        user_id: FromPath[uuid.UUID],
        data: JSONBody[ProfileInput],
        principal: NamedDependency[Principal],
        services: NamedDependency[Services],
    ) -> ProfileRecord:
        """Sync a profile from the main app (service role), or write one's own."""
        if not principal.is_service_role and principal.user_id != user_id:
            raise ServiceError(ErrorCode.FORBIDDEN, "Only a service role may write another user's profile.")
        return await services.profiles.upsert(user_id, data, actor=AuditActor.from_principal(principal))


def _end_user_ip(request: Request[Any, Any, Any], principal: Principal) -> str | None:
    # A service role's address stands for many users: only end users are limited per address.
    return None if principal.is_service_role or request.client is None else request.client.host


def _describe(scorer: Scorer) -> dict[str, Any]:
    # A plugin's describe() is untrusted: a failure shows in the report instead of failing readiness.
    info: dict[str, Any] = {"version": scorer.version, "kinds": sorted(scorer.kinds)}
    if isinstance(scorer, DescribesItself):
        try:
            info.update(scorer.describe())
        except Exception as exc:  # noqa: BLE001
            info["describeError"] = type(exc).__name__
    return info


class HealthController(Controller):
    tags = ["operations"]

    @get("/health", summary="Liveness", sync_to_thread=False)
    def health(self) -> dict[str, str]:
        """The process is up and serving requests."""
        return {"status": "ok"}

    @get("/ready", summary="Readiness")
    async def ready(self, services: NamedDependency[Services]) -> Response[dict[str, Any]]:
        """Database reachable, task queue and outbox relay running, broker reachable when Kafka is configured:
        503 with the failing checks otherwise. ``database`` also probes the write path (an empty write
        transaction, on SQLite in line for the one writer) and is false when it does not get through within
        ``[database] ready_timeout_seconds``: a wedged instance answers 503 in time for its supervisor to
        restart it (``/health`` stays liveness only). Redis being unreachable is ``degraded`` (still 200): the
        service keeps answering with the fallbacks chosen in ``[redis]``, and ``backends`` says which."""
        checks = {
            "database": await services.db.ping(),
            "taskQueue": services.queue.running,
            "outboxRelay": services.relay.running,
        }
        bus = services.bus
        ping = getattr(bus, "ping", None)  # a broker-backed bus; the in-process one is always there
        if ping is not None:
            # Events wait in the outbox while the broker is away, but this instance unlocks nothing then.
            checks["eventBus"] = await ping()
        adapters = {
            "cache": await services.cache.health(),
            "rateLimit": await services.limiter.health(),
            "pubsub": await services.pubsub.health(),
        }
        degraded = sorted(name for name, health in adapters.items() if not health.get("ok", True))
        ready = all(checks.values())
        body: dict[str, Any] = {
            "status": "not ready" if not ready else "degraded" if degraded else "ready",
            "checks": checks,
            "degraded": degraded,
            "backends": {
                "database": "sqlite" if services.db.is_sqlite else "postgresql",
                **adapters,
                "eventBus": bus.health() if hasattr(bus, "health") else {"backend": "memory", "ok": True},
            },
            "queueDepth": services.queue.depth,
            "pendingWrites": services.db.pending_writes,
            "outbox": services.relay.stats(),  # deadLettered: malformed or unknown events set aside
            "scorers": {name: _describe(scorer) for name, scorer in sorted(services.scorers.items())},
        }
        return Response(body, status_code=200 if ready else 503)

    dependencies = {"services": Provide(provide_services, sync_to_thread=False)}
