"""A running app (lifespan included) and a small client that speaks its GraphQL and REST APIs."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from litestar import Litestar

from app import create_app
from app.auth import mint_token
from app.services.container import Services
from app.settings import Settings
from tests.fake_chat_server import llm_server  # noqa: F401 - the fake LLM endpoint fixture, for test_scoring

# Every migration Piccolo generated: a migration run from empty applies them all.
MIGRATIONS = len(list((Path(__file__).resolve().parents[2] / "piccolo_migrations").glob("connection_key_*.py")))

# Realistic profile texts: comprehension is scored by meaning, so tests answer in other words.
PROMPTS = [
    ("My ideal Sunday", "A long hike in the hills followed by a pub lunch with friends"),
    ("I geek out on", "Mechanical keyboards and brewing green tea"),
    ("A shower thought I recently had", "Octopuses have three hearts, which feels excessive"),
]
PARAPHRASES = {
    PROMPTS[0][1]: "walking in the hills for hours and then lunch at a pub with mates",
    PROMPTS[1][1]: "mechanical keyboards, and making green tea",
    PROMPTS[2][1]: "that an octopus has three hearts, more than it needs",
}
BOUNDARIES = [
    ("pace", "I like to chat for a week before meeting in person"),
    ("photos", "Please don't ask me for photos"),
    ("calls", "Ask before calling me"),
]


class Api:
    """Test client helpers; each user is a UUID with its own token."""

    def __init__(self, app: Litestar, client: httpx.AsyncClient, settings: Settings) -> None:
        self.app = app
        self.client = client
        self.settings = settings

    @property
    def services(self) -> Services:
        return self.app.state.services

    def token(self, user_id: uuid.UUID, **kwargs: Any) -> str:
        return mint_token(self.settings.auth.jwt_secret, user_id, audience=self.settings.auth.audience, **kwargs)

    def headers(self, user_id: uuid.UUID | None, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id, **kwargs)}"} if user_id else {}

    async def gql(self, query: str, user_id: uuid.UUID | None = None, **variables: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/graphql", json={"query": query, "variables": variables}, headers=self.headers(user_id)
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def upsert_profile(self, user_id: uuid.UUID, name: str, prompts: int = 3, consents: int = 3) -> None:
        profile = {
            "displayName": name,
            "bio": f"{name} likes tests",
            "prompts": [{"question": q, "answer": a} for q, a in PROMPTS[:prompts]],
            "consentPreferences": [{"topic": t, "statement": s} for t, s in BOUNDARIES[:consents]],
            "locale": "en",
        }
        result = await self.gql(
            "mutation($input: ProfileInput!) { upsertMyProfile(input: $input) { userId } }", user_id, input=profile
        )
        assert "errors" not in result, result

    async def create_key(self, requester: uuid.UUID, target: uuid.UUID) -> dict[str, Any]:
        result = await self.gql(
            """mutation($target: ID!) { createConnectionKey(targetUserId: $target) {
                 id conversationId targetUserId signedPayload expiresAt questions { id kind prompt choices } } }""",
            requester,
            target=str(target),
        )
        assert "errors" not in result, result
        return result["data"]["createConnectionKey"]

    async def answers(self, payload: dict[str, Any], correct: bool = True) -> list[dict[str, Any]]:
        """Answers built from the server-side answer keys (which the API never returns): a comprehension
        answer in other words than the key, a free response about what the person wrote."""
        # Through the store: question texts are sealed with the target's data key at rest.
        found = await self.services.key_store.get_quiz(uuid.UUID(payload["id"]))
        assert found is not None
        keys = {str(q.id): q.answer_key for q in found[0].questions}
        references = {str(q.id): q.references or [] for q in found[0].questions}
        answers = []
        for question in payload["questions"]:
            if question["kind"] == "COMPREHENSION" and question["choices"] is None:
                value = PARAPHRASES[keys[question["id"]]] if correct else "I honestly cannot remember, sorry."
            elif question["choices"] is None:
                about = references[question["id"]][0].lower() if references[question["id"]] else "your profile"
                value = f"Reading that {about} made me smile, I'd love to hear the story!" if correct else "ok"
            elif correct:
                value = keys[question["id"]]
            else:
                value = next(c for c in question["choices"] if c != keys[question["id"]])
            answers.append({"questionId": question["id"], "value": value, "elapsedMs": 1500})
        return answers

    async def submit(self, user_id: uuid.UUID, signed_payload: str, answers: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.gql(
            """mutation($input: ConnectionKeyResponseInput!) { submitConnectionKey(input: $input) {
                 attemptId score passed unlockState retryAvailableAt feedback
                 breakdown { questionId kind scorer score passed } } }""",
            user_id,
            input={"signedPayload": signed_payload, "answers": answers},
        )

    async def eventually(self, check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
        """Wait for the asynchronous consumer to catch up (bounded)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not await check():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def api_factory() -> AsyncIterator[Callable[[Settings], Awaitable[Api]]]:
    """Start apps with given settings; all are shut down (lifespan exit) after the test.

    The lifespan runs in the test's own event loop (not a portal thread), so connection pools and
    direct table queries in tests share one loop.
    """
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def serve(app: Litestar, started: asyncio.Event, stop: asyncio.Event) -> None:
        # One task enters and exits the lifespan: its task groups must not cross tasks.
        async with app.lifespan():
            started.set()
            await stop.wait()

    async with contextlib.AsyncExitStack() as stack:

        async def start(settings: Settings) -> Api:
            app = create_app(settings)
            started, stop = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(serve(app, started, stop))
            running.append((stop, task))
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                waiter.cancel()
                task.result()  # start-up failed: raise its error here
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
            )
            return Api(app, client, settings)

        try:
            yield start
        finally:
            for stop, task in reversed(running):
                stop.set()
                await task


@pytest_asyncio.fixture
async def api(api_factory: Callable[[Settings], Awaitable[Api]], settings: Settings) -> Api:
    return await api_factory(settings)
