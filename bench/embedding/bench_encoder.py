"""Throughput and latency of OnnxSentenceEncoder (fp32 and int8) on short STS-like sentences.

For each variant and batch size: calls ``encoder.encode(batch)`` repeatedly (tokenisation included, as
the service would), after a warm-up, and reports sentences/s and p50/p99 latency per call.

    .venv/bin/python bench/embedding/bench_encoder.py                      # fp32+int8, batch 1 and 32, 2 threads
    .venv/bin/python bench/embedding/bench_encoder.py --variants int8 --batch-sizes 1 8 32 --seconds 10

Models are built into --model-dir first when missing (see scorers.embedding.onnx_build).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from scorers.embedding.encoder import OnnxSentenceEncoder  # noqa: E402
from scorers.embedding.onnx_build import ensure_models  # noqa: E402
from scorers.embedding.sts_eval import DEFAULT_DATA, load_sts  # noqa: E402

FALLBACK_SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion in the kitchen.",
    "Two dogs are running through a field of tall grass.",
    "The stock market fell sharply on Tuesday after the announcement.",
    "A child is riding a red bicycle down the street.",
    "I like spending weekends hiking in the mountains with friends.",
    "The meeting has been moved to next Thursday afternoon.",
    "She told me her favourite food is spicy ramen.",
]


def load_sentences(path: Path, limit: int) -> list[str]:
    try:
        pairs = load_sts(path)
        sentences = [*pairs.first, *pairs.second]
    except (OSError, ValueError):
        sentences = list(FALLBACK_SENTENCES)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(sentences))
    picked = [sentences[i] for i in order]
    while len(picked) < limit:
        picked += picked
    return picked[:limit]


def bench_one(encoder: OnnxSentenceEncoder, sentences: list[str], batch: int, seconds: float, warmup: int) -> dict:
    batches = [sentences[i : i + batch] for i in range(0, len(sentences) - batch + 1, batch)]
    for chunk in batches[:warmup]:
        encoder.encode(chunk)
    latencies: list[float] = []
    done = 0
    start = time.perf_counter()
    index = 0
    while True:
        chunk = batches[index % len(batches)]
        index += 1
        t0 = time.perf_counter()
        encoder.encode(chunk)
        latencies.append(time.perf_counter() - t0)
        done += len(chunk)
        if time.perf_counter() - start >= seconds and len(latencies) >= 20:
            break
    total = time.perf_counter() - start
    lat_ms = np.asarray(latencies) * 1000.0
    return {
        "batch": batch,
        "calls": len(latencies),
        "sentences_per_s": done / total,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "mean_tokens": float(np.mean([len(ids) for ids in encoder.tokenize(sentences[:2000])])),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("var/models"), help="default: %(default)s")
    parser.add_argument("--variants", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32], help="default: 1 32")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per case (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up calls per case (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="sentences source (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    files = ensure_models(args.model_dir, args.variants, progress=True)
    sentences = load_sentences(args.data, 4096)
    results = []
    print(f"{platform.processor() or platform.machine()}, intra-op threads={args.threads}")
    print(f"{'variant':7s} {'batch':>5s} {'sent/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'calls':>6s}")
    for variant in args.variants:
        encoder = OnnxSentenceEncoder(
            files[variant].model,
            files[variant].tokenizer,
            intra_op_threads=args.threads,
            batch_size=max(args.batch_sizes),
        )
        for batch in args.batch_sizes:
            row = {
                "variant": variant,
                "provider": encoder.provider,
                **bench_one(encoder, sentences, batch, args.seconds, args.warmup),
            }
            results.append(row)
            print(
                f"{variant:7s} {batch:5d} {row['sentences_per_s']:9.1f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
                f"{row['calls']:6d}",
                flush=True,
            )
    if results:
        first = results[0]
        print(f"(mean tokens per sentence incl. [CLS]/[SEP]: {first['mean_tokens']:.1f}; provider {first['provider']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
