"""Throughput and latency of EmbeddingService (fp32 and int8) on short real sentences from STS-benchmark.

For each variant, everything goes through ``EmbeddingService.embed``:

* ``cold``: sequential calls of 1 or 32 sentences with ``cache=False`` (every call computes);
* ``cached``: the same texts again with ``cache=True`` after a first pass filled the in-process cache;
* ``concurrent``: N callers (default 32), each sending single sentences in a loop, i.e. what
  micro-batching is for; compare with ``cold`` batch 1 (one caller at a time);
* ``open loop`` (only with ``--rates``): single sentences arriving at random (Poisson) at a fixed rate, for
  ``window_ms`` 0 and the chosen window; this is how the window policy was decided.

    .venv/bin/python bench/embedding/bench_service.py                  # int8+fp32, 2 threads, 3 s per case
    .venv/bin/python bench/embedding/bench_service.py --variants int8 --concurrency 8 32 --rates 100 300

Sentences are read at run time from the STS-benchmark files in --data (a directory of ``sts-*.csv`` or
one file; TAB separated with unbalanced quotes, so split on tabs by hand). Models are built into
--model-dir first when missing (see scorers.embedding.onnx_build). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from scorers.embedding.config import rows_per_inference  # noqa: E402
from scorers.embedding.encoder import OnnxSentenceEncoder  # noqa: E402
from scorers.embedding.onnx_build import ensure_models  # noqa: E402
from scorers.embedding.service import EmbeddingService  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sts"
AIM_BATCH32 = 1.5 * 290  # sentences/s at batch 32 (aim: 1.5x a baseline of 290/s)
AIM_SINGLE_P50_MS = 3.0


def load_sentences(path: Path, limit: int, max_chars: int) -> list[str]:
    """Unique sentences (columns 6 and 7) of at most ``max_chars``, shuffled with a fixed seed."""
    files = sorted(path.glob("sts-*.csv")) if path.is_dir() else [path]
    seen: dict[str, None] = {}
    for file in files:
        for line in file.read_text(encoding="utf-8").splitlines():
            for sentence in line.split("\t")[5:7]:
                sentence = sentence.strip()
                if sentence and len(sentence) <= max_chars:
                    seen.setdefault(sentence, None)
    if not seen:
        raise SystemExit(f"no sentences found in {path}")
    sentences = list(seen)
    rng = np.random.default_rng(0)
    return [sentences[i] for i in rng.permutation(len(sentences))[:limit]]


def summarise(latencies: list[float], sentences: int, seconds: float) -> dict:
    lat_ms = np.asarray(latencies) * 1000.0
    return {
        "calls": len(latencies),
        "sentences_per_s": sentences / seconds,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
    }


async def sequential(svc: EmbeddingService, batches: list[list[str]], seconds: float, cache: bool) -> dict:
    latencies: list[float] = []
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 20:
        chunk = batches[len(latencies) % len(batches)]
        t0 = time.perf_counter()
        await svc.embed(chunk, cache=cache)
        latencies.append(time.perf_counter() - t0)
        done += len(chunk)
    return summarise(latencies, done, time.perf_counter() - start)


async def concurrent(svc: EmbeddingService, sentences: list[str], callers: int, seconds: float) -> dict:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        index = offset
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await svc.embed([sentences[index % len(sentences)]])
            latencies.append(time.perf_counter() - t0)
            index += callers

    start = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return summarise(latencies, len(latencies), time.perf_counter() - start)


async def open_loop(svc: EmbeddingService, sentences: list[str], rate: float, seconds: float) -> dict:
    latencies: list[float] = []
    rng = np.random.default_rng(1)

    async def one(text: str) -> None:
        t0 = time.perf_counter()
        await svc.embed([text])
        latencies.append(time.perf_counter() - t0)

    tasks: list[asyncio.Task[None]] = []
    start = due = time.perf_counter()
    while due - start < seconds:
        due += rng.exponential(1.0 / rate)
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(sentences[len(tasks) % len(sentences)])))
    await asyncio.gather(*tasks)
    return summarise(latencies, len(latencies), time.perf_counter() - start)


async def bench_variant(encoder: OnnxSentenceEncoder, sentences: list[str], args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []

    async def case(name: str, batch: int, callers: int, cache: bool, window_ms: float, run) -> None:
        async with EmbeddingService(encoder, model_version="bench", window_ms=window_ms) as svc:
            result = await run(svc)
            stats = svc.stats()
        row = {"variant": encoder.variant, "case": name, "batch": batch, "callers": callers, "cache": cache}
        row |= {"window_ms": window_ms, **result, "mean_batch": stats["mean_batch_size"]}
        rows.append(row)
        print(markdown_row(row), flush=True)

    for batch in args.batch_sizes:
        batches = [sentences[i : i + batch] for i in range(0, len(sentences) - batch + 1, batch)]
        await case("cold", batch, 1, False, args.window_ms, lambda s, b=batches: sequential(s, b, args.seconds, False))
        cached = batches[: max(1, args.cached_texts // batch)]

        async def warm_then_time(svc: EmbeddingService, chunks: list[list[str]] = cached) -> dict:
            for chunk in chunks:  # first pass computes and fills the cache
                await svc.embed(chunk, cache=True)
            return await sequential(svc, chunks, args.seconds, True)

        await case("cached", batch, 1, True, args.window_ms, warm_then_time)
    for callers in args.concurrency:
        run = lambda s, n=callers: concurrent(s, sentences, n, args.seconds)  # noqa: E731
        await case("concurrent", 1, callers, False, args.window_ms, run)
    for rate in args.rates:
        for window in sorted({0.0, args.window_ms}):
            run = lambda s, r=rate: open_loop(s, sentences, r, args.seconds)  # noqa: E731
            await case(f"open loop {rate:g}/s", 1, 0, False, window, run)
    return rows


HEADER = (
    "| variant | case | batch | callers | cache | window ms | sent/s | p50 ms | p99 ms | mean batch |\n"
    "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"
)


def markdown_row(row: dict) -> str:
    callers = row["callers"] or "Poisson"
    mean_batch = "-" if row["cache"] else f"{row['mean_batch']:.1f}"  # cached rows never reach the encoder
    return (
        f"| {row['variant']} | {row['case']} | {row['batch']} | {callers} | {'on' if row['cache'] else 'off'} | "
        f"{row['window_ms']:g} | {row['sentences_per_s']:.1f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
        f"{mean_batch} |"
    )


def aims(rows: list[dict]) -> list[str]:
    lines = []
    for variant in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == variant and not row["cache"] and row["callers"] == 1]
        b32 = next((row for row in mine if row["case"] == "cold" and row["batch"] == 32), None)
        b1 = next((row for row in mine if row["case"] == "cold" and row["batch"] == 1), None)
        if b32:
            ok = "meets" if b32["sentences_per_s"] >= AIM_BATCH32 else "misses"
            lines.append(
                f"- {variant}: batch 32 cold {b32['sentences_per_s']:.0f}/s {ok} the aim >= {AIM_BATCH32:.0f}/s"
            )
        if b1:
            ok = "meets" if b1["p50_ms"] < AIM_SINGLE_P50_MS else "misses"
            lines.append(
                f"- {variant}: single sentence p50 {b1['p50_ms']:.2f} ms {ok} the aim < {AIM_SINGLE_P50_MS} ms"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=Path("var/models"), help="where models are (built)")
    parser.add_argument("--variants", nargs="+", choices=["fp32", "int8"], default=["int8", "fp32"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32], help="sequential call sizes")
    parser.add_argument("--concurrency", nargs="*", type=int, default=[32], help="concurrent single-text callers")
    parser.add_argument("--rates", nargs="*", type=float, default=[], help="open-loop arrival rates (sentences/s)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--spinning", action="store_true", help="let idle onnxruntime threads spin")
    parser.add_argument("--window-ms", type=float, default=0.0, help="EmbeddingService window_ms (service default 0)")
    parser.add_argument(
        "--rows-per-inference",
        type=int,
        default=None,
        help="sentences per onnxruntime call; default as the service runs it: 1 for int8 (batch-invariant "
        "scores), the largest batch size for fp32",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per case")
    parser.add_argument("--cached-texts", type=int, default=256, help="texts cycled through in the cached runs")
    parser.add_argument("--max-chars", type=int, default=120, help="longest sentence used")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="STS-benchmark directory or file")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    files = ensure_models(args.model_dir, args.variants, progress=True)
    sentences = load_sentences(args.data, 4096, args.max_chars)
    print(
        f"{platform.processor() or platform.machine()}, intra-op threads={args.threads}, "
        f"spinning={'on' if args.spinning else 'off'}, {len(sentences)} sentences from {args.data}, "
        f"load average before start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n"
    )
    print(HEADER, flush=True)
    rows: list[dict] = []
    for variant in args.variants:
        encoder = OnnxSentenceEncoder(
            files[variant].model,
            files[variant].tokenizer,
            intra_op_threads=args.threads,
            batch_size=rows_per_inference(variant, max(32, *args.batch_sizes), args.rows_per_inference),
            allow_spinning=args.spinning,
        )
        encoder.encode(sentences[:64])  # warm-up: first calls allocate
        rows += asyncio.run(bench_variant(encoder, sentences, args))
    print("\n" + "\n".join(aims(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
