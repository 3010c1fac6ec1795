"""EmbeddingService: results, micro-batching, de-duplication, caches, errors, closing, cancellation."""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from scorers.embedding.encoder import OnnxSentenceEncoder
from scorers.embedding.service import EmbeddingService, ServiceClosedError

ODD = [
    "A man is playing a guitar.",
    "",
    "   \t\n ",
    "Going to the beach tomorrow 🏖️☀️👨‍👩‍👧",
    "私は週末に映画を見るのが好きです。",
    "A very long answer that goes on and on. " * 300,  # far beyond max_length tokens: truncated
    "A man is playing a guitar.",  # duplicate
    "ok",
]


class FakeEncoder:
    """Deterministic 4-d vectors from the text's hash; records every batch; can block or fail on demand."""

    dimension = 4

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.error: Exception | None = None

    @staticmethod
    def vector(text: str) -> np.ndarray:
        return np.frombuffer(hashlib.sha256(text.encode()).digest()[:4], dtype=np.uint8).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        assert self.gate.wait(10), "test forgot to open the gate"
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return np.stack([self.vector(text) for text in texts]) if texts else np.empty((0, 4), np.float32)


class Refusing:
    """An encoder of MiniLM's size that must not be called."""

    dimension = 384

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("the vectors should have come from the shared cache")


class MemorySharedCache:
    """The SharedCache protocol over a dict; can be told to fail."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.ttls: dict[str, float] = {}
        self.broken = False

    async def get(self, key: str) -> bytes | None:
        if self.broken:
            raise ConnectionError("cache down")
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        if self.broken:
            raise ConnectionError("cache down")
        self.data[key] = value
        self.ttls[key] = ttl_seconds


@pytest.fixture
def fake() -> FakeEncoder:
    return FakeEncoder()


@pytest_asyncio.fixture
async def service(encoder: OnnxSentenceEncoder) -> AsyncIterator[EmbeddingService]:
    async with EmbeddingService(encoder, model_version="test-fp32") as svc:
        yield svc


async def wait_for(condition: threading.Event) -> None:
    """Wait (without blocking the loop) until the encoder thread has reached the gate."""
    for _ in range(500):
        if condition.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("encoder never called")


# ----------------------------------------------------------------------------------------- results


@pytest.mark.asyncio
async def test_results_equal_the_encoder(service: EmbeddingService, encoder: OnnxSentenceEncoder) -> None:
    expected = encoder.encode(ODD)
    together = await service.embed(ODD)
    one_by_one = await asyncio.gather(*(service.embed([text]) for text in ODD))
    assert together.shape == (len(ODD), 384)
    assert together.dtype == np.float32
    np.testing.assert_allclose(together, expected, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(one_by_one), expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


@pytest.mark.asyncio
async def test_a_call_longer_than_max_batch_is_split(encoder: OnnxSentenceEncoder) -> None:
    texts = [f"Sentence number {i} about hobbies." for i in range(11)]
    async with EmbeddingService(encoder, model_version="t", max_batch=4) as svc:
        vectors = await svc.embed(texts)
        assert svc.stats()["batches"] == 3
    np.testing.assert_allclose(vectors, encoder.encode(texts), atol=1e-5)


@pytest.mark.asyncio
async def test_lone_surrogates_are_replaced_not_fatal(service: EmbeddingService, encoder: OnnxSentenceEncoder) -> None:
    broken, ok = "ab\ud800cd", "fine text"
    vectors = await asyncio.gather(service.embed([broken], cache=True), service.embed([ok]))
    np.testing.assert_allclose(vectors[0][0], encoder.encode(["ab\ufffdcd"])[0], atol=1e-5)
    np.testing.assert_allclose(vectors[1][0], encoder.encode([ok])[0], atol=1e-5)


@pytest.mark.asyncio
async def test_bad_input(service: EmbeddingService) -> None:
    assert (await service.embed([])).shape == (0, 384)
    with pytest.raises(TypeError, match="single string"):
        await service.embed("not a list")
    with pytest.raises(TypeError, match="expected str"):
        await service.embed(["ok", 3])  # type: ignore[list-item]


@pytest.mark.asyncio
async def test_not_started_or_closed_refuses(fake: FakeEncoder) -> None:
    svc = EmbeddingService(fake, model_version="t")
    with pytest.raises(ServiceClosedError):
        await svc.embed(["x"])
    async with svc:
        await svc.embed(["x"])
    with pytest.raises(ServiceClosedError):
        await svc.embed(["x"])


# ----------------------------------------------------------------------------------------- batching


@pytest.mark.asyncio
async def test_concurrent_callers_are_coalesced(service: EmbeddingService) -> None:
    texts = [f"My favourite hobby is number {i}." for i in range(16)]
    await asyncio.gather(*(service.embed([text]) for text in texts))
    stats = service.stats()
    assert stats["requests"] == 16
    assert stats["batches"] < 16
    assert stats["mean_batch_size"] > 1


@pytest.mark.asyncio
async def test_concurrent_callers_share_one_batch_and_lone_caller_does_not_wait(fake: FakeEncoder) -> None:
    async with EmbeddingService(fake, model_version="t", window_ms=10_000) as svc:
        results = await asyncio.gather(*(svc.embed([f"t{i}"]) for i in range(8)))
        assert fake.calls == [[f"t{i}" for i in range(8)]]
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result[0], FakeEncoder.vector(f"t{i}"))
        # an idle worker dispatches at once: a 10 s window would otherwise trip the timeout
        async with asyncio.timeout(1):
            await svc.embed(["alone"])


@pytest.mark.asyncio
async def test_max_batch_is_respected(fake: FakeEncoder) -> None:
    texts = [f"s{i}" for i in range(40)]
    async with EmbeddingService(fake, model_version="t", max_batch=5) as svc:
        singles = asyncio.gather(*(svc.embed([text]) for text in texts[:23]))
        results = await asyncio.gather(singles, svc.embed(texts[23:]))
        assert svc.stats()["batched_sentences"] == 40
    assert max(len(call) for call in fake.calls) <= 5
    assert sorted(text for call in fake.calls for text in call) == sorted(texts)
    got = np.concatenate([*results[0], results[1]])
    np.testing.assert_array_equal(got, np.stack([FakeEncoder.vector(text) for text in texts]))


@pytest.mark.asyncio
async def test_identical_texts_in_a_batch_are_encoded_once(fake: FakeEncoder) -> None:
    async with EmbeddingService(fake, model_version="t") as svc:
        results = await asyncio.gather(*(svc.embed(["same", "same"]) for _ in range(5)))
        assert svc.stats()["encoded_sentences"] == 1
    assert fake.calls == [["same"]]
    for result in results:
        np.testing.assert_array_equal(result, np.stack([FakeEncoder.vector("same")] * 2))


@pytest.mark.asyncio
async def test_backpressure_waits_for_room(fake: FakeEncoder) -> None:
    fake.gate.clear()
    async with EmbeddingService(fake, model_version="t", max_batch=2, max_pending=3) as svc:
        first = asyncio.create_task(svc.embed(["a", "b"]))
        await wait_for(fake.entered)
        queued = asyncio.create_task(svc.embed(["c", "d", "e"]))
        blocked = asyncio.create_task(svc.embed(["f"]))
        await asyncio.sleep(0.05)
        assert svc.stats()["pending"] == 3
        assert not blocked.done()
        fake.gate.set()
        await asyncio.gather(first, queued, blocked)
    assert sorted(text for call in fake.calls for text in call) == list("abcdef")


# ----------------------------------------------------------------------------------------- caches


@pytest.mark.asyncio
async def test_cache_hit_returns_the_same_vector_without_encoding(service: EmbeddingService) -> None:
    first = await service.embed(["I love hiking", "and cooking"], cache=True)
    batches = service.stats()["batches"]
    first_copy = first.copy()
    first[:] = 0  # what a caller does with its array must not reach the cache
    second = await service.embed(["and cooking", "I love hiking"], cache=True)
    np.testing.assert_array_equal(second, first_copy[::-1])
    stats = service.stats()
    assert stats["batches"] == batches
    assert (stats["cache_hits_memory"], stats["cache_misses"]) == (2, 2)


@pytest.mark.asyncio
async def test_uncached_calls_neither_read_nor_fill_the_cache(fake: FakeEncoder) -> None:
    async with EmbeddingService(fake, model_version="t") as svc:
        await svc.embed(["x"])
        await svc.embed(["x"])
        assert svc.stats()["cache_entries"] == 0
    assert len(fake.calls) == 2


@pytest.mark.asyncio
async def test_memory_cache_is_a_bounded_lru(fake: FakeEncoder) -> None:
    async with EmbeddingService(fake, model_version="t", cache_entries=2) as svc:
        for text in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
            await svc.embed([text], cache=True)
        assert svc.stats()["cache_entries"] == 2
        await svc.embed(["a", "c"], cache=True)
        assert svc.stats()["cache_hits_memory"] == 3
        await svc.embed(["b"], cache=True)
        assert svc.stats()["cache_misses"] == 4


@pytest.mark.asyncio
async def test_shared_cache_is_written_and_read_by_another_instance(encoder: OnnxSentenceEncoder) -> None:
    shared = MemorySharedCache()
    texts = ["She told me her favourite food is spicy ramen.", "Going to the beach 🏖️", ""]
    async with EmbeddingService(encoder, model_version="v1", shared_cache=shared, shared_cache_ttl_seconds=60) as a:
        computed = await a.embed(texts, cache=True)
        keys = [a.cache_key(text) for text in texts]
    assert sorted(shared.data) == sorted(keys)
    assert set(shared.ttls.values()) == {60}
    for key, vector in zip(keys, computed, strict=True):
        np.testing.assert_array_equal(np.frombuffer(shared.data[key], dtype=np.float32), vector)

    async with EmbeddingService(Refusing(), model_version="v1", shared_cache=shared) as b:
        again = await b.embed(texts, cache=True)
        stats = b.stats()
    np.testing.assert_array_equal(again, computed)
    assert (stats["cache_hits_shared"], stats["cache_misses"], stats["batches"]) == (3, 0, 0)


@pytest.mark.asyncio
async def test_broken_or_foreign_shared_cache_values_mean_recompute(fake: FakeEncoder) -> None:
    shared = MemorySharedCache()
    async with EmbeddingService(fake, model_version="t", shared_cache=shared) as svc:
        shared.data[svc.cache_key("odd")] = b"\x00" * 3  # not a vector of this model
        np.testing.assert_array_equal((await svc.embed(["odd"], cache=True))[0], FakeEncoder.vector("odd"))
        shared.broken = True
        with capture_logs() as logs:
            np.testing.assert_array_equal((await svc.embed(["new"], cache=True))[0], FakeEncoder.vector("new"))
    assert {entry["event"] for entry in logs} == {
        "embedding shared cache read failed",
        "embedding shared cache write failed",
    }


@pytest.mark.asyncio
async def test_keys_and_logs_hold_no_text(fake: FakeEncoder) -> None:
    shared = MemorySharedCache()
    secret = "my secret answer about my ex"
    async with EmbeddingService(fake, model_version="m7", shared_cache=shared) as svc:
        await svc.embed([secret, "x"], cache=True)
        fake.error = RuntimeError("boom")
        with capture_logs() as logs, pytest.raises(RuntimeError):
            await svc.embed([secret])
    expected = f"emb:m7:{hashlib.sha256(secret.encode()).hexdigest()}"
    assert expected in shared.data
    for key in shared.data:
        assert re.fullmatch(r"emb:m7:[0-9a-f]{64}", key)
        assert "secret" not in key
    assert logs
    assert "secret" not in repr(logs)


# ----------------------------------------------------------------------------------------- failures


@pytest.mark.asyncio
async def test_encoder_error_fails_that_batch_only(fake: FakeEncoder) -> None:
    async with EmbeddingService(fake, model_version="t") as svc:
        fake.error = ValueError("encoder exploded")
        results = await asyncio.gather(*(svc.embed([f"t{i}"]) for i in range(3)), return_exceptions=True)
        assert all(isinstance(result, ValueError) for result in results)
        np.testing.assert_array_equal((await svc.embed(["after"]))[0], FakeEncoder.vector("after"))


@pytest.mark.asyncio
async def test_close_with_pending_callers_does_not_hang(fake: FakeEncoder) -> None:
    fake.gate.clear()
    svc = EmbeddingService(fake, model_version="t", max_batch=1, max_pending=1)
    try:
        async with svc:
            in_flight = asyncio.create_task(svc.embed(["a"]))
            await wait_for(fake.entered)
            queued = asyncio.create_task(svc.embed(["b"]))
            waiting_for_room = asyncio.create_task(svc.embed(["c"]))
            await asyncio.sleep(0.02)
            async with asyncio.timeout(2):
                await svc.__aexit__(None, None, None)
            async with asyncio.timeout(2):
                results = await asyncio.gather(in_flight, queued, waiting_for_room, return_exceptions=True)
        assert all(isinstance(result, ServiceClosedError) for result in results)
    finally:
        fake.gate.set()  # let the abandoned inference thread finish


@pytest.mark.asyncio
async def test_cancelled_callers_do_not_break_the_worker(fake: FakeEncoder) -> None:
    fake.gate.clear()
    async with EmbeddingService(fake, model_version="t") as svc:
        in_flight = asyncio.create_task(svc.embed(["a"]))
        await wait_for(fake.entered)
        queued = asyncio.create_task(svc.embed(["dropped"]))
        await asyncio.sleep(0.01)
        in_flight.cancel()
        queued.cancel()
        fake.gate.set()
        for task in (in_flight, queued):
            with pytest.raises(asyncio.CancelledError):
                await task
        np.testing.assert_array_equal((await svc.embed(["b"]))[0], FakeEncoder.vector("b"))
    assert fake.calls == [["a"], ["b"]]  # the cancelled caller's queued text was never encoded


@pytest.mark.asyncio
async def test_cancellation_with_the_real_encoder(service: EmbeddingService, encoder: OnnxSentenceEncoder) -> None:
    tasks = [asyncio.create_task(service.embed([f"text {i}"])) for i in range(10)]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(done):
        if i % 2:
            np.testing.assert_allclose(result[0], encoder.encode([f"text {i}"])[0], atol=1e-5)
    np.testing.assert_allclose(await service.embed(["later"]), encoder.encode(["later"]), atol=1e-5)


@pytest.mark.asyncio
async def test_a_crashed_worker_fails_callers_instead_of_hanging(fake: FakeEncoder, monkeypatch) -> None:
    async with EmbeddingService(fake, model_version="t") as svc:

        def broken_take() -> list:
            raise KeyError("bug")

        monkeypatch.setattr(svc, "_take", broken_take)
        with capture_logs() as logs, pytest.raises(ServiceClosedError):
            async with asyncio.timeout(2):
                await svc.embed(["x"])
        assert [entry["event"] for entry in logs] == ["embedding worker crashed"]
        with pytest.raises(ServiceClosedError):
            await svc.embed(["y"])
        with pytest.raises(RuntimeError, match="only once"):
            await svc.__aenter__()
    await svc.__aexit__(None, None, None)  # closing twice is harmless
