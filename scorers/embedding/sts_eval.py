"""STS-benchmark check for the ONNX sentence encoder: Spearman x 100 of cosine similarity vs gold scores.

The published sentence-transformers (PyTorch) figure for all-MiniLM-L6-v2 on STS-b test is 82.03; the bar
here is >= 81.8 for every variant (exit status 1 when a variant is below ``--min-spearman``).

The STS-b csv files are TAB separated and contain unbalanced quotes, so they are split on tabs by hand
(never with the csv module's quoting). Column 5 is the gold score, columns 6 and 7 the sentences; some
lines carry extra trailing tab-separated fields (source/licence notes), which are ignored.

    .venv/bin/python -m scorers.embedding.sts_eval                    # fp32 and int8, building them if missing
    .venv/bin/python -m scorers.embedding.sts_eval --variants fp32 --data /path/to/sts-dev.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_DATA", "StsPairs", "evaluate", "load_sts", "main", "spearman"]

DEFAULT_DATA = Path("/work/shared/data/sts/sts-test.csv")
PUBLISHED_SPEARMAN = 82.03
DEFAULT_BAR = 81.8


@dataclass(frozen=True)
class StsPairs:
    first: list[str]
    second: list[str]
    gold: np.ndarray  # float64 [n], 0..5

    def __len__(self) -> int:
        return len(self.gold)


def load_sts(path: str | Path) -> StsPairs:
    """Read an STS-benchmark file: split on tabs; gold = column 5, sentences = columns 6 and 7."""
    first: list[str] = []
    second: list[str] = []
    gold: list[float] = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 7:
                raise ValueError(f"{path}:{number}: expected at least 7 tab-separated fields, got {len(fields)}")
            try:
                score = float(fields[4])
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: gold score {fields[4]!r} is not a number") from exc
            gold.append(score)
            first.append(fields[5])
            second.append(fields[6])
    if not gold:
        raise ValueError(f"{path}: no sentence pairs")
    return StsPairs(first=first, second=second, gold=np.asarray(gold, dtype=np.float64))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank (what scipy.stats.rankdata('average') gives, minus 1)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks)."""
    ra, rb = _average_ranks(np.asarray(a)), _average_ranks(np.asarray(b))
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator else float("nan")


def cosines(encoder: object, pairs: StsPairs) -> np.ndarray:
    """Cosine per pair (the encoder's vectors are unit-norm, so a row-wise dot product), float64."""
    vectors = encoder.encode([*pairs.first, *pairs.second]).astype(np.float64)  # type: ignore[attr-defined]
    n = len(pairs)
    return np.einsum("ij,ij->i", vectors[:n], vectors[n:])


@dataclass(frozen=True)
class VariantResult:
    variant: str
    spearman100: float
    seconds: float
    cosines: np.ndarray
    provider: str


def evaluate(
    pairs: StsPairs,
    model_dir: str | Path,
    variants: Sequence[str],
    *,
    threads: int | None = None,
    max_length: int = 256,
    build: bool = True,
    progress: bool = True,
) -> list[VariantResult]:
    from scorers.embedding.config import rows_per_inference
    from scorers.embedding.encoder import DEFAULT_BATCH_SIZE, OnnxSentenceEncoder
    from scorers.embedding.onnx_build import ensure_models, model_files

    if build:
        files = ensure_models(model_dir, variants, progress=progress)
    else:
        files = {v: model_files(model_dir, v) for v in variants}
        for v, f in files.items():
            if not f.model.is_file():
                raise FileNotFoundError(f"{f.model} is missing ({v}); run without --no-build to build it")
    results = []
    for variant in variants:
        encoder = OnnxSentenceEncoder(
            files[variant].model,
            files[variant].tokenizer,
            max_length=max_length,
            intra_op_threads=threads,
            batch_size=rows_per_inference(variant, DEFAULT_BATCH_SIZE),  # as the service runs it
        )
        start = time.perf_counter()
        cos = cosines(encoder, pairs)
        elapsed = time.perf_counter() - start
        results.append(VariantResult(variant, 100.0 * spearman(cos, pairs.gold), elapsed, cos, encoder.provider))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scorers.embedding.sts_eval",
        description=(
            "Spearman x 100 of cosine similarity vs gold on STS-benchmark for the fp32 and int8 ONNX models "
            f"(published PyTorch figure: {PUBLISHED_SPEARMAN}). Builds missing models first."
        ),
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="STS-b tab-separated file (default: %(default)s)"
    )
    parser.add_argument("--model-dir", type=Path, default=Path("var/models"), help="models (default: %(default)s)")
    parser.add_argument(
        "--variants", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"], help="default: fp32 int8"
    )
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--max-length", type=int, default=256, help="truncation in tokens (default: %(default)s)")
    parser.add_argument(
        "--min-spearman",
        type=float,
        default=DEFAULT_BAR,
        help="exit 1 when a variant scores below (default: %(default)s)",
    )
    parser.add_argument("--no-build", action="store_true", help="fail instead of building missing models")
    parser.add_argument("--quiet", action="store_true", help="no build progress on stderr")
    args = parser.parse_args(argv)

    from scorers.embedding.onnx_build import SourceModelMissingError

    pairs = load_sts(args.data)
    print(f"{args.data}: {len(pairs)} pairs")
    try:
        results = evaluate(
            pairs,
            args.model_dir,
            args.variants,
            threads=args.threads,
            max_length=args.max_length,
            build=not args.no_build,
            progress=not args.quiet,
        )
    except (SourceModelMissingError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ok = True
    for result in results:
        passed = result.spearman100 >= args.min_spearman
        ok &= passed
        print(
            f"{result.variant:5s} Spearman x100 = {result.spearman100:.2f}  "
            f"({'ok' if passed else 'BELOW'} bar {args.min_spearman}, published {PUBLISHED_SPEARMAN})  "
            f"encode {2 * len(pairs)} sentences in {result.seconds:.2f} s on {result.provider}"
        )
    by_variant = {r.variant: r for r in results}
    if "fp32" in by_variant and "int8" in by_variant:
        delta = np.abs(by_variant["int8"].cosines - by_variant["fp32"].cosines)
        print(f"int8 vs fp32 cosine: max |delta| = {delta.max():.4f}, mean |delta| = {delta.mean():.4f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
