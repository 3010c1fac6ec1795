#!/usr/bin/env python
"""Connection Key load benchmark: create and submit over REST and GraphQL, beside a bare Litestar endpoint.

Starts the servers itself (``litestar run`` subprocesses on free loopback ports, a fresh temporary
SQLite file, the server pinned to one core and this generator to the other), provisions users,
then for each scenario measures

* saturation: N keep-alive clients (default 50) in a closed loop for a fixed time -> requests/s;
* fixed rate: an open-loop schedule (default 300/s) -> p50/p95/p99 latency measured from each
  request's *scheduled* send time (no coordinated omission).

Scenarios: ``bare`` (bench/bare_app.py, the baseline), ``rest-create``, ``gql-create``,
``rest-submit``, ``gql-submit``. Submits answer from the answer key read straight from the SQLite
file, so every submission passes and unlocks its conversation (``--fail-fraction`` mixes in wrong
answers). Every create/submit uses a requester/target pair once per run.

Prints a table, writes raw JSON to bench/out/, and with ``--write-results`` refreshes the generated
block of bench/RESULTS.md. ``--profile gql-submit`` (etc.) additionally records the server with
py-spy under that scenario's saturation load (after the measured phases, so py-spy's sampling
never touches the numbers in the table).

Usage: .venv/bin/python bench/load.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import msgspec  # noqa: E402
from answer_keys import read_answer_keys  # noqa: E402
from httpload import CpuWindow, PhaseResult, build_request, closed_loop, open_loop, request_many  # noqa: E402
from procstat import CLK_TCK, client_cpu_seconds, descendants, free_port, proc_cpu_seconds  # noqa: E402

HOST = "127.0.0.1"
SCENARIOS = ("bare", "rest-create", "rest-submit", "gql-create", "gql-submit")
AIMS = {
    # scenario: (min saturated req/s, max p95 ms at the fixed rate): the targets a run is judged against
    "gql-submit": (600.0, 25.0),
    "rest-submit": (2000.0, None),
}
BARE_REFERENCE_RPS = 10_000  # what a bare msgspec POST reaches on one core: the yardstick for the machine
MARK_BEGIN = "<!-- load.py:begin (generated; refreshed by `bench/load.py --write-results`) -->"
MARK_END = "<!-- load.py:end -->"

CREATE_GQL = (
    "mutation Create($targetUserId: ID!) { createConnectionKey(targetUserId: $targetUserId) "
    "{ id signedPayload questions { id kind choices } } }"
)
SUBMIT_GQL = (
    "mutation Submit($input: ConnectionKeyResponseInput!) { submitConnectionKey(input: $input) "
    "{ passed unlockState score } }"
)
FREE_TEXT = "I would ask how the midnight rowing bet came about and suggest a calm daytime coffee first."

_json = msgspec.json.Encoder()
_decode = msgspec.json.decode
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# servers


class Server:
    """A ``litestar run`` subprocess pinned with ``taskset``; its output goes to a log file."""

    def __init__(self, name: str, app: str | None, env: dict[str, str], cpu: int | None, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = workdir / f"{name}-server.log"
        cmd = [str(ROOT / ".venv/bin/litestar")]
        if app is not None:
            cmd += ["--app", app]
        cmd += ["run", "--host", HOST, "--port", str(self.port)]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.cmd = cmd
        self.env = env
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self._pids: list[int] = [self.proc.pid]

    def display_command(self) -> str:
        envs = " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"{envs} {' '.join(self.cmd)}".strip()

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0) as s:
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        self._pids = descendants(self.proc.pid)
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} server not ready after {timeout}s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p) for p in self._pids)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of every thread of ``pid`` (``/proc/PID/task/TID/stat``)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            continue
    return out


def thread_split(pid: int, before: dict[int, float], after: dict[int, float], wall: float) -> dict[str, float]:
    """Share of one core used by the event-loop thread vs the rest (aiosqlite connection threads,
    executor threads) between two :func:`thread_cpu` snapshots."""
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    rest = sum(v - before.get(t, 0.0) for t, v in after.items() if t != pid)
    return {"main_thread_pct": round(100 * main / wall, 1), "other_threads_pct": round(100 * rest / wall, 1),
            "threads": len(after)}


# --------------------------------------------------------------------------------------------
# users, pairs, keys


class Pairs:
    """Every unordered pair of ``n`` users (``n`` odd) exactly once, spread over all users:
    round ``d`` pairs user ``a`` (requester) with ``(a + d) % n`` (target)."""

    def __init__(self, n: int) -> None:
        assert n % 2 == 1 and n >= 3
        self.n, self.a, self.d = n, 0, 1
        self.used = 0

    def __next__(self) -> tuple[int, int]:
        if self.d > (self.n - 1) // 2:
            raise RuntimeError("out of distinct user pairs; raise --users")
        pair = (self.a, (self.a + self.d) % self.n)
        self.a += 1
        self.used += 1
        if self.a == self.n:
            self.a, self.d = 0, self.d + 1
        return pair


_SUNDAYS = ["Repotting my fern collection and making soup", "A long bike ride to the coast", "Reading in the park",
            "Baking bread with far too much rosemary", "Swimming in the cold lake at dawn"]
_FACTS = ["I once rowed across a lake at midnight for a bet", "I have named three asteroids after my grandmothers",
          "I can juggle five oranges", "I grew up on a houseboat", "I speak fluent Icelandic"]
_LOOKING = ["Someone who asks good questions", "Someone curious about the night sky", "A fellow bread nerd",
            "Someone who laughs at my puns", "A calm and kind person"]
_CONSENT = [("pace", "I like to chat for a week before meeting in person"),
            ("first date", "First dates in a public place, daytime please"),
            ("photos", "No photos beyond what is on my profile until we have met"),
            ("contact", "Please text before calling, every time"),
            ("topics", "I do not talk about exes on first dates")]


def profile_body(i: int) -> bytes:
    k = len(_SUNDAYS)
    consents = [_CONSENT[(i + j) % len(_CONSENT)] for j in range(3)]
    return _json.encode({
        "displayName": f"Bench User {i}",
        "bio": f"Benchmark profile number {i}.",
        "prompts": [
            {"question": "My ideal Sunday", "answer": f"{_SUNDAYS[i % k]} (#{i})"},
            {"question": "A fact that surprises people", "answer": f"{_FACTS[(i // k) % k]} (#{i})"},
            {"question": "I'm looking for", "answer": f"{_LOOKING[(i // (k * k)) % k]} (#{i})"},
        ],
        "consentPreferences": [{"topic": t, "statement": s} for t, s in consents],
        "locale": "en",
    })


@dataclass
class Key:
    id: str
    requester: int
    signed_payload: str
    questions: list[tuple[str, str, list[str] | None]]  # (id, kind, choices)
    answers: list[tuple[str, str]] | None = None  # (question id, value)


def app_fingerprint() -> tuple[str, str]:
    """A short hash of the service's code (app/, scorers/, plugins/, templates/) and its newest mtime:
    other people edit it while benchmarks run, so every result says which code it measured."""
    import hashlib

    digest = hashlib.sha256()
    newest = 0.0
    for folder in ("app", "scorers", "plugins", "templates"):
        for f in sorted((ROOT / folder).rglob("*")):
            if f.is_file() and f.suffix in (".py", ".toml"):
                digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
                newest = max(newest, f.stat().st_mtime)
    return digest.hexdigest()[:16], dt.datetime.fromtimestamp(newest).astimezone().isoformat(timespec="seconds")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.fingerprint_start = app_fingerprint()[0]
        self.fingerprint_server: str | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="ck-bench-"))
        self.db_path = self.workdir / "db.sqlite3"
        self.server_cpu = None if args.no_pin else args.server_cpu
        self.results: list[dict[str, Any]] = []
        self.profiles: list[dict[str, Any]] = []
        self.rng = random.Random(args.seed)
        self.ck: Server | None = None
        self.bare: Server | None = None
        self.commands: dict[str, str] = {}

    # ---- plumbing ----------------------------------------------------------------------
    def _phase_kwargs(self, server: Server) -> dict[str, Any]:
        return {"host": HOST, "port": server.port, "server_cpu": server.cpu_seconds,
                "client_cpu": client_cpu_seconds, "log": log}

    async def wait_quiet(self, server: Server) -> None:
        """Before a measured phase: wait (up to --quiet-wait s) until other processes on the machine
        use less than --quiet-threshold % of a core, so a parallel test run does not skew the result,
        and until the server itself is idle (background work left by unmeasured preparation, e.g. the
        outbox relay publishing the events of pre-created keys, must not be charged to the phase).
        Whatever remains is reported per phase as ``other_cpu_pct``."""
        args = self.args
        if args.quiet_wait <= 0:
            return
        deadline = time.perf_counter() + args.quiet_wait
        last_log = 0.0
        while True:
            window = CpuWindow(server.cpu_seconds, client_cpu_seconds)
            window.start()
            await asyncio.sleep(1.0)
            m = window.measure()
            other, busy = m["other_cpu_pct"] or 0.0, m["server_cpu_pct"] or 0.0
            if other <= args.quiet_threshold and busy <= args.quiet_threshold:
                return
            now = time.perf_counter()
            if now >= deadline:
                log(f"  machine still busy (other processes: {other:.0f}%, server: {busy:.0f}% of a core); "
                    "measuring anyway")
                return
            if now - last_log >= 5:
                what = (f"other processes use {other:.0f}% of a core" if other > args.quiet_threshold
                        else f"the server is still busy ({busy:.0f}% of its core: background work)")
                log(f"  waiting for the machine to go quiet: {what} "
                    f"(threshold {args.quiet_threshold:g}%, up to {deadline - now:.0f}s more)")
                last_log = now

    async def saturation(self, name: str, server: Server, source: Callable[[], bytes | None],
                         classify: Callable[[int, bytes], tuple[bool, bool]], duration: float | None = None,
                         clients: int | None = None) -> PhaseResult:
        args = self.args
        await self.wait_quiet(server)
        log(f"  {name}: saturation, {clients or args.clients} clients, {args.warmup:g}s warm-up + "
            f"{duration or args.duration:g}s")
        return await closed_loop(name=name, source=source, classify=classify, clients=clients or args.clients,
                                 warmup=args.warmup, duration=duration or args.duration,
                                 **self._phase_kwargs(server))

    async def fixed(self, name: str, server: Server, source: Callable[[], bytes | None],
                    classify: Callable[[int, bytes], tuple[bool, bool]], rate: float) -> PhaseResult:
        args = self.args
        await self.wait_quiet(server)
        log(f"  {name}: fixed rate {rate:g}/s, {args.warmup:g}s warm-up + {args.rate_duration:g}s, "
            f"up to {args.rate_connections} connections")
        return await open_loop(name=name, source=source, classify=classify, rate=rate,
                               connections=args.rate_connections, warmup=args.warmup,
                               duration=args.rate_duration, **self._phase_kwargs(server))

    def keep(self, scenario: str, result: PhaseResult) -> dict[str, Any]:
        s = result.summary()
        s["scenario"] = scenario
        self.results.append(s)
        lat = s["latency_ms"]
        log(f"  => {scenario} {s['mode']}: {s['throughput_rps']}/s ok={s['ok']} passed={s['passed']} "
            f"errors={s['errors']} p50={lat['p50']} p95={lat['p95']} p99={lat['p99']} ms "
            f"accepted p95={s['accepted_latency_ms']['p95']} ms "
            f"server cpu={s['server_cpu_pct']}% generator cpu={s['client_cpu_pct']}% cores busy={s['core_busy_pct']} "
            f"other processes={s['other_cpu_pct']}% steal={s['steal_pct']}")
        for sample in s["error_samples"]:
            log(f"     error sample: {sample}")
        return s

    # ---- bare baseline -----------------------------------------------------------------
    def measure(self, scenario: str, mode: str, phase: Callable[[], tuple[PhaseResult, dict[str, Any]]]) -> None:
        """Run ``phase`` (which builds its own request pool); repeat it, up to --retries times, when
        other processes on the machine used more than --max-other % of a core during the window, and
        keep the least disturbed attempt."""
        args = self.args
        attempts: list[tuple[PhaseResult, dict[str, Any]]] = []
        for attempt in range(1, args.retries + 2):
            result, extra = phase()
            attempts.append((result, extra))
            other = result.other_cpu_pct or 0.0
            if other <= args.max_other:
                break
            if attempt <= args.retries:
                log(f"  other processes used {other:.0f}% of a core during {scenario} {mode} "
                    f"(> --max-other {args.max_other:g}%): repeating ({attempt + 1}/{args.retries + 1})")
        result, extra = min(attempts, key=lambda a: a[0].other_cpu_pct or 0.0)
        s = self.keep(scenario, result)
        s.update(extra)
        s["attempts"] = len(attempts)
        s["other_cpu_pct_of_attempts"] = [a[0].other_cpu_pct for a in attempts]

    def run_bare(self, scenario: str = "bare") -> None:
        args = self.args
        log(f"phase: {scenario}: bare Litestar endpoint (bench/bare_app.py)")
        self.bare = Server("bare", "bench.bare_app:app", {}, self.server_cpu, self.workdir)
        self.commands["bare"] = self.bare.display_command()
        try:
            self._wait_bare()
            bodies = [build_request("POST", "/echo", HOST, self.bare.port,
                                    _json.encode({"targetUserId": str(uuid.UUID(int=self.rng.getrandbits(128))),
                                                  "note": "hello"}))
                      for _ in range(1024)]
            counter = iter(range(1 << 62))
            source = lambda: bodies[next(counter) & 1023]  # noqa: E731
            classify = lambda status, body: (status == 201, False)  # noqa: E731
            bare = self.bare
            if "sat" in args.modes:
                self.measure(scenario, "saturation",
                             lambda: (self._run(self.saturation(scenario, bare, source, classify)), {}))
            if "rate" in args.modes:
                for rate in args.rates:
                    self.measure(scenario, "fixed-rate",
                                 lambda: (self._run(self.fixed(scenario, bare, source, classify, rate)), {}))
        finally:
            self.bare.stop()

    def _wait_bare(self) -> None:
        # The bare app has no GET route; any HTTP answer (405/404) means it is serving.
        assert self.bare is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.bare.proc.poll() is not None:
                raise RuntimeError(f"bare server exited:\n{self.bare.tail()}")
            try:
                with socket.create_connection((HOST, self.bare.port), timeout=1.0) as s:
                    s.sendall(f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 "):
                        self.bare._pids = descendants(self.bare.proc.pid)
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"bare server not ready:\n{self.bare.tail()}")

    # ---- Connection Key ----------------------------------------------------------------
    def start_ck(self) -> Server:
        env = {
            "CK_DATABASE__URL": f"sqlite:///{self.db_path}",
            "CK_RATE_LIMIT__ENABLED": "false",
            "CK_LOGGING__LEVEL": "WARNING",
        }
        for item in self.args.server_env:
            k, _, v = item.partition("=")
            env[k] = v
        log(f"starting Connection Key server (SQLite at {self.db_path})")
        self.ck = Server("ck", None, env, self.server_cpu, self.workdir)
        self.commands["ck"] = self.ck.display_command()
        self.ck.wait_ready("/ready", timeout=90)
        self.fingerprint_server = app_fingerprint()[0]
        log(f"  ready on port {self.ck.port} (pids {self.ck._pids})")
        return self.ck

    def provision(self, ck: Server) -> None:
        from app.auth import mint_token
        from app.settings import load_settings

        args = self.args
        n = args.users
        secret = load_settings(environ={**os.environ, **ck.env}).auth.jwt_secret
        self.user_ids = [str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) for _ in range(n)]
        self.auth = [
            f"Authorization: Bearer {mint_token(secret, uuid.UUID(u), ttl_seconds=3 * 3600)}\r\n".encode()
            for u in self.user_ids
        ]
        service = mint_token(secret, uuid.uuid4(), role="service_role", ttl_seconds=3 * 3600)
        service_hdr = f"Authorization: Bearer {service}\r\n".encode()
        reqs = [build_request("PUT", f"/profiles/{u}", HOST, ck.port, profile_body(i), service_hdr)
                for i, u in enumerate(self.user_ids)]
        bad: Counter[int] = Counter()
        step = max(1, n // 8)

        def on_response(index: int, status: int, body: bytes) -> None:
            if status != 200:
                bad[status] += 1
                if sum(bad.values()) == 1:
                    log(f"  profile PUT failed: {status} {body[:300]!r}")

        def progress(done: int) -> None:
            if done % step == 0 or done == n:
                log(f"  provisioned {done}/{n} profiles")

        log(f"provisioning {n} users via PUT /profiles/{{userId}} (service-role token, {args.clients} connections)")
        t = time.perf_counter()
        self._run(request_many(host=HOST, port=ck.port, requests=reqs, concurrency=args.clients,
                               on_response=on_response, progress=progress))
        if bad:
            raise RuntimeError(f"profile provisioning failed: {dict(bad)}")
        log(f"  {n} profiles in {time.perf_counter() - t:.1f}s; {n * (n - 1) // 2:,} distinct pairs available")
        self.pairs = Pairs(n)

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def create_request(self, port: int, graphql: bool) -> bytes:
        requester, target = next(self.pairs)
        if graphql:
            body = _json.encode({"query": CREATE_GQL, "variables": {"targetUserId": self.user_ids[target]}})
            return build_request("POST", "/graphql", HOST, port, body, self.auth[requester])
        body = b'{"targetUserId":"' + self.user_ids[target].encode() + b'"}'
        return build_request("POST", "/connection-keys", HOST, port, body, self.auth[requester])

    def precreate(self, ck: Server, count: int, label: str) -> list[Key]:
        """Issue ``count`` keys over REST (not measured) and attach their answers from SQLite."""
        log(f"  pre-creating {count} keys for {label} (REST, {self.args.clients} connections)")
        meta: list[int] = []
        reqs = []
        for _ in range(count):
            requester, target = next(self.pairs)
            meta.append(requester)
            body = b'{"targetUserId":"' + self.user_ids[target].encode() + b'"}'
            reqs.append(build_request("POST", "/connection-keys", HOST, ck.port, body, self.auth[requester]))
        keys: list[Key | None] = [None] * count
        bad: Counter[int] = Counter()
        step = max(500, count // 5)

        def on_response(index: int, status: int, body: bytes) -> None:
            if status != 201:
                bad[status] += 1
                if sum(bad.values()) <= 2:
                    log(f"  create failed: {status} {body[:300]!r}")
                return
            doc = _decode(body)
            keys[index] = Key(doc["id"], meta[index], doc["signedPayload"],
                              [(q["id"], q["kind"], q.get("choices")) for q in doc["questions"]])

        def progress(done: int) -> None:
            if done % step == 0:
                log(f"    created {done}/{count}")

        t = time.perf_counter()
        self._run(request_many(host=HOST, port=ck.port, requests=reqs, concurrency=self.args.clients,
                               on_response=on_response, progress=progress))
        got = [k for k in keys if k is not None]
        if bad:
            log(f"  {sum(bad.values())} creates failed: {dict(bad)}")
        self.attach_answers(got)
        log(f"  {len(got)} keys ready in {time.perf_counter() - t:.1f}s")
        return got

    def attach_answers(self, keys: list[Key]) -> None:
        """The API never returns answer keys; open them through the service's stores (benchmark only)."""
        by_id = read_answer_keys(f"sqlite:///{self.db_path}", [k.id for k in keys])
        fail = self.args.fail_fraction
        for key in keys:
            wrong = fail > 0 and self.rng.random() < fail
            answers = []
            for qid, kind, choices in key.questions:
                if qid not in by_id:
                    raise RuntimeError(f"question {qid} of key {key.id} not found in {self.db_path}")
                right = by_id[qid]
                if kind == "FREE_RESPONSE" or right is None:
                    answers.append((qid, FREE_TEXT))
                elif wrong and choices:
                    answers.append((qid, next(c for c in choices if c != right)))
                else:
                    answers.append((qid, right))
            key.answers = answers

    def submit_request(self, key: Key, port: int, graphql: bool) -> bytes:
        assert key.answers is not None
        answers = [{"questionId": q, "value": v, "elapsedMs": 1500} for q, v in key.answers]
        if graphql:
            body = _json.encode({"query": SUBMIT_GQL,
                                 "variables": {"input": {"signedPayload": key.signed_payload, "answers": answers}}})
            return build_request("POST", "/graphql", HOST, port, body, self.auth[key.requester])
        body = _json.encode({"signedPayload": key.signed_payload, "answers": answers})
        return build_request("POST", f"/connection-keys/{key.id}/responses", HOST, port, body,
                             self.auth[key.requester])

    @staticmethod
    def classify_create(graphql: bool) -> Callable[[int, bytes], tuple[bool, bool]]:
        if graphql:
            return lambda status, body: (status == 200 and b'"errors"' not in body, False)
        return lambda status, body: (status == 201, False)

    @staticmethod
    def classify_submit(graphql: bool) -> Callable[[int, bytes], tuple[bool, bool]]:
        if graphql:
            return lambda status, body: (status == 200 and b'"errors"' not in body, b'"passed":true' in body)
        return lambda status, body: (status == 201, b'"passed":true' in body)

    def smoke(self, ck: Server) -> None:
        """One create + submit per API, checked in full, before anything is measured."""
        log("smoke test: one REST and one GraphQL create + submit must pass")

        async def one(req: bytes) -> tuple[int, bytes]:
            from httpload import open_conn
            conn = await open_conn(HOST, ck.port)
            try:
                return await conn.request(req)
            finally:
                conn.close()

        for graphql in (False, True):
            status, body = self._run(one(self.create_request(ck.port, graphql)))
            if not self.classify_create(graphql)(status, body)[0]:
                raise RuntimeError(f"smoke create ({'GraphQL' if graphql else 'REST'}) failed: {status} {body[:500]!r}")
            doc = _decode(body)
            doc = doc["data"]["createConnectionKey"] if graphql else doc
            requester = self.pairs.a - 1 if self.pairs.a else self.pairs.n - 1
            key = Key(doc["id"], requester, doc["signedPayload"],
                      [(q["id"], q["kind"], q.get("choices")) for q in doc["questions"]])
            saved, self.args.fail_fraction = self.args.fail_fraction, 0.0
            self.attach_answers([key])
            self.args.fail_fraction = saved
            status, body = self._run(one(self.submit_request(key, ck.port, graphql)))
            ok, passed = self.classify_submit(graphql)(status, body)
            if not (ok and passed):
                raise RuntimeError(f"smoke submit ({'GraphQL' if graphql else 'REST'}) did not pass: "
                                   f"{status} {body[:500]!r}")
        log("  smoke test passed (both APIs unlock)")

    def run_create(self, ck: Server, graphql: bool) -> None:
        scenario = "gql-create" if graphql else "rest-create"
        log(f"phase: {scenario}")
        source = lambda: self.create_request(ck.port, graphql)  # noqa: E731
        classify = self.classify_create(graphql)
        if "sat" in self.args.modes:
            self.measure(scenario, "saturation",
                         lambda: (self._run(self.saturation(scenario, ck, source, classify)), {}))
        if "rate" in self.args.modes:
            for rate in self.args.rates:
                self.measure(scenario, "fixed-rate",
                             lambda: (self._run(self.fixed(scenario, ck, source, classify, rate)), {}))

    def _pool_source(self, ck: Server, keys: list[Key], graphql: bool) -> Callable[[], bytes | None]:
        reqs = [self.submit_request(k, ck.port, graphql) for k in keys]
        it = iter(reqs)
        return lambda: next(it, None)

    def run_submit(self, ck: Server, graphql: bool) -> None:
        args = self.args
        scenario = "gql-submit" if graphql else "rest-submit"
        log(f"phase: {scenario}")
        classify = self.classify_submit(graphql)

        def saturated() -> tuple[PhaseResult, dict[str, Any]]:
            # A short probe sizes the key pool of the measured run (keys are single use).
            keys = self.precreate(ck, args.probe_keys, f"{scenario} probe")
            probe = self._run(closed_loop(
                name=f"{scenario} probe", source=self._pool_source(ck, keys, graphql), classify=classify,
                clients=args.clients, warmup=0.2, duration=30.0, **self._phase_kwargs(ck)))
            rate = probe.completed / probe.window_s if probe.window_s else 1000.0
            need = int(math.ceil(rate * (args.warmup + args.duration) * args.pool_margin)) + args.clients
            if need > args.max_keys:
                log(f"  probe rate {rate:,.0f}/s wants {need} keys; capped at --max-keys {args.max_keys}")
                need = args.max_keys
            log(f"  probe: {rate:,.0f}/s -> pool of {need} keys")
            keys = self.precreate(ck, need, f"{scenario} saturation")
            result = self._run(self.saturation(scenario, ck, self._pool_source(ck, keys, graphql), classify))
            return result, {"pool_keys": len(keys), "probe_rps": round(rate, 1)}

        def fixed(rate: float) -> tuple[PhaseResult, dict[str, Any]]:
            need = int(math.ceil(rate * (args.warmup + args.rate_duration))) + 10
            keys = self.precreate(ck, need, f"{scenario} fixed rate {rate:g}/s")
            result = self._run(self.fixed(scenario, ck, self._pool_source(ck, keys, graphql), classify, rate))
            return result, {"pool_keys": len(keys)}

        if "sat" in args.modes:
            self.measure(scenario, "saturation", saturated)
            self.sat_rates[scenario] = self.results[-1]["throughput_rps"] or 1000.0
        if "rate" in args.modes:
            for rate in args.rates:
                self.measure(scenario, "fixed-rate", lambda: fixed(rate))

    # ---- profiling ---------------------------------------------------------------------
    def profile(self, ck: Server, scenario: str) -> None:
        from profile_summary import render_svg, summarise_collapsed

        args = self.args
        pyspy = shutil.which("py-spy", path=str(ROOT / ".venv/bin") + os.pathsep + os.environ.get("PATH", ""))
        if pyspy is None:
            log("  py-spy not found; `.venv/bin/pip install -r bench/requirements.txt` to profile")
            return
        graphql = scenario.startswith("gql")
        seconds = args.profile_seconds
        load_desc = f"{args.profile_offered:g}/s offered" if args.profile_offered else "saturation"
        log(f"phase: profile {scenario} under {load_desc} ({seconds:g}s of py-spy at {args.profile_rate} Hz)")
        classify = self.classify_submit(graphql) if scenario.endswith("submit") else self.classify_create(graphql)
        if scenario.endswith("submit"):
            rate = args.profile_offered or self.sat_rates.get(scenario, 1000.0)
            keys = self.precreate(ck, int(rate * (seconds + 3) * 1.1) + args.clients, f"{scenario} profile")
            source = self._pool_source(ck, keys, graphql)
        elif scenario == "bare":
            log("  (profiling the bare app is not supported; it is stopped by now)")
            return
        else:
            source = lambda: self.create_request(ck.port, graphql)  # noqa: E731
        out = Path(args.out)
        stem = f"profile-{scenario}-{self.stamp}"
        raw = out / f"{stem}.txt"
        cmd = [pyspy, "record", "--pid", str(ck.proc.pid), "--rate", str(args.profile_rate), "--duration",
               str(int(seconds)), "--format", "raw", "--threads", "-o", str(raw)]
        if args.profile_mode == "gil":
            cmd.insert(-2, "--gil")
        if args.profile_nonblocking:
            cmd.insert(-2, "--nonblocking")
        if not args.no_pin:
            cmd = ["taskset", "-c", str(args.client_cpu), *cmd]
        threads: dict[str, Any] = {}

        async def go() -> PhaseResult:
            if args.profile_offered:
                load = asyncio.ensure_future(open_loop(
                    name=f"{scenario} (profiled)", source=source, classify=classify, rate=args.profile_offered,
                    connections=args.rate_connections, warmup=1.0, duration=seconds + 1.5,
                    **self._phase_kwargs(ck)))
            else:
                load = asyncio.ensure_future(closed_loop(
                    name=f"{scenario} (profiled)", source=source, classify=classify, clients=args.clients,
                    warmup=1.0, duration=seconds + 1.5, **self._phase_kwargs(ck)))
            await asyncio.sleep(1.0)
            before, t0 = thread_cpu(ck.proc.pid), time.perf_counter()
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            outp, _ = await proc.communicate()
            after, wall = thread_cpu(ck.proc.pid), time.perf_counter() - t0
            threads.update(thread_split(ck.proc.pid, before, after, wall))
            if proc.returncode != 0:
                log(f"  py-spy failed ({proc.returncode}): {outp.decode(errors='replace')[-500:]}")
            return await load

        result = self._run(go())
        s = result.summary()
        log(f"  under py-spy: {s['throughput_rps']}/s (sampling slows the server; not a benchmark figure); "
            f"server threads: {threads}")
        if not raw.exists():
            return
        text = raw.read_text()
        summary = summarise_collapsed(text)
        summary.update({
            "scenario": scenario, "mode": args.profile_mode, "load": load_desc, "raw": _rel(raw),
            "throughput_under_profiler": s["throughput_rps"], "command": " ".join(cmd), "thread_cpu_pct": threads,
            "gil_held_pct_of_wall": round(100 * summary["samples"] / (args.profile_rate * int(seconds)), 1)
            if args.profile_mode == "gil" else None,
        })
        svg = out / f"{stem}.svg"
        what = "GIL-holding thread" if args.profile_mode == "gil" else "all busy threads"
        svg.write_text(render_svg(text, title=f"Connection Key server, {scenario} at {load_desc}, py-spy ({what})"))
        summary["svg"] = _rel(svg)
        (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
        self.profiles.append(summary)
        log(f"  profile: {summary['svg']}  ({summary['samples']} samples)")
        for row in summary["top_inclusive"][:12]:
            log(f"    {row['pct']:5.1f}% incl  {row['frame']}")

    # ---- main --------------------------------------------------------------------------
    def run(self) -> int:
        args = self.args
        self.stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.sat_rates: dict[str, float] = {}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        try:
            import uvloop

            self.loop = uvloop.new_event_loop() if args.loop == "uvloop" else asyncio.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        t0 = time.perf_counter()
        try:
            if "bare" in args.scenarios:
                self.run_bare()
            ck_scenarios = [s for s in args.scenarios if s != "bare"]
            if ck_scenarios or args.profile:
                ck = self.start_ck()
                try:
                    self.provision(ck)
                    self.smoke(ck)
                    for scenario in ck_scenarios:
                        graphql = scenario.startswith("gql")
                        if scenario.endswith("create"):
                            self.run_create(ck, graphql)
                        else:
                            self.run_submit(ck, graphql)
                    for scenario in args.profile:
                        self.profile(ck, scenario)
                finally:
                    ck.stop()
                    if ck.proc.returncode not in (0, -2, None):
                        log(f"ck server exit code {ck.proc.returncode}; log tail:\n{ck.tail()}")
            if "bare" in args.scenarios and ck_scenarios and not args.no_bare_end:
                self.run_bare("bare-end")
        finally:
            self.loop.close()
            elapsed = time.perf_counter() - t0
            self.report(elapsed)
            if not args.keep_db:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                log(f"kept {self.workdir}")
        return 0

    def machine(self) -> dict[str, Any]:
        def ver(pkg: str) -> str | None:
            try:
                return importlib.metadata.version(pkg)
            except importlib.metadata.PackageNotFoundError:
                return None

        cpu_model = ""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        digest, newest = app_fingerprint()
        return {
            "app_tree_sha256": digest,
            "app_tree_sha256_at_start": self.fingerprint_start,
            "app_tree_sha256_at_server_start": self.fingerprint_server,
            "app_newest_file": newest,
            "nproc": os.cpu_count(),
            "affinity_available": sorted(os.sched_getaffinity(0)) if not self.args.no_pin else None,
            "cpu_model": cpu_model,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "event_loop": type(self.loop).__module__ if hasattr(self, "loop") else None,
            "packages": {p: ver(p) for p in ("litestar", "uvicorn", "uvloop", "httptools", "strawberry-graphql",
                                            "graphql-core", "piccolo", "aiosqlite", "msgspec", "pyjwt")},
        }

    def report(self, elapsed: float) -> None:
        args = self.args
        doc = {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([".venv/bin/python", "bench/load.py", *sys.argv[1:]]),
            "elapsed_s": round(elapsed, 1),
            "machine": self.machine(),
            "config": {k: v for k, v in vars(args).items()},
            "server_commands": self.commands,
            "pinning": None if args.no_pin else {"server": f"taskset -c {args.server_cpu}",
                                                 "generator": f"sched_setaffinity({{{args.client_cpu}}})"},
            "results": self.results,
            "profiles": self.profiles,
        }
        out = Path(args.out) / f"results-{self.stamp}.json"
        out.write_text(json.dumps(doc, indent=2, default=str))
        (Path(args.out) / "latest.json").write_text(json.dumps(doc, indent=2, default=str))
        table = markdown_table(doc)
        print()
        print(table)
        print()
        log(f"raw results: {_rel(out)}  ({elapsed:.0f}s in all)")
        if args.write_results and self.results:
            write_results_md(Path(args.results_md), doc, table)
            log(f"refreshed the generated block of {args.results_md}")


# --------------------------------------------------------------------------------------------
# reporting


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if v != v:
        return "–"
    return f"{v:,.{digits}f}"


def markdown_table(doc: dict[str, Any]) -> str:
    results = doc["results"]
    cfg = doc["config"]
    main_rate = float(cfg["rate"])
    by: dict[tuple[str, str], dict[str, Any]] = {
        (r["scenario"], r["mode"]): r for r in results
        if r["mode"] == "saturation" or float(r["offered_rate"]) == main_rate
    }
    extra_rates = [r for r in results if r["mode"] == "fixed-rate" and float(r["offered_rate"]) != main_rate]
    bare_sat = by.get(("bare", "saturation"))
    bare_end = by.get(("bare-end", "saturation"))
    bare_ref = None
    if bare_sat:
        runs = [r["throughput_rps"] for r in (bare_sat, bare_end) if r and r["throughput_rps"]]
        bare_ref = sum(runs) / len(runs)
    lines = [
        f"| scenario | saturated req/s @{cfg['clients']} clients | × bare | sat. p50 / p99 ms "
        f"| server / generator CPU % (sat.) | server CPU ms/req (sat.) | fixed rate: offered → achieved /s | p50 ms | p95 ms | p99 ms "
        f"| errors (sat. + rate) | other procs CPU % (sat. / rate) | aim |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for scenario in (*SCENARIOS, "bare-end"):
        sat, rate = by.get((scenario, "saturation")), by.get((scenario, "fixed-rate"))
        if sat is None and rate is None:
            continue
        row = [f"`{scenario}`"]
        if sat:
            ratio = (sat["throughput_rps"] / bare_ref) if bare_ref and not scenario.startswith("bare") else None
            extra = " (pool ran out)" if sat.get("exhausted_pool") else ""
            row += [f"{_fmt(sat['throughput_rps'], 0)}{extra}",
                    "–" if scenario.startswith("bare") else (f"{ratio:.3f}" if ratio else "–"),
                    f"{_fmt(sat['latency_ms']['p50'])} / {_fmt(sat['latency_ms']['p99'])}",
                    f"{_fmt(sat['server_cpu_pct'], 0)} / {_fmt(sat['client_cpu_pct'], 0)}",
                    _fmt(10 * sat["server_cpu_pct"] / sat["throughput_rps"], 3)
                    if sat.get("server_cpu_pct") and sat.get("throughput_rps") else "–"]
        else:
            row += ["–"] * 5
        if rate:
            lat = rate["latency_ms"]
            row += [f"{_fmt(rate['offered_rate'], 0)} → {_fmt(rate['throughput_rps'], 0)}",
                    _fmt(lat["p50"], 2), _fmt(lat["p95"], 2), _fmt(lat["p99"], 2)]
        else:
            row += ["–"] * 4
        errs = sum((sat or {}).get("errors", {}).values()) + sum((rate or {}).get("errors", {}).values())
        row.append(str(errs))
        row.append(f"{_fmt((sat or {}).get('other_cpu_pct'), 0)} / {_fmt((rate or {}).get('other_cpu_pct'), 0)}")
        aim = AIMS.get(scenario)
        notes = []
        if aim:
            min_rps, max_p95 = aim
            if sat:
                got = sat["throughput_rps"] or 0
                notes.append(f"≥{min_rps:,.0f}/s: {'met' if got >= min_rps else 'not met'}")
            if max_p95 is not None and rate:
                p95 = rate["latency_ms"]["p95"]
                ok = isinstance(p95, (int, float)) and p95 < max_p95 and rate["offered_rate"] == 300
                notes.append(f"p95<{max_p95:g} ms @300/s: {'met' if ok else 'not met'}"
                             + ("" if rate["offered_rate"] == 300 else " (run at 300/s to judge)"))
        elif scenario == "bare":
            notes.append(f"issue's reference ~{BARE_REFERENCE_RPS:,}/s")
        elif scenario == "bare-end":
            notes.append("baseline again after the service phases (drift check)")
        if sat and rate and sat.get("throughput_rps") and rate["offered_rate"] > sat["throughput_rps"]:
            notes.append(f"offered {rate['offered_rate']:,.0f}/s > saturated {sat['throughput_rps']:,.0f}/s: "
                         "the fixed-rate queue grows for the whole phase")
        row.append("; ".join(notes) or "")
        lines.append("| " + " | ".join(row) + " |")
    if bare_ref:
        lines.append("")
        lines.append(f"× bare = saturated req/s ÷ {bare_ref:,.0f} (mean of the bare runs at the start and end).")
    if extra_rates:
        lines += ["", "Fixed rate at other offered rates:", "",
                  "| scenario | offered → achieved /s | p50 ms | p90 ms | p95 ms | p99 ms | max ms | errors "
                  "| server CPU % | other procs CPU % |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in extra_rates:
            lat = r["latency_ms"]
            lines.append(
                f"| `{r['scenario']}` | {_fmt(r['offered_rate'], 0)} → {_fmt(r['throughput_rps'], 0)} "
                f"| {_fmt(lat['p50'], 2)} | {_fmt(lat['p90'], 2)} | {_fmt(lat['p95'], 2)} | {_fmt(lat['p99'], 2)} "
                f"| {_fmt(lat['max'], 2)} | {sum(r['errors'].values())} | {_fmt(r['server_cpu_pct'], 0)} "
                f"| {_fmt(r['other_cpu_pct'], 0)} |")
    return "\n".join(lines)


def write_results_md(path: Path, doc: dict[str, Any], table: str) -> None:
    m = doc["machine"]
    cfg = doc["config"]
    measured = m.get("app_tree_sha256_at_server_start") or m["app_tree_sha256_at_start"]
    block = [
        MARK_BEGIN,
        f"### Run of {doc['date']}",
        "",
        f"- Machine: {m['nproc']} cores (`nproc` = {m['nproc']}), {m['cpu_model']}; `python -V`: Python {m['python']}; "
        f"{m['platform']}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        f"- App code measured: `{measured}` (short sha256 over app/, scorers/, plugins/, templates/ when the "
        f"service started; it keeps what it imported then)"
        + ("" if m["app_tree_sha256"] == measured else
           f"; the tree changed during the run (`{m['app_tree_sha256']}` at the end, newest file "
           f"{m['app_newest_file']})"),
        f"- Command: `{doc['command']}` ({doc['elapsed_s']:.0f} s in all)",
        f"- Server: `{doc['server_commands'].get('ck', '')}`; baseline: `{doc['server_commands'].get('bare', '')}`",
        "- Pinning: " + ("none (--no-pin)" if not doc["pinning"] else
                          f"server `{doc['pinning']['server']}`, generator `{doc['pinning']['generator']}`"),
        f"- Saturation: {cfg['clients']} keep-alive clients, closed loop, {cfg['warmup']:g} s warm-up + "
        f"{cfg['duration']:g} s measured. Fixed rate: open loop at {cfg['rate']:g}/s, {cfg['warmup']:g} s warm-up + "
        f"{cfg['rate_duration']:g} s measured, up to {cfg['rate_connections']} connections, latency from the "
        f"scheduled send time. Users: {cfg['users']}; submits answer correctly "
        f"(fail fraction {cfg['fail_fraction']:g}), so each one unlocks a conversation.",
        "",
        table,
        "",
    ]
    pool_notes = [f"{r['scenario']}: {r.get('pool_keys')} keys" for r in doc["results"] if r.get("pool_keys")]
    if pool_notes:
        block += ["Key pools (single-use keys pre-created over REST before each submit phase, not timed): "
                  + "; ".join(pool_notes) + ".", ""]
    for prof in doc["profiles"]:
        th = prof.get("thread_cpu_pct") or {}
        what = ("only the thread holding the GIL is sampled, so shares are of the server's Python time"
                if prof.get("mode") == "gil" else "all threads py-spy saw as busy")
        block += [
            f"Profile `{prof['scenario']}` at {prof.get('load', 'saturation')}: py-spy `{prof.get('mode')}` mode ({what}); "
            f"{prof['samples']} samples; GIL held {prof.get('gil_held_pct_of_wall')}% of wall time; server threads "
            f"(from /proc): event loop {th.get('main_thread_pct')}% of the core, aiosqlite/executor threads "
            f"{th.get('other_threads_pct')}%; {prof['throughput_under_profiler']}/s while sampled. "
            f"Flame graph: `{prof['svg']}`, raw: `{prof['raw']}`.",
            "",
            "| % of samples | component (time charged to the first library/app frame above the leaf) |",
            "|---:|---|",
        ]
        for row in prof["by_component"][:14]:
            block.append(f"| {row['pct']:.1f} | {row['component']} |")
        block += ["", "| % incl | % self | function (inclusive = itself and what it calls) |", "|---:|---:|---|"]
        for row in prof["top_inclusive"][:25]:
            block.append(f"| {row['pct']:.1f} | {row['self_pct']:.1f} | `{row['frame']}` |")
        block += ["", "| % self | hottest leaf functions |", "|---:|---|"]
        for row in prof["top_self"][:12]:
            block.append(f"| {row['pct']:.1f} | `{row['frame']}` |")
        block.append("")
    block.append(MARK_END)
    text = "\n".join(block)
    if path.exists():
        old = path.read_text()
        if MARK_BEGIN in old and MARK_END in old:
            head, rest = old.split(MARK_BEGIN, 1)
            _, tail = rest.split(MARK_END, 1)
            path.write_text(head + text + tail)
            return
        path.write_text(old.rstrip() + "\n\n" + text + "\n")
        return
    path.write_text("# Load benchmark results\n\n" + text + "\n")


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/load.py",
        description=__doc__.split("Usage:")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)")
    p.add_argument("--modes", default="sat,rate", help="sat (saturation), rate (fixed rate) or both (default)")
    p.add_argument("--clients", type=int, default=50, help="saturation clients / connections (default 50)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per saturation phase (default 10)")
    p.add_argument("--rate", default="300", help="offered requests/s in fixed-rate phases (default 300); a "
                   "comma-separated list runs one phase per rate, the first one goes in the main table")
    p.add_argument("--rate-duration", type=float, default=10.0, help="measured seconds per fixed-rate phase (default 10)")
    p.add_argument("--rate-connections", type=int, default=50,
                   help="connections available to the open-loop sender (default 50); a due request waits "
                        "for a free one, and that wait counts in its latency")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase (default 1)")
    p.add_argument("--users", type=int, default=2001, help="users to provision (made odd; default 2001)")
    p.add_argument("--fail-fraction", type=float, default=0.0,
                   help="share of submits answered wrongly (default 0: every submit passes and unlocks)")
    p.add_argument("--probe-keys", type=int, default=1500, help="keys for the submit-rate probe (default 1500)")
    p.add_argument("--pool-margin", type=float, default=1.5,
                   help="key pool = probe rate × phase time × this (default 1.5)")
    p.add_argument("--max-keys", type=int, default=9000,
                   help="cap on one submit pool (default 9000: the service's in-memory quiz cache holds 10,000 "
                        "entries, so a bigger pool would time the cache-miss path for its oldest keys; if the "
                        "pool runs out the phase ends early and says so)")
    p.add_argument("--server-cpu", type=int, default=0, help="core for the servers (taskset -c, default 0)")
    p.add_argument("--client-cpu", type=int, default=1, help="core for this generator (default 1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="generator event loop")
    p.add_argument("--server-env", action="append", default=[], metavar="CK_X__Y=V",
                   help="extra environment for the Connection Key server (repeatable), e.g. CK_QUEUE__WORKERS=8")
    p.add_argument("--profile", default="", help="comma-separated scenarios to profile with py-spy after the "
                   "measured phases, e.g. gql-submit,rest-submit")
    p.add_argument("--profile-seconds", type=float, default=10.0, help="py-spy recording length (default 10)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s (default 100)")
    p.add_argument("--profile-mode", choices=("gil", "all"), default="gil",
                   help="gil (default): sample only the thread holding the GIL, i.e. where the one core's "
                        "Python time goes; all: every thread py-spy thinks is busy (on a saturated single "
                        "core this overcounts threads that are merely runnable)")
    p.add_argument("--profile-offered", type=float, default=0.0, metavar="RATE",
                   help="profile under an open-loop offered rate instead of saturation")
    p.add_argument("--profile-nonblocking", action="store_true",
                   help="py-spy --nonblocking (does not pause the server per sample)")
    p.add_argument("--quiet-wait", type=float, default=180.0,
                   help="before each measured phase wait up to this many seconds for other processes on the "
                        "machine to go quiet (default 180; 0 = do not wait)")
    p.add_argument("--quiet-threshold", type=float, default=10.0,
                   help="'quiet' = other processes use at most this %% of one core (default 10)")
    p.add_argument("--max-other", type=float, default=20.0,
                   help="repeat a phase when other processes used more than this %% of a core during it "
                        "(default 20)")
    p.add_argument("--retries", type=int, default=2, help="repeats allowed per phase for --max-other (default 2)")
    p.add_argument("--no-bare-end", action="store_true",
                   help="skip measuring the bare endpoint again at the end of the run (a drift check)")
    p.add_argument("--seed", type=int, default=1, help="random seed for user ids (default 1)")
    p.add_argument("--out", default=str(BENCH / "out"), help="raw JSON/profile directory (default bench/out)")
    p.add_argument("--write-results", action="store_true",
                   help="refresh the generated block in --results-md (hand-written notes are kept)")
    p.add_argument("--results-md", default=str(BENCH / "RESULTS.md"))
    p.add_argument("--render", metavar="RESULTS_JSON",
                   help="run nothing: print the table of a saved bench/out/results-*.json (and with "
                        "--write-results put it in RESULTS.md)")
    p.add_argument("--keep-db", action="store_true", help="keep the temporary directory (SQLite, server logs)")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.profile = [s.strip() for s in args.profile.split(",") if s.strip()]
    for s in [*args.scenarios, *args.profile]:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    args.modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    if not args.modes <= {"sat", "rate"}:
        p.error("--modes takes sat, rate or sat,rate")
    if args.users % 2 == 0:
        args.users += 1
    if args.users < 3:
        p.error("--users must be at least 3")
    if not (1 <= args.clients <= 1000 and 1 <= args.rate_connections <= 1000):
        p.error("--clients and --rate-connections must be 1..1000")
    if not (0 < args.duration <= 120 and 0 < args.rate_duration <= 120 and 0 <= args.warmup <= 30):
        p.error("--duration/--rate-duration must be in (0, 120] s and --warmup in [0, 30] s")
    try:
        args.rates = [float(r) for r in str(args.rate).split(",") if r.strip()]
    except ValueError:
        p.error("--rate takes numbers, e.g. 300 or 300,100")
    if not args.rates or not all(0 < r <= 20000 for r in args.rates):
        p.error("--rate must be in (0, 20000]")
    args.rate = args.rates[0]
    if not 0 <= args.fail_fraction <= 1:
        p.error("--fail-fraction must be in [0, 1]")
    if not 1 <= args.profile_seconds <= 60:
        p.error("--profile-seconds must be 1..60")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        table = markdown_table(doc)
        print(table)
        if args.write_results:
            write_results_md(Path(args.results_md), doc, table)
            print(f"refreshed the generated block of {args.results_md}", file=sys.stderr)
        return 0
    if not args.no_pin:
        cpus = os.sched_getaffinity(0)
        if args.server_cpu not in cpus or args.client_cpu not in cpus or args.server_cpu == args.client_cpu:
            print(f"cannot pin: this process may use cores {sorted(cpus)}; pass --server-cpu/--client-cpu "
                  f"(two different cores) or --no-pin", file=sys.stderr)
            return 2
        if shutil.which("taskset") is None:
            print("taskset not found (util-linux); install it or pass --no-pin", file=sys.stderr)
            return 2
        os.sched_setaffinity(0, {args.client_cpu})
        log(f"generator pinned to core {args.client_cpu}; servers will run under taskset -c {args.server_cpu}")
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
