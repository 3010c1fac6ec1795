"""``DELETE /users/{userId}``: erasure (crypto-shredding) for backends holding the service role."""

from __future__ import annotations

import uuid

from litestar import Controller, delete
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from app.api.rest.dependencies import provide_principal, provide_services
from app.api.rest.problems import problem_responses
from app.auth import Principal
from app.domain.audit_chain import AuditActor
from app.errors import ErrorCode, ServiceError
from app.services.container import Services
from app.services.erasure import ErasureResult

__all__ = ["UserController"]


class UserController(Controller):
    path = "/users"
    tags = ["users"]
    dependencies = {
        "services": Provide(provide_services, sync_to_thread=False),
        "principal": Provide(provide_principal),
    }

    @delete(
        "/{user_id:uuid}",
        status_code=200,
        summary="Erase a user (crypto-shredding)",
        description="Destroys the user's data key, so everything sealed with it is unreadable everywhere; removes "
        "their profile and device tokens and revokes their unsubmitted keys. Service role only. Idempotent: a "
        "repeat answers `alreadyErased`. Errors are application/problem+json with a `code` member.",
        responses=problem_responses(401, 403, 404),
    )
    async def erase(
        self, user_id: FromPath[uuid.UUID], principal: NamedDependency[Principal], services: NamedDependency[Services]
    ) -> ErasureResult:
        """Erase ``user_id``."""
        if not principal.is_service_role:
            raise ServiceError(ErrorCode.FORBIDDEN, "Only a service role may erase users.")
        return await services.erasure.erase(user_id, AuditActor.from_principal(principal))
