#!/usr/bin/env python
"""Count the SQL statements behind one create and one submit (REST and GraphQL), in process.

Not a timing tool: it runs the real app (lifespan included) on a temporary SQLite file through
Litestar's in-process test client, with aiosqlite's ``execute``/``commit`` wrapped to record each
statement. Statements issued while a request is in flight are charged to it; those issued in the
0.5 s after it (outbox relay, unlock consumer) are listed as background work.

    .venv/bin/python bench/querycount.py [--show-sql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from answer_keys import read_answer_keys  # noqa: E402

LOG: list[str] = []


def _instrument() -> None:
    import aiosqlite

    def wrap(cls: type, name: str, label: str | None = None) -> None:
        original = getattr(cls, name)

        def call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            sql = label or (args[0] if args else kwargs.get("sql", ""))
            LOG.append(" ".join(str(sql).split())[:110])
            return original(self, *args, **kwargs)

        setattr(cls, name, call)

    wrap(aiosqlite.Connection, "execute")
    wrap(aiosqlite.Connection, "executemany")
    wrap(aiosqlite.Connection, "executescript")
    wrap(aiosqlite.Connection, "commit", "COMMIT (connection.commit)")
    wrap(aiosqlite.Cursor, "execute")
    wrap(aiosqlite.Cursor, "executemany")
    original_connect = aiosqlite.connect

    def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        LOG.append("<aiosqlite.connect: new connection + thread>")
        return original_connect(*args, **kwargs)

    aiosqlite.connect = connect  # type: ignore[assignment]
    import piccolo.engine.sqlite as piccolo_sqlite

    if getattr(piccolo_sqlite, "aiosqlite", None) is aiosqlite:
        pass  # piccolo calls aiosqlite.connect through the module attribute, which is now wrapped


async def main(show_sql: bool) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ck-querycount-"))
    os.environ.update({
        "CK_DATABASE__URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "CK_RATE_LIMIT__ENABLED": "false",
        "CK_LOGGING__LEVEL": "WARNING",
    })
    _instrument()
    from litestar.testing import AsyncTestClient

    from app import create_app
    from app.auth import mint_token
    from app.settings import load_settings

    sys.path.insert(0, str(ROOT / "bench"))
    from load import CREATE_GQL, FREE_TEXT, SUBMIT_GQL, profile_body

    settings = load_settings()
    secret = settings.auth.jwt_secret
    users = [uuid.uuid4() for _ in range(6)]
    hdr = {u: {"Authorization": f"Bearer {mint_token(secret, u)}"} for u in users}
    service = {"Authorization": f"Bearer {mint_token(secret, uuid.uuid4(), role='service_role')}"}
    results: list[tuple[str, int, list[str], list[str]]] = []

    async with AsyncTestClient(app=create_app(settings)) as client:

        async def measured(label: str, coro):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.6)  # let earlier background work finish
            LOG.clear()
            response = await coro
            during = list(LOG)
            LOG.clear()
            await asyncio.sleep(0.5)
            results.append((label, response.status_code, during, list(LOG)))
            return response

        for i, u in enumerate(users):
            r = await client.put(f"/profiles/{u}", content=profile_body(i), headers={**service,
                                 "Content-Type": "application/json"})
            assert r.status_code == 200, r.text
        await measured("PUT /profiles/{id}", client.put(f"/profiles/{users[0]}", content=profile_body(0),
                       headers={**service, "Content-Type": "application/json"}))

        def answers_for(doc: dict) -> list[dict]:
            keys = read_answer_keys(f"sqlite:///{workdir / 'db.sqlite3'}", [doc["id"]])
            return [{"questionId": q["id"], "value": keys[q["id"]] or FREE_TEXT, "elapsedMs": 1500}
                    for q in doc["questions"]]

        for api, (a, b) in (("REST", (users[1], users[2])), ("GraphQL", (users[3], users[4]))):
            if api == "REST":
                r = await measured("REST create", client.post("/connection-keys", json={"targetUserId": str(b)},
                                                             headers=hdr[a]))
                doc = r.json()
                body = {"signedPayload": doc["signedPayload"], "answers": answers_for(doc)}
                r = await measured("REST submit (passes, unlocks)", client.post(
                    f"/connection-keys/{doc['id']}/responses", json=body, headers=hdr[a]))
                assert r.json()["passed"], r.text
            else:
                r = await measured("GraphQL create", client.post(
                    "/graphql", json={"query": CREATE_GQL, "variables": {"targetUserId": str(b)}}, headers=hdr[a]))
                doc = r.json()["data"]["createConnectionKey"]
                r = await measured("GraphQL submit (passes, unlocks)", client.post("/graphql", json={
                    "query": SUBMIT_GQL,
                    "variables": {"input": {"signedPayload": doc["signedPayload"], "answers": answers_for(doc)}}},
                    headers=hdr[a]))
                assert r.json()["data"]["submitConnectionKey"]["passed"], r.text

    print("| request | status | SQL statements during the request | new connections | after it (background, 0.5 s) |")
    print("|---|---:|---:|---:|---:|")
    for label, status, during, after in results:
        conns = sum(1 for s in during if s.startswith("<aiosqlite.connect"))
        print(f"| {label} | {status} | {len(during) - conns} | {conns} | {len(after)} |")
    if show_sql:
        for label, _, during, after in results:
            print(f"\n## {label}: during")
            for sql, n in Counter(during).most_common():
                print(f"  {n:3d} × {sql}")
            print(f"## {label}: background after it")
            for sql, n in Counter(after).most_common():
                print(f"  {n:3d} × {sql}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show-sql", action="store_true", help="list the statements of each request")
    asyncio.run(main(parser.parse_args().show_sql))
