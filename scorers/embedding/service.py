"""EmbeddingService: the asyncio front of a sentence encoder, with dynamic micro-batching and a cache.

Concurrent :meth:`EmbeddingService.embed` calls are coalesced into batches by one worker task, which runs
``encoder.encode`` in a dedicated one-thread executor (onnxruntime already parallelises inside a call).

Window policy, from measurements on 2 CPU cores (``bench/embedding/bench_service.py``): an int8 call costs
~1.5 ms for one sentence and ~1.2 ms per sentence at batch 32, so texts pile up on their own while the
encoder is busy. An idle worker therefore dispatches the first text after one event-loop turn (callers
started in the same turn, e.g. by ``asyncio.gather``, still join it), never after ``window_ms``: a lone
caller waits for nothing. Only when texts were already queued as the previous batch finished (load)
does a batch wait, at most ``window_ms`` and not at all once ``max_batch`` texts are queued. On CPU, where
cost grows almost linearly with batch size, that wait rarely pays (open loop, int8, 250-400 sentences/s:
p50 ~3 ms with ``window_ms=0``, 6-8 ms with 2 ms), so pass ``window_ms=0`` there; it is meant for GPUs,
where 32 sentences cost about as much as one.

The int8 model quantises activations per batch, so its vectors shift slightly (cosine > 0.99) with the
company a text is batched with; fp32 vectors do not. Texts are never logged (they are personal data) and
cache keys hold only their hash.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import structlog

from plugins.context import SharedCache
from scorers.embedding.encoder import EMBEDDING_DIM

__all__ = ["EmbeddingService", "ServiceClosedError"]

log = structlog.get_logger(__name__)

_COUNTERS = ("requests", "sentences", "batches", "batched_sentences", "encoded_sentences")
_COUNTERS += ("cache_hits_memory", "cache_hits_shared", "cache_misses")
_WIRE_DTYPE = np.dtype("<f4")  # shared-cache values: little-endian float32, the same on every instance


class ServiceClosedError(RuntimeError):
    """The service is not running (not started yet, or closed while the call was waiting)."""


@dataclass(eq=False)
class _Job:
    """One ``embed`` call's texts on their way to the encoder; a long call may span several batches."""

    texts: list[str]
    out: np.ndarray
    future: asyncio.Future[np.ndarray]
    taken: int = 0  # texts handed to a batch so far
    filled: int = 0  # rows written so far


class EmbeddingService:
    """Batch and cache sentence embeddings for asyncio callers; use as ``async with EmbeddingService(...)``.

    Args:
        encoder: anything with a thread-safe ``encode(list[str]) -> ndarray[n, dim]`` (``OnnxSentenceEncoder``).
        model_version: part of every cache key; change it whenever the vectors would change.
        max_batch: at most this many texts per ``encoder.encode`` call.
        window_ms: how long a batch may wait to fill while the worker is busy (see the module docstring).
        cache_entries: size of the in-process LRU of vectors (0 disables it).
        shared_cache: a cross-instance byte cache consulted after the in-process one, or None.
        shared_cache_ttl_seconds: lifetime of the vectors written to ``shared_cache``.
        max_pending: queued texts beyond which new calls wait for room (backpressure).
    """

    def __init__(
        self,
        encoder: Any,
        *,
        model_version: str,
        max_batch: int = 32,
        window_ms: float = 2.0,
        cache_entries: int = 20_000,
        shared_cache: SharedCache | None = None,
        shared_cache_ttl_seconds: float = 7 * 24 * 3600,
        max_pending: int = 1024,
    ) -> None:
        if min(max_batch, max_pending) < 1 or min(window_ms, cache_entries) < 0:
            raise ValueError("max_batch and max_pending must be >= 1, window_ms and cache_entries >= 0")
        self.encoder = encoder
        self.model_version = model_version
        self.dimension = int(getattr(encoder, "dimension", EMBEDDING_DIM))
        self._max_batch = max_batch
        self._window = window_ms / 1000.0
        self._max_pending = max_pending
        self._cache_entries = cache_entries
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._shared = shared_cache
        self._shared_ttl = float(shared_cache_ttl_seconds)
        self._pending: deque[_Job] = deque()
        self._pending_texts = 0
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._counts = dict.fromkeys(_COUNTERS, 0)

    async def __aenter__(self) -> Self:
        """Start the batching worker and its inference thread."""
        if self._worker is not None:
            raise RuntimeError("EmbeddingService can be started only once")
        self._wakeup = asyncio.Event()  # created here so they belong to the running loop
        self._room = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding")
        self._worker = asyncio.create_task(self._work(), name="embedding-batcher")
        self._worker.add_done_callback(self._worker_done)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the worker; every call still waiting fails with :class:`ServiceClosedError`.

        An inference already running is not waited for (it finishes in the background and is dropped),
        so closing never hangs on the encoder.
        """
        if self._worker is None or self._executor is None:
            return
        self._closed = True
        self._worker.cancel()
        await asyncio.wait([self._worker])
        self._fail_pending()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    def stats(self) -> dict[str, int | float]:
        """Counters since start: ``requests``, ``sentences``, ``batches``, ``batched_sentences`` (texts
        sent to batches), ``encoded_sentences`` (after de-duplication), ``mean_batch_size`` (encoded per
        batch), ``cache_hits_memory``, ``cache_hits_shared``, ``cache_misses``, ``cache_entries``, ``pending``
        (queued texts)."""
        batches = self._counts["batches"]
        mean = self._counts["encoded_sentences"] / batches if batches else 0.0
        return dict(self._counts, mean_batch_size=mean, cache_entries=len(self._memory), pending=self._pending_texts)

    async def embed(self, texts: Sequence[str], *, cache: bool = False) -> np.ndarray:
        """Embed ``texts``: float32 ``[len(texts), dim]``, rows in input order (unit norm for MiniLM).

        ``cache=True`` looks each text up in the in-process LRU, then the shared cache, and stores what it
        computes in both: meant for texts seen again and again (a person's own profile answers).
        """
        if self._worker is None or self._closed:
            raise ServiceClosedError("EmbeddingService is not running")
        texts = _clean(texts)
        self._counts["requests"] += 1
        self._counts["sentences"] += len(texts)
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        if not cache:
            return await self._compute(texts)

        keys = [self.cache_key(text) for text in texts]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        missing: list[int] = []
        for i, key in enumerate(keys):
            vector = self._memory.get(key)
            if vector is None:
                missing.append(i)
            else:
                self._memory.move_to_end(key)
                out[i] = vector
                self._counts["cache_hits_memory"] += 1
        if missing and self._shared is not None:
            found = await asyncio.gather(*(self._shared_get(keys[i]) for i in missing))
            for i, vector in zip(missing, found, strict=True):
                if vector is not None:
                    out[i] = vector
                    self._remember(keys[i], out[i])
                    self._counts["cache_hits_shared"] += 1
            missing = [i for i, vector in zip(missing, found, strict=True) if vector is None]
        if missing:
            self._counts["cache_misses"] += len(missing)
            out[missing] = await self._compute([texts[i] for i in missing])
            fresh = {keys[i]: out[i] for i in missing}
            for key, vector in fresh.items():
                self._remember(key, vector)
            if self._shared is not None:
                await asyncio.gather(*(self._shared_set(key, vector) for key, vector in fresh.items()))
        return out

    def cache_key(self, text: str) -> str:
        """``emb:<model_version>:<sha256 of the UTF-8 text>``: never the text itself."""
        return f"emb:{self.model_version}:{hashlib.sha256(text.encode()).hexdigest()}"

    def _remember(self, key: str, vector: np.ndarray) -> None:
        if self._cache_entries == 0:
            return
        stored = np.array(vector, dtype=np.float32)  # a copy: callers may write to what they got back
        stored.flags.writeable = False
        self._memory[key] = stored
        self._memory.move_to_end(key)
        while len(self._memory) > self._cache_entries:
            self._memory.popitem(last=False)

    async def _shared_get(self, key: str) -> np.ndarray | None:
        assert self._shared is not None
        try:
            value = await self._shared.get(key)
        except Exception as exc:  # noqa: BLE001 - the shared cache only saves work; a failure is a miss
            log.warning("embedding shared cache read failed", error=type(exc).__name__)
            return None
        if value is None or len(value) != self.dimension * _WIRE_DTYPE.itemsize:
            return None  # absent, or written by something else: recompute rather than trust it
        return np.frombuffer(value, dtype=_WIRE_DTYPE)

    async def _shared_set(self, key: str, vector: np.ndarray) -> None:
        assert self._shared is not None
        try:
            await self._shared.set(key, vector.astype(_WIRE_DTYPE).tobytes(), self._shared_ttl)
        except Exception as exc:  # noqa: BLE001 - the shared cache only saves work
            log.warning("embedding shared cache write failed", error=type(exc).__name__)

    async def _compute(self, texts: list[str]) -> np.ndarray:
        while True:
            if self._closed:
                raise ServiceClosedError("EmbeddingService closed")
            if not self._pending or self._pending_texts + len(texts) <= self._max_pending:
                break  # a call larger than max_pending still gets in once the queue is empty
            self._room.clear()
            await self._room.wait()
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        job = _Job(texts, out, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._pending_texts += len(texts)
        self._wakeup.set()
        return await job.future  # a cancelled caller cancels the future; the worker then skips the job

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                await asyncio.sleep(0)
            elif self._window and self._pending_texts < self._max_batch:
                deadline = loop.time() + self._window
                while self._pending_texts < self._max_batch and (left := deadline - loop.time()) > 0:
                    self._wakeup.clear()
                    try:
                        async with asyncio.timeout(left):
                            await self._wakeup.wait()
                    except TimeoutError:
                        break
            batch = self._take()
            if batch:
                await self._run(batch, loop)

    def _take(self) -> list[tuple[_Job, int, int]]:
        batch: list[tuple[_Job, int, int]] = []
        room = self._max_batch
        while self._pending and room:
            job = self._pending[0]
            n = len(job.texts) - job.taken if job.future.done() else min(len(job.texts) - job.taken, room)
            if not job.future.done():  # a cancelled (or failed) caller's texts are dropped, not encoded
                batch.append((job, job.taken, job.taken + n))
                room -= n
            job.taken += n
            self._pending_texts -= n
            if job.taken == len(job.texts):
                self._pending.popleft()
        self._room.set()
        return batch

    async def _run(self, batch: list[tuple[_Job, int, int]], loop: asyncio.AbstractEventLoop) -> None:
        index: dict[str, int] = {}  # identical texts in a batch are encoded once
        rows = [[index.setdefault(text, len(index)) for text in job.texts[a:b]] for job, a, b in batch]
        self._counts["batches"] += 1
        self._counts["batched_sentences"] += sum(b - a for _, a, b in batch)
        self._counts["encoded_sentences"] += len(index)
        try:
            vectors = await loop.run_in_executor(self._executor, self.encoder.encode, list(index))
            for (job, a, b), picked in zip(batch, rows, strict=True):
                if not job.future.done():
                    job.out[a:b] = vectors[picked]
                    job.filled += b - a
                    if job.filled == len(job.texts):
                        job.future.set_result(job.out)
        except asyncio.CancelledError:
            self._fail([job for job, _, _ in batch], ServiceClosedError("EmbeddingService closed"))
            raise
        except Exception as exc:  # noqa: BLE001 - fails this batch's callers only; the worker goes on
            log.warning("embedding batch failed", error=type(exc).__name__, sentences=len(index))
            self._fail([job for job, _, _ in batch], exc)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:  # a bug: fail loudly, never hang
            log.error("embedding worker crashed", error=type(error).__name__)
            self._closed = True
            self._fail_pending()

    def _fail(self, jobs: Sequence[_Job], error: BaseException) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _fail_pending(self) -> None:
        self._fail(self._pending, ServiceClosedError("EmbeddingService closed"))
        self._pending.clear()
        self._pending_texts = 0
        self._room.set()  # callers waiting for room wake up, see the service closed and raise


def _clean(texts: Sequence[str]) -> list[str]:
    """Check the input; lone surrogates (invalid UTF-8, which the tokenizer rejects) become U+FFFD, so one
    caller's odd text cannot fail everyone else's batch."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of strings, not a single string")
    cleaned = list(texts)
    for i, text in enumerate(cleaned):
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        if not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                cleaned[i] = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return cleaned
