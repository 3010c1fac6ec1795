"""Upgrading a database in place to field encryption, on SQLite and PostgreSQL.

A database is migrated only up to the migration before field encryption (2026-11-26T16:00:01), so its
PII columns still have their old types (``json``/``varchar`` on PostgreSQL); rows of the old shapes are
written with raw SQL, in plaintext, carrying marker strings. Then the remaining migrations run (on
PostgreSQL the JSON-to-TEXT ``ALTER`` now meets data), the service reads the legacy rows, ``litestar ck
keys rotate`` seals them, and a raw scan of every column of every table finds no marker left, while
the service still reads everything back as it was."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from piccolo.apps.migrations.commands.forwards import run_forwards

from app import create_app
from app.cli import ck
from app.db.engine import Database
from app.db.tables import Profile
from app.domain.field_crypto import is_ciphertext
from app.domain.signing import PayloadSigner
from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import Api

BEFORE_ENCRYPTION = "2026-11-26T13:52:52:456765"  # the last migration before 2026-11-26T16:00:01
ROOT = Path(__file__).resolve().parents[2]

# One marker per stored place, so a failure names the place that kept plaintext.
M = {
    name: f"LEGACY{name.upper().replace('_', '')}X{n:02d}"
    for n, name in enumerate(
        [
            "bob_name", "bob_bio", "bob_prompt", "bob_consent", "bob_segment",
            "alice_name", "alice_bio", "alice_prompt",
            "prompt", "choice", "answer_key", "topic", "reference",
            "response", "line_feedback", "shadow_feedback", "feedback",
            "carol_response", "alice_question",
        ]
    )
}  # fmt: skip


class Ids:
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    conv_ab, conv_ca = uuid.uuid4(), uuid.uuid4()
    key_ab, key_ca = uuid.uuid4(), uuid.uuid4()
    q_mcq, q_free, q_about_alice = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    attempt_ab, attempt_ca = uuid.uuid4(), uuid.uuid4()


def _prompts(owner: str) -> list[dict[str, str]]:
    return [
        {"question": "My ideal Sunday", "answer": f"A long hike in the hills {M[f'{owner}_prompt']}"},
        {"question": "I geek out on", "answer": f"Mechanical keyboards {M[f'{owner}_prompt']}"},
    ]


BOB_CONSENTS = [{"topic": "pace", "statement": f"Chat a week before meeting {M['bob_consent']}"}]
BOB_SEGMENTS = {"ageBand": M["bob_segment"]}
MCQ_CHOICES = [f"Hiking {M['choice']}", "Sailing", "Chess"]
REFERENCES = [f"Mechanical keyboards {M['reference']}"]
RESPONSES = [
    {"questionId": str(Ids.q_mcq), "value": f"Hiking {M['choice']}", "elapsedMs": 1500},
    {"questionId": str(Ids.q_free), "value": f"Keyboards are fun {M['response']}", "elapsedMs": 2500},
]
CAROL_RESPONSES = [{"questionId": str(Ids.q_about_alice), "value": f"Hills {M['carol_response']}", "elapsedMs": 900}]
FEEDBACK = [f"Have another look at what Bob wrote about keyboards {M['feedback']}"]


def _line(question: uuid.UUID, kind: str, feedback: str | None, score: float) -> dict[str, Any]:
    line: dict[str, Any] = {
        "question_id": str(question),
        "kind": kind,
        "scorer": "exact",
        "scorer_version": "1",
        "score": score,
        "passed": score >= 0.5,
    }
    if feedback is not None:
        line["feedback"] = feedback
    return line


BREAKDOWN = [
    _line(Ids.q_mcq, "COMPREHENSION", None, 1.0),
    _line(Ids.q_free, "FREE_RESPONSE", f"Say more about the keyboards {M['line_feedback']}", 0.2),
]
SHADOW = [_line(Ids.q_free, "FREE_RESPONSE", f"Shadow scorer says {M['shadow_feedback']}", 0.3)]


def _cli_env(database_url: str) -> dict[str, str]:
    return {
        "CK_SETTINGS_FILE": str(ROOT / "litestar.toml"),
        "CK_DATABASE__URL": database_url,
        "CK_DATABASE__AUTO_MIGRATE": "true",
        "CK_LOGGING__LEVEL": "WARNING",
    }


async def _migrate(db: Database, migration_id: str) -> None:
    db.bind()
    with contextlib.redirect_stdout(io.StringIO()):
        result = await run_forwards(app_name="connection_key", migration_id=migration_id)
    assert result.success, result.message


async def _sql(query: str, *args: Any) -> list[dict[str, Any]]:
    """Raw SQL with ``{}`` placeholders, on the engine the tables are bound to: no store, no column mapping."""
    return await Profile.raw(query, *args).run()


async def _insert(table: str, row: dict[str, Any]) -> None:
    columns = ", ".join(f'"{c}"' for c in row)
    values = ", ".join("{}" for _ in row)
    await _sql(f'INSERT INTO "{table}" ({columns}) VALUES ({values})', *row.values())  # noqa: S608


async def _old_database(settings: Settings) -> None:
    """Migrate to just before field encryption, write plaintext rows of the old shapes, migrate the rest."""
    db = Database(settings.database)
    await db.start()
    try:
        await _migrate(db, BEFORE_ENCRYPTION)
        if not db.is_sqlite:  # the old shapes really are there
            types = {
                (r["table_name"], r["column_name"]): r["data_type"]
                for r in await _sql("SELECT table_name, column_name, data_type FROM information_schema.columns")
            }
            assert types[("profiles", "prompts")] == "json"
            assert types[("profiles", "display_name")] == "character varying"
            assert types[("connection_key_attempts", "responses")] == "json"
            assert not any(table == "user_data_keys" for table, _ in types)
        now = datetime.now(UTC).replace(microsecond=0)
        signer = PayloadSigner(settings.signing.keys, settings.signing.active_key_id, settings.signing.ttl_seconds)
        j = json.dumps
        for user, name, bio, prompts, consents, segments in (
            (
                Ids.bob,
                f"Bob {M['bob_name']}",
                f"Loves hiking {M['bob_bio']}",
                _prompts("bob"),
                BOB_CONSENTS,
                BOB_SEGMENTS,
            ),
            (Ids.alice, f"Alice {M['alice_name']}", f"Tea person {M['alice_bio']}", _prompts("alice"), [], {}),
        ):
            await _insert(
                "profiles",
                {
                    "user_id": user,
                    "display_name": name,
                    "bio": bio,
                    "prompts": j(prompts),
                    "consent_preferences": j(consents),
                    "locale": "en",
                    "demographic_segments": j(segments),
                    "created_at": now,
                    "updated_at": now,
                },
            )
        # Carol has no profile: she only asked about Alice.
        for conv, a, b in ((Ids.conv_ab, Ids.alice, Ids.bob), (Ids.conv_ca, Ids.carol, Ids.alice)):
            low, high = sorted((a, b), key=str)
            await _insert(
                "conversations",
                {
                    "id": conv,
                    "pair_key": f"{low}:{high}",
                    "participant_low": low,
                    "participant_high": high,
                    "unlock_state": "LOCKED",
                    "created_at": now,
                    "updated_at": now,
                },
            )
        for key, conv, requester, target, questions in (
            (Ids.key_ab, Ids.conv_ab, Ids.alice, Ids.bob, [Ids.q_mcq, Ids.q_free]),
            (Ids.key_ca, Ids.conv_ca, Ids.carol, Ids.alice, [Ids.q_about_alice]),
        ):
            claims = signer.claims_for(
                key_id=key,
                conversation_id=conv,
                requester_id=requester,
                target_id=target,
                question_ids=questions,
                now=now,
            )
            await _insert(
                "connection_keys",
                {
                    "id": key,
                    "conversation_id": conv,
                    "requester_id": requester,
                    "target_id": target,
                    "status": "SUBMITTED",
                    "signing_key_id": settings.signing.active_key_id,
                    "signed_payload": signer.sign(claims),
                    "difficulty": 2,
                    "issued_at": now,
                    "expires_at": now + timedelta(hours=1),
                    "submitted_at": now,
                },
            )
        for qid, key, position, kind, prompt, choices, answer, topic, refs in (
            (Ids.q_mcq, Ids.key_ab, 0, "COMPREHENSION", f"What does Bob do on Sundays? {M['prompt']}",
             j(MCQ_CHOICES), MCQ_CHOICES[0], f"sundays {M['topic']}", None),
            (Ids.q_free, Ids.key_ab, 1, "FREE_RESPONSE", f"Ask Bob about keyboards {M['prompt']}",
             None, f"keyboards {M['answer_key']}", "hobbies", j(REFERENCES)),
            (Ids.q_about_alice, Ids.key_ca, 0, "COMPREHENSION", f"Alice likes? {M['alice_question']}",
             None, f"hills {M['alice_question']}", None, None),
        ):  # fmt: skip
            await _insert(
                "connection_key_questions",
                {
                    "id": qid,
                    "connection_key_id": key,
                    "position": position,
                    "kind": kind,
                    "prompt": prompt,
                    "choices": choices,
                    "answer_key": answer,
                    "topic": topic,
                    "reference_texts": refs,
                    "template_key": f"legacy.{kind.lower()}",
                    "variant": 0,
                    "difficulty": 2,
                },
            )
        for aid, key, conv, requester, target, responses, breakdown, shadow, feedback in (
            (Ids.attempt_ab, Ids.key_ab, Ids.conv_ab, Ids.alice, Ids.bob, RESPONSES, BREAKDOWN, SHADOW, FEEDBACK),
            (Ids.attempt_ca, Ids.key_ca, Ids.conv_ca, Ids.carol, Ids.alice, CAROL_RESPONSES, [], [], []),
        ):
            await _insert(
                "connection_key_attempts",
                {
                    "id": aid,
                    "connection_key_id": key,
                    "conversation_id": conv,
                    "requester_id": requester,
                    "target_id": target,
                    "responses": j(responses),
                    "total_elapsed_ms": 4000,
                    "score": 0.6,
                    "passed": False,
                    "breakdown": j(breakdown),
                    "shadow_breakdown": j(shadow),
                    "experiments": "{}",
                    "feedback": j(feedback),
                    "unlock_state": "LOCKED",
                    "retry_available_at": now + timedelta(hours=1),
                    "started_at": now - timedelta(minutes=5),
                    "submitted_at": now,
                },
            )
        assert _found(await _raw_tables(db)), "the markers were written"

        await _migrate(db, "all")  # the upgrade in place
        if not db.is_sqlite:
            types = {
                (r["table_name"], r["column_name"]): r["data_type"]
                for r in await _sql("SELECT table_name, column_name, data_type FROM information_schema.columns")
            }
            assert types[("profiles", "prompts")] == types[("profiles", "display_name")] == "text"
            assert types[("connection_key_attempts", "responses")] == "text"
            # The cast kept each legacy JSON text as it was.
            row = (await _sql("SELECT prompts FROM profiles WHERE user_id = {}", Ids.bob))[0]
            assert json.loads(row["prompts"]) == _prompts("bob")
    finally:
        await db.stop()


async def _raw_tables(db: Database) -> dict[str, list[dict[str, Any]]]:
    if db.is_sqlite:
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        query = "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'"
    names = [r["name"] for r in await _sql(query)]
    return {name: list(await _sql(f'SELECT * FROM "{name}"')) for name in names}  # noqa: S608


def _found(tables: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, str]]:
    return [
        (table, column, marker)
        for table, rows in tables.items()
        for row in rows
        for column, value in row.items()
        for marker in M.values()
        if marker.lower() in str(value).lower()
    ]


@contextlib.asynccontextmanager
async def _running(settings: Settings) -> Any:
    """The app with its lifespan, in this event loop, and the integration suite's client helpers."""
    app = create_app(settings)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(app, client, settings)


async def _reads_as_written(api: Api) -> None:
    """Every legacy value reads back through the service exactly as it was written."""
    services = api.services
    services.encryption.clear_cache()
    me = await api.gql(
        "{ me { displayName bio prompts { question answer } consentPreferences { statement } } }", Ids.bob
    )
    assert me["data"]["me"] == {
        "displayName": f"Bob {M['bob_name']}",
        "bio": f"Loves hiking {M['bob_bio']}",
        "prompts": _prompts("bob"),
        "consentPreferences": [{"statement": BOB_CONSENTS[0]["statement"]}],
    }
    bob = await services.profile_store.get_profile(Ids.bob)
    assert bob is not None and bob.demographic_segments == BOB_SEGMENTS
    alice = await services.profile_store.get_profile(Ids.alice)
    assert alice is not None and alice.display_name == f"Alice {M['alice_name']}" and alice.consent_preferences == []

    found = await services.key_store.get_quiz(Ids.key_ab)
    assert found is not None
    quiz, status = found
    assert status == "SUBMITTED" and [q.id for q in quiz.questions] == [Ids.q_mcq, Ids.q_free]
    mcq, free = quiz.questions
    assert mcq.prompt == f"What does Bob do on Sundays? {M['prompt']}" and mcq.choices == MCQ_CHOICES
    assert mcq.answer_key == MCQ_CHOICES[0] and mcq.topic == f"sundays {M['topic']}" and mcq.references is None
    assert free.choices is None and free.references == REFERENCES and free.answer_key == f"keyboards {M['answer_key']}"
    about_alice = (await services.key_store.get_quiz(Ids.key_ca))[0].questions[0]
    assert about_alice.prompt == f"Alice likes? {M['alice_question']}" and about_alice.topic is None

    attempt = await services.key_store.get_attempt(Ids.attempt_ab)
    assert attempt is not None and attempt.erased == []
    assert [(str(r.question_id), r.value, r.elapsed_ms) for r in attempt.responses or []] == [
        (r["questionId"], r["value"], r["elapsedMs"]) for r in RESPONSES
    ]
    assert attempt.feedback == FEEDBACK
    assert attempt.breakdown == BREAKDOWN and attempt.shadow_breakdown == SHADOW
    carols = await services.key_store.get_attempt(Ids.attempt_ca)
    assert carols is not None and [r.value for r in carols.responses or []] == [CAROL_RESPONSES[0]["value"]]
    assert carols.feedback == [] and carols.breakdown == []


async def _after_upgrade(settings: Settings) -> None:
    async with _running(settings) as api:
        await _reads_as_written(api)  # legacy plaintext is readable before any rotation
        assert _found(await _raw_tables(api.services.db)), "nothing sealed the legacy rows yet"


async def _after_rotation(settings: Settings) -> None:
    async with _running(settings) as api:
        tables = await _raw_tables(api.services.db)
        assert _found(tables) == []
        profiles = {str(r["user_id"]): r for r in tables["profiles"]}
        for user in (Ids.alice, Ids.bob):
            row = profiles[str(user)]
            assert all(
                is_ciphertext(row[c])
                for c in ("display_name", "bio", "prompts", "consent_preferences", "demographic_segments")
            )
        for row in tables["connection_key_questions"]:
            assert is_ciphertext(row["prompt"]) and is_ciphertext(row["answer_key"])
        for row in tables["connection_key_attempts"]:
            assert is_ciphertext(row["responses"]) and is_ciphertext(row["feedback"])
        keys = {str(r["user_id"]) for r in tables["user_data_keys"] if r["wrapped_key"]}
        assert keys == {str(Ids.alice), str(Ids.bob), str(Ids.carol)}
        await _reads_as_written(api)  # and everything still reads as it was written


def test_an_existing_database_upgrades_in_place_and_rotation_leaves_no_plaintext(database_url: str) -> None:
    settings = make_settings(database_url)
    asyncio.run(_old_database(settings))
    asyncio.run(_after_upgrade(settings))

    runner = CliRunner()
    rotated = runner.invoke(ck, ["keys", "rotate", "--batch-size", "2"], env=_cli_env(database_url))
    assert rotated.exit_code == 0, rotated.output
    assert "legacy: 3 in 2 batches, complete" in rotated.output, rotated.output  # alice, bob, carol
    again = runner.invoke(ck, ["keys", "rotate"], env=_cli_env(database_url))
    assert again.exit_code == 0 and "legacy: 0 in 0 batches, complete" in again.output, again.output

    asyncio.run(_after_rotation(settings))
