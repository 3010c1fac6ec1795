"""A small, fast HTTP/1.1 load client: raw keep-alive connections on asyncio Protocols.

Why not httpx/aiohttp: per request they spend 100-300 us of Python on one core, which is about
what the server spends, so the generator would saturate first. Here a request is a pre-built
``bytes`` object written to a socket, and a response is found by scanning for the header end and
``Content-Length``: a few microseconds each. Run under uvloop the client does well over 20,000
requests/s on one core (see bench/README.md for the self-check: generator CPU is reported beside
server CPU for every phase).

Only loopback targets are allowed: this tool exists to benchmark a server started by
bench/load.py on the same machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Conn",
    "CpuWindow",
    "PhaseResult",
    "build_request",
    "closed_loop",
    "open_conn",
    "open_loop",
    "percentile",
    "request_many",
]

ALLOWED_HOSTS = frozenset({"127.0.0.1"})
MAX_CLIENTS = 1000
MAX_RATE = 50_000.0
MAX_PHASE_SECONDS = 300.0
MAX_REQUESTS_PER_PHASE = 2_000_000

perf = time.perf_counter


class ProtocolError(ConnectionError):
    """The server sent something this client does not understand, or closed the connection."""


def build_request(method: str, path: str, host: str, port: int, body: bytes = b"", headers: bytes = b"") -> bytes:
    """One HTTP/1.1 keep-alive request. ``headers`` are complete ``Name: value\\r\\n`` lines."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    return head + headers + b"\r\n" + body


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self._need = -1  # total bytes of the current response once its headers are parsed
        self._head_len = 0
        self._status = 0
        self._chunked = False
        self._close_after = False

    # asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ProtocolError(f"connection closed by server: {exc}"))
        self.waiter = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._parse()

    # parsing -----------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self.buf
        if self._need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            try:
                self._status = int(head[9:12])
            except ValueError:
                self._fail(f"bad status line {bytes(buf[:40])!r}")
                return
            self._head_len = end + 4
            self._close_after = b"\r\nconnection: close" in head
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                self._need = self._head_len + int(head[at + 17 : stop if stop >= 0 else len(head)])
                self._chunked = False
            elif b"\r\ntransfer-encoding: chunked" in head:
                self._chunked = True
                self._need = 0
            else:
                self._need = self._head_len
                self._chunked = False
        if self._chunked:
            body = self._parse_chunked()
            if body is None:
                return
        else:
            if len(buf) < self._need:
                return
            body = bytes(buf[self._head_len : self._need])
            del buf[: self._need]
        self._need = -1
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))
        if self._close_after and self.transport is not None:
            self.transport.close()

    def _parse_chunked(self) -> bytes | None:
        buf = self.buf
        pos = self._head_len
        parts: list[bytes] = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            start = eol + 2
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", eol) if buf[start : start + 2] != b"\r\n" else start - 2
                if trailer_end < 0:
                    return None
                del buf[: trailer_end + 4]
                return b"".join(parts)
            if len(buf) < start + size + 2:
                return None
            parts.append(bytes(buf[start : start + size]))
            pos = start + size + 2

    def _fail(self, message: str) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ProtocolError(message))
        if self.transport is not None:
            self.transport.close()

    # API ---------------------------------------------------------------------------------
    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send ``data`` (a full request); the future resolves to ``(status, body)``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        if self.closed or self.transport is None:
            fut.set_exception(ProtocolError("connection is closed"))
            return fut
        self.waiter = fut
        self.transport.write(data)
        if self.buf:
            self._parse()
        return fut

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


async def open_conn(host: str, port: int) -> Conn:
    if host not in ALLOWED_HOSTS:
        raise ValueError(f"refusing to load {host}: only {sorted(ALLOWED_HOSTS)} may be targeted")
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Conn, host, port)
    return proto


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (``inf`` entries are timeouts)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


Classify = Callable[[int, bytes], tuple[bool, bool]]
"""``(status, body) -> (ok, passed)``; ``passed`` only means something for submit scenarios."""


@dataclass
class PhaseResult:
    name: str
    mode: str  # "saturation" or "fixed-rate"
    clients: int
    offered_rate: float | None
    warmup_s: float
    planned_s: float
    window_s: float = 0.0
    completed: int = 0
    ok: int = 0
    passed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    incomplete: int = 0
    exhausted: bool = False
    latencies: list[float] = field(default_factory=list)
    ok_latencies: list[float] = field(default_factory=list)  # accepted requests only (overload runs)
    sched_lag_max_ms: float = 0.0
    sched_lag_p99_ms: float = 0.0
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    core_busy_pct: dict[int, float] | None = None
    other_cpu_pct: float | None = None
    steal_pct: dict[int, float] | None = None

    def record(self, status: int, body: bytes, latency: float, classify: Classify) -> None:
        self.completed += 1
        self.latencies.append(latency)
        ok, passed = classify(status, body)
        if ok:
            self.ok += 1
            self.ok_latencies.append(latency)
            if passed:
                self.passed += 1
        else:
            self.errors[f"HTTP {status}" if status not in (200, 201) else "error body"] += 1
            if len(self.error_samples) < 3:
                self.error_samples.append(f"{status} {body[:300]!r}")

    def record_exception(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(repr(exc)[:300])

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies + [float("inf")] * self.incomplete)
        ms = lambda v: None if v != v else (round(v * 1000, 3) if v != float("inf") else "timeout")  # noqa: E731
        finite = [v for v in self.latencies]
        return {
            "name": self.name,
            "mode": self.mode,
            "clients": self.clients,
            "offered_rate": self.offered_rate,
            "warmup_s": self.warmup_s,
            "planned_s": self.planned_s,
            "window_s": round(self.window_s, 3),
            "completed": self.completed,
            "ok": self.ok,
            "passed": self.passed,
            "incomplete": self.incomplete,
            "errors": dict(self.errors),
            "error_samples": self.error_samples,
            "exhausted_pool": self.exhausted,
            "throughput_rps": round(self.completed / self.window_s, 1) if self.window_s > 0 else None,
            "ok_rps": round(self.ok / self.window_s, 1) if self.window_s > 0 else None,
            "latency_ms": {
                "p50": ms(percentile(lat, 50)),
                "p90": ms(percentile(lat, 90)),
                "p95": ms(percentile(lat, 95)),
                "p99": ms(percentile(lat, 99)),
                "p99.9": ms(percentile(lat, 99.9)),
                "max": ms(lat[-1]) if lat else None,
                "mean": round(sum(finite) / len(finite) * 1000, 3) if finite else None,
            },
            # Under admission control the refusals are fast by design: the SLA is about the accepted.
            "accepted_latency_ms": {
                "p50": ms(percentile(sorted(self.ok_latencies), 50)),
                "p95": ms(percentile(sorted(self.ok_latencies), 95)),
                "p99": ms(percentile(sorted(self.ok_latencies), 99)),
            },
            "scheduler_lag_ms": {"max": round(self.sched_lag_max_ms, 3), "p99": round(self.sched_lag_p99_ms, 3)}
            if self.mode == "fixed-rate"
            else None,
            "server_cpu_pct": self.server_cpu_pct,
            "client_cpu_pct": self.client_cpu_pct,
            "core_busy_pct": self.core_busy_pct,
            "other_cpu_pct": self.other_cpu_pct,
            "steal_pct": self.steal_pct,
        }


CpuProbe = Callable[[], float]


def _check_bounds(clients: int, duration: float, rate: float | None = None) -> None:
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS}")
    if not 0 < duration <= MAX_PHASE_SECONDS:
        raise ValueError(f"phase duration must be in (0, {MAX_PHASE_SECONDS}] s")
    if rate is not None and not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be in (0, {MAX_RATE}] /s")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def core_times() -> dict[int, tuple[int, int, int, int]]:
    """``/proc/stat`` per core, in jiffies: (user+nice+system, irq+softirq, total, steal)."""
    out: dict[int, tuple[int, int, int, int]] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals[:8]]
                    out[int(name[3:])] = (v[0] + v[1] + v[2], v[5] + v[6], sum(v), v[7])
    except OSError:
        pass
    return out


class CpuWindow:
    """Over a window: CPU of the server (``server_cpu``) and of this process, how busy each core
    was (everything, interrupts included), and CPU used by *other* processes on the machine
    (user+system time of all cores minus ours): the interference check."""

    def __init__(self, server_cpu: CpuProbe | None, client_cpu: CpuProbe) -> None:
        self.server_cpu, self.client_cpu = server_cpu, client_cpu
        self.s0 = self.c0 = self.t0 = 0.0
        self.cores0: dict[int, tuple[int, int, int, int]] = {}

    def start(self) -> None:
        self.t0 = perf()
        self.c0 = self.client_cpu()
        self.s0 = self.server_cpu() if self.server_cpu else 0.0
        self.cores0 = core_times()

    def measure(self) -> dict[str, Any]:
        wall = perf() - self.t0
        cores1 = core_times()
        server = (self.server_cpu() - self.s0) if self.server_cpu else 0.0
        client = self.client_cpu() - self.c0
        busy = {
            core: round(100 * ((u1 + i1) - (self.cores0[core][0] + self.cores0[core][1]))
                        / max(1, t1 - self.cores0[core][2]), 1)
            for core, (u1, i1, t1, _) in cores1.items() if core in self.cores0
        }
        steal = {
            core: round(100 * (s1 - self.cores0[core][3]) / max(1, t1 - self.cores0[core][2]), 1)
            for core, (_, _, t1, s1) in cores1.items() if core in self.cores0
        }
        usr_sys = sum(u1 - self.cores0[c][0] for c, (u1, _, _, _) in cores1.items() if c in self.cores0) / CLK_TCK
        return {
            "wall": wall,
            "server_cpu_pct": round(100 * server / wall, 1) if self.server_cpu and wall > 0 else None,
            "client_cpu_pct": round(100 * client / wall, 1) if wall > 0 else None,
            "core_busy_pct": busy,
            "steal_pct": steal,
            "other_cpu_pct": round(max(0.0, 100 * (usr_sys - server - client) / wall), 1) if wall > 0 else None,
        }

    def stop(self, result: PhaseResult) -> None:
        if perf() - self.t0 <= 0:
            return
        m = self.measure()
        result.server_cpu_pct = m["server_cpu_pct"]
        result.client_cpu_pct = m["client_cpu_pct"]
        result.core_busy_pct = m["core_busy_pct"]
        result.steal_pct = m["steal_pct"]
        result.other_cpu_pct = m["other_cpu_pct"]


async def _ticker(label: str, result: PhaseResult, t_start: float, every: float, log: Callable[[str], None]) -> None:
    last_n, last_t = 0, perf()
    while True:
        await asyncio.sleep(every)
        now = perf()
        n = result.completed
        errs = sum(result.errors.values())
        log(f"    {label}: t={now - t_start:5.1f}s measured={n} ({(n - last_n) / (now - last_t):,.0f}/s) errors={errs}")
        last_n, last_t = n, now


async def closed_loop(
    *,
    name: str,
    host: str,
    port: int,
    source: Callable[[], bytes | None],
    classify: Classify,
    clients: int,
    warmup: float,
    duration: float,
    server_cpu: CpuProbe | None,
    client_cpu: CpuProbe,
    log: Callable[[str], None],
    max_requests: int = MAX_REQUESTS_PER_PHASE,
) -> PhaseResult:
    """Saturation: ``clients`` connections, each sending its next request as soon as the previous
    response arrives, for ``warmup`` + ``duration`` seconds; only responses completed after the
    warm-up count. ``source`` returns ``None`` when its pool is exhausted (the phase then ends early
    and the window is shortened to the last completion)."""
    _check_bounds(clients, warmup + duration)
    result = PhaseResult(name, "saturation", clients, None, warmup, duration)
    conns = list(await asyncio.gather(*(open_conn(host, port) for _ in range(clients))))
    t_start = perf()
    t_meas = t_start + warmup
    t_end = t_meas + duration
    sent = 0
    last_done = t_meas
    cpu = CpuWindow(server_cpu, client_cpu)
    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + warmup, cpu.start)

    async def worker(conn: Conn) -> None:
        nonlocal sent, last_done
        while True:
            if perf() >= t_end or sent >= max_requests:
                return
            req = source()
            if req is None:
                result.exhausted = True
                return
            sent += 1
            ts = perf()
            try:
                status, body = await conn.request(req)
            except ConnectionError as exc:
                if perf() >= t_meas:
                    result.record_exception(exc)
                conn.close()
                conn = await open_conn(host, port)
                conns.append(conn)
                continue
            te = perf()
            if te >= t_meas:
                if te <= t_end:
                    result.record(status, body, te - ts, classify)
                    last_done = te

    tick = asyncio.create_task(_ticker(name, result, t_start, 2.0, log))
    try:
        await asyncio.gather(*(worker(c) for c in list(conns)))
    finally:
        tick.cancel()
        for c in conns:
            c.close()
    if cpu.t0:
        cpu.stop(result)
    end = t_end if not result.exhausted else min(t_end, last_done)
    result.window_s = max(0.0, end - t_meas)
    if result.exhausted:
        log(f"    {name}: request pool exhausted after {result.window_s:.2f}s of the {duration:.0f}s window")
    return result


async def open_loop(
    *,
    name: str,
    host: str,
    port: int,
    source: Callable[[], bytes | None],
    classify: Classify,
    rate: float,
    connections: int,
    warmup: float,
    duration: float,
    server_cpu: CpuProbe | None,
    client_cpu: CpuProbe,
    log: Callable[[str], None],
    drain_timeout: float = 10.0,
) -> PhaseResult:
    """Fixed offered rate: request ``i`` is due at ``t0 + i / rate`` whatever happened before it.
    Due requests go to an idle connection or wait in a queue for one; latency is measured from the
    *scheduled* time, so waiting caused by a slow server is counted (no coordinated omission).
    Requests still unanswered ``drain_timeout`` s after the schedule ends count as timeouts
    (``inf`` in the percentiles)."""
    _check_bounds(connections, warmup + duration, rate)
    n_warm = int(rate * warmup)
    n_total = n_warm + int(rate * duration)
    result = PhaseResult(name, "fixed-rate", connections, rate, warmup, duration)
    conns = list(await asyncio.gather(*(open_conn(host, port) for _ in range(connections))))
    queue: deque[tuple[int, float, bytes]] = deque()
    idle: deque[Conn] = deque(conns)
    lags: list[float] = []
    outstanding = 0
    last_done = 0.0
    stopping = False
    replacing: set[asyncio.Future[None]] = set()
    all_sent = asyncio.Event()
    drained = asyncio.Event()
    cpu = CpuWindow(server_cpu, client_cpu)
    loop = asyncio.get_running_loop()

    def launch(conn: Conn, item: tuple[int, float, bytes]) -> None:
        idx, t_sched, req = item
        fut = conn.request(req)
        fut.add_done_callback(lambda f: finished(conn, idx, t_sched, f))

    def finished(conn: Conn, idx: int, t_sched: float, fut: asyncio.Future[tuple[int, bytes]]) -> None:
        nonlocal outstanding, last_done
        if stopping:
            if not fut.cancelled():
                fut.exception()  # mark retrieved; closed by us after the drain timeout (counted as timeouts)
            return
        te = perf()
        outstanding -= 1
        exc = fut.exception()
        if idx >= n_warm:
            last_done = te
            if exc is not None:
                result.record_exception(exc)
            else:
                status, body = fut.result()
                result.record(status, body, te - t_sched, classify)
        if exc is not None:
            conn.close()
            task = asyncio.ensure_future(replace_conn())
            replacing.add(task)
            task.add_done_callback(replacing.discard)
        elif queue:
            launch(conn, queue.popleft())
        else:
            idle.append(conn)
        if outstanding == 0 and all_sent.is_set():
            drained.set()

    async def replace_conn() -> None:
        try:
            conn = await open_conn(host, port)
        except OSError as exc:
            result.record_exception(exc)
            return
        conns.append(conn)
        if queue:
            launch(conn, queue.popleft())
        else:
            idle.append(conn)

    tick = asyncio.create_task(_ticker(name, result, perf(), 2.0, log))
    t0 = perf() + 0.01
    t_meas = t0 + n_warm / rate
    loop.call_at(loop.time() + (t_meas - perf()), cpu.start)
    try:
        for i in range(n_total):
            t_sched = t0 + i / rate
            delay = t_sched - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            if i >= n_warm:
                lags.append(perf() - t_sched)
            req = source()
            if req is None:
                result.exhausted = True
                log(f"    {name}: request pool exhausted at request {i} of {n_total}")
                break
            outstanding += 1
            item = (i, t_sched, req)
            if idle:
                launch(idle.popleft(), item)
            else:
                queue.append(item)
        t_last = perf()
        all_sent.set()
        if outstanding:
            try:
                await asyncio.wait_for(drained.wait(), drain_timeout)
            except TimeoutError:
                pass
        if cpu.t0:
            cpu.stop(result)
        result.incomplete = outstanding
        if result.incomplete:
            result.errors["timeout"] += result.incomplete
        # Achieved rate = measured completions over the time they took, up to the last one (longer
        # than the schedule when the server fell behind and the queue drained afterwards).
        result.window_s = max(0.0, max(t_last, last_done) - t_meas)
    finally:
        stopping = True
        tick.cancel()
        for task in list(replacing):
            task.cancel()
        for c in conns:
            c.close()
    if lags:
        lags.sort()
        result.sched_lag_max_ms = lags[-1] * 1000
        result.sched_lag_p99_ms = percentile(lags, 99) * 1000
    return result


async def request_many(
    *,
    host: str,
    port: int,
    requests: list[bytes],
    concurrency: int,
    on_response: Callable[[int, int, bytes], None],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Send every request once over ``concurrency`` connections (provisioning, not measured)."""
    it = iter(enumerate(requests))
    done = 0

    async def worker() -> None:
        nonlocal done
        conn = await open_conn(host, port)
        try:
            for index, req in it:
                for attempt in range(3):
                    try:
                        status, body = await conn.request(req)
                        break
                    except ConnectionError:
                        conn.close()
                        conn = await open_conn(host, port)
                        if attempt == 2:
                            raise
                on_response(index, status, body)
                done += 1
                if progress is not None:
                    progress(done)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(requests))))))
