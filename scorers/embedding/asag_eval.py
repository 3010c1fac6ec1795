"""Short-answer grading check: Pearson of the comprehension score with human grades (Mohler et al. 2011).

The UNT short-answer set (Mohler, Bunescu & Mihalcea, ACL-HLT 2011: 2,442 computer-science answers to 87
questions in 12 assignments/exams, each graded 0-5 by two graders) is the closest public stand-in for the
quiz's "what did Bob say?" answers: a reference answer, a free-text response, a human grade. Its licence is
unclear, so it is **evaluation only**: never copied into this project, read at run time from ``--data``.

Printed per model variant (Pearson and Spearman with ``score_avg``):

* ``cosine``: plain cosine of the embedded answer and reference (the baseline);
* ``match_score``: :func:`scorers.embedding.answer_match.match_score` with the default
  :class:`~scorers.embedding.answer_match.MatchParams` at ``--difficulty`` (default 2), i.e. the scorer as
  configured;
* ``cross-validated``: the same family with its free parameters (lexical weight, question-word weight and
  the difficulty ramp) fitted on all assignments but one and scored on the held-out one, for each of the 12
  assignments; Pearson of the pooled held-out scores. Close to the in-sample figure = not overfit. The
  in-sample best of the grid is printed too.

The paper's best Pearson is 0.518 (on the 2,273 answers of its 80 questions; ``--paper-set`` restricts
to the ``in_paper_set == 1`` rows, 2,273 answers); the default is all 2,442 answers.

Scoring goes through a plain callable, ``score_fn(items) -> scores`` with ``items`` a list of
``(question, reference, response)``, so :func:`evaluate` can be pointed at any scorer;
:func:`encoder_score_fn` builds the default one from an :class:`OnnxSentenceEncoder`.

    .venv/bin/python -m scorers.embedding.asag_eval --data ../shared/data/asag/mohler_unt_v2.tsv \\
        --model-dir var/models --variant all --threads 2
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scorers.embedding.answer_match import MatchFeatures, MatchParams, match_features, match_score
from scorers.embedding.sts_eval import spearman

__all__ = [
    "AsagData",
    "CvResult",
    "Metrics",
    "ScoreFn",
    "blend_scores",
    "cosine_score_fn",
    "cross_validate",
    "encoder_score_fn",
    "evaluate",
    "load_asag",
    "main",
    "pearson",
]

REQUIRED_COLUMNS = ("question", "reference_answer", "student_answer", "score_avg")
PAPER_PEARSON = 0.518  # Mohler et al. 2011, best system (SVMRank + dependency-graph alignment + BOW features)

Item = tuple[str | None, str, str]  # (question, reference, response)
ScoreFn = Callable[[Sequence[Item]], Sequence[float]]
Progress = Callable[[str], None]

# Cross-validation grid: round numbers only, the same family the defaults were chosen from. zero_at starts
# at 0.1 because an unrelated answer must score 0 (see answer_match.DEFAULT_THRESHOLDS).
GRID_LEXICAL_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(21))
GRID_QUESTION_WORD_WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
GRID_RAMPS = tuple(
    (round(0.05 * lo, 2), round(0.05 * hi, 2)) for lo in range(2, 9) for hi in range(lo + 2, 21)
)  # zero_at 0.10..0.40, one_at zero_at+0.10..1.00


# ------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class AsagData:
    """Graded answers: parallel lists, plus ``groups`` (the assignment) for cross-validation."""

    questions: list[str]
    references: list[str]
    responses: list[str]
    gold: np.ndarray  # float64 [n], 0..5
    groups: list[str]

    def __len__(self) -> int:
        return len(self.gold)

    def items(self) -> list[Item]:
        return list(zip(self.questions, self.references, self.responses, strict=True))


def load_asag(path: str | Path, *, paper_set: bool = False) -> AsagData:
    """Read the tab-separated Mohler table (``csv.DictReader``, tab delimiter, as its README says).

    Needs the columns ``question``, ``reference_answer``, ``student_answer`` and ``score_avg``. Groups for
    cross-validation come from ``assignment`` when present, else from the ``x`` of ``question_id`` ``x.y``,
    else from the question text. ``paper_set`` keeps only ``in_paper_set == 1`` rows.
    """
    path = Path(path)
    questions: list[str] = []
    references: list[str] = []
    responses: list[str] = []
    gold: list[float] = []
    groups: list[str] = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (have {reader.fieldnames})")
        if paper_set and "in_paper_set" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: --paper-set needs the in_paper_set column")
        for number, row in enumerate(reader, start=2):
            if paper_set and row["in_paper_set"].strip() != "1":
                continue
            try:
                score = float(row["score_avg"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: score_avg {row['score_avg']!r} is not a number") from exc
            if not math.isfinite(score):
                raise ValueError(f"{path}:{number}: score_avg {row['score_avg']!r} is not finite")
            questions.append(row["question"] or "")
            references.append(row["reference_answer"] or "")
            responses.append(row["student_answer"] or "")
            gold.append(score)
            if row.get("assignment"):
                groups.append(row["assignment"].strip())
            elif row.get("question_id"):
                groups.append(row["question_id"].split(".")[0].strip())
            else:
                groups.append(row["question"] or "")
    if not gold:
        raise ValueError(f"{path}: no graded answers")
    return AsagData(questions, references, responses, np.asarray(gold, dtype=np.float64), groups)


# ------------------------------------------------------------------------------------------------- metrics


def pearson(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    x = np.asarray(a, dtype=np.float64) - np.mean(a)
    y = np.asarray(b, dtype=np.float64) - np.mean(b)
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator else float("nan")


@dataclass(frozen=True)
class Metrics:
    pearson: float
    spearman: float
    scores: np.ndarray
    seconds: float


def evaluate(data: AsagData, score_fn: ScoreFn) -> Metrics:
    """Score every ``(question, reference, response)`` with ``score_fn``; correlate with the gold grades."""
    start = time.perf_counter()
    scores = np.asarray(score_fn(data.items()), dtype=np.float64)
    elapsed = time.perf_counter() - start
    if scores.shape != data.gold.shape:
        raise ValueError(f"score_fn returned {scores.shape[0] if scores.ndim else 'a scalar'} scores for {len(data)}")
    return Metrics(pearson(scores, data.gold), spearman(scores, data.gold), scores, elapsed)


# ------------------------------------------------------------------------------------------------- default scorer


class _MemoEncoder:
    """Encode each distinct text once (references repeat for every answer; two score functions share it)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.vectors: dict[str, np.ndarray] = {}

    def cosines(self, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        new = sorted({*first, *second} - self.vectors.keys())
        if new:
            for text, vector in zip(new, self.encoder.encode(new), strict=True):
                self.vectors[text] = vector.astype(np.float64)
        a = np.stack([self.vectors[t] for t in first]) if first else np.zeros((0, 1))
        b = np.stack([self.vectors[t] for t in second]) if second else np.zeros((0, 1))
        return np.einsum("ij,ij->i", a, b)


def cosine_score_fn(encoder: Any) -> ScoreFn:
    """Plain cosine of the embedded response and reference (the baseline)."""
    memo = encoder if isinstance(encoder, _MemoEncoder) else _MemoEncoder(encoder)

    def score(items: Sequence[Item]) -> list[float]:
        return memo.cosines([i[2] for i in items], [i[1] for i in items]).tolist()

    return score


def encoder_score_fn(encoder: Any, params: MatchParams | None = None, *, difficulty: int = 2) -> ScoreFn:
    """The comprehension score as the scorer computes it: one cosine per answer, then :func:`match_score`.

    Costs one encoder input per distinct response plus one per distinct reference (cacheable).
    """
    params = params or MatchParams()
    params.ramp_for(difficulty)  # fail now, not after encoding, on an unknown difficulty
    memo = encoder if isinstance(encoder, _MemoEncoder) else _MemoEncoder(encoder)

    def score(items: Sequence[Item]) -> list[float]:
        cosines = memo.cosines([i[2] for i in items], [i[1] for i in items])
        return [
            match_score(float(c), response, reference, question, difficulty=difficulty, params=params)
            for c, (question, reference, response) in zip(cosines, items, strict=True)
        ]

    return score


# ------------------------------------------------------------------------------------------------- cross-validation


def blend_scores(
    cosines: np.ndarray,
    features: Sequence[MatchFeatures],
    lexical_weight: float,
    question_word_weight: float,
    ramps: Sequence[tuple[float, float]],
) -> np.ndarray:
    """:func:`match_score` vectorised over answers and ramps: ``[len(ramps), n]`` scores.

    Same maths (clipped cosine, recall fallback to the cosine, empty response -> 0), so the grid search of
    :func:`cross_validate` scores exactly what the scorer would.
    """
    cos = np.clip(np.asarray(cosines, dtype=np.float64), 0.0, 1.0)
    recall = np.array([np.nan if (r := f.recall(question_word_weight)) is None else r for f in features])
    similarity = np.where(np.isnan(recall), cos, (1.0 - lexical_weight) * cos + lexical_weight * np.nan_to_num(recall))
    empty = np.array([f.response_empty for f in features], dtype=bool)
    lo = np.array([r[0] for r in ramps])[:, None]
    hi = np.array([r[1] for r in ramps])[:, None]
    scores = np.clip((similarity[None, :] - lo) / (hi - lo), 0.0, 1.0)
    scores[:, empty] = 0.0
    return scores


@dataclass(frozen=True)
class Fit:
    lexical_weight: float
    question_word_weight: float
    zero_at: float
    one_at: float

    def __str__(self) -> str:
        return f"w={self.lexical_weight:g} q={self.question_word_weight:g} ramp=({self.zero_at:g}, {self.one_at:g})"


@dataclass(frozen=True)
class CvResult:
    pearson: float  # pooled held-out scores vs gold
    spearman: float
    folds: list[tuple[str, Fit, float]]  # (held-out group, parameters fitted without it, held-out Pearson)
    in_sample: tuple[Fit, float]  # best grid point on all the data


def cross_validate(
    cosines: np.ndarray,
    features: Sequence[MatchFeatures],
    gold: np.ndarray,
    groups: Sequence[str],
    *,
    lexical_weights: Iterable[float] = GRID_LEXICAL_WEIGHTS,
    question_word_weights: Iterable[float] = GRID_QUESTION_WORD_WEIGHTS,
    ramps: Sequence[tuple[float, float]] = GRID_RAMPS,
) -> CvResult:
    """Leave-one-group-out: fit the 4 parameters by grid search on the other groups, score the held-out one.

    Pearson on a training split is computed from per-group sums (total minus the held-out group's), so
    the whole grid is scored for every fold in one pass.
    """
    gold = np.asarray(gold, dtype=np.float64)
    labels, group_index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    if len(labels) < 2:
        raise ValueError("cross-validation needs at least two groups")
    indicator = np.zeros((len(gold), len(labels)))
    indicator[np.arange(len(gold)), group_index] = 1.0
    # per-group sums of y, y^2, count -> training-split sums for each fold
    count_g, y_g, yy_g = indicator.sum(0), gold @ indicator, (gold * gold) @ indicator
    count_t, y_t, yy_t = count_g.sum() - count_g, y_g.sum() - y_g, yy_g.sum() - yy_g

    n_folds = len(labels)
    best_train = np.full(n_folds + 1, -np.inf)  # last slot: all data (in-sample)
    best_fit: list[Fit | None] = [None] * (n_folds + 1)
    best_row: list[np.ndarray | None] = [None] * (n_folds + 1)
    for q in question_word_weights:
        for w in lexical_weights:
            scores = blend_scores(cosines, features, w, q, ramps)  # [R, n]
            x_g, xx_g, xy_g = scores @ indicator, (scores * scores) @ indicator, (scores * gold) @ indicator
            # training sums per fold, then the all-data column
            x = np.concatenate([x_g.sum(1, keepdims=True) - x_g, x_g.sum(1, keepdims=True)], axis=1)
            xx = np.concatenate([xx_g.sum(1, keepdims=True) - xx_g, xx_g.sum(1, keepdims=True)], axis=1)
            xy = np.concatenate([xy_g.sum(1, keepdims=True) - xy_g, xy_g.sum(1, keepdims=True)], axis=1)
            m = np.append(count_t, count_g.sum())
            y = np.append(y_t, y_g.sum())
            yy = np.append(yy_t, yy_g.sum())
            covariance = xy - x * y / m
            variance_x = xx - x * x / m
            variance_y = yy - y * y / m
            with np.errstate(invalid="ignore", divide="ignore"):
                r = covariance / np.sqrt(variance_x * variance_y)
            r = np.where(variance_x > 1e-12, r, -np.inf)
            rows = np.argmax(r, axis=0)
            for fold in range(n_folds + 1):
                value = r[rows[fold], fold]
                if value > best_train[fold]:
                    best_train[fold] = value
                    lo, hi = ramps[rows[fold]]
                    best_fit[fold] = Fit(w, q, lo, hi)
                    best_row[fold] = scores[rows[fold]]
    held_out = np.empty_like(gold)
    folds: list[tuple[str, Fit, float]] = []
    for fold, label in enumerate(labels):
        mask = group_index == fold
        row, fit = best_row[fold], best_fit[fold]
        if row is None or fit is None:
            raise ValueError(f"no usable parameters when holding out group {label!r} (constant scores)")
        held_out[mask] = row[mask]
        folds.append((str(label), fit, pearson(row[mask], gold[mask])))
    folds.sort(key=lambda fold: (not fold[0].isdigit(), int(fold[0]) if fold[0].isdigit() else 0, fold[0]))
    in_sample_fit = best_fit[n_folds]
    if in_sample_fit is None:
        raise ValueError("no usable parameters (constant scores)")
    return CvResult(
        pearson(held_out, gold), spearman(held_out, gold), folds, (in_sample_fit, float(best_train[n_folds]))
    )


# ------------------------------------------------------------------------------------------------- command line


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


def run_variant(
    data: AsagData,
    encoder: Any,
    *,
    params: MatchParams,
    difficulty: int,
    cv: bool,
    progress: Progress,
) -> dict[str, Any]:
    """Cosine, match_score and (optionally) cross-validated figures for one encoder."""
    memo = _MemoEncoder(encoder)
    texts = len({*data.responses, *data.references})
    progress(f"  encoding {texts} distinct texts on {getattr(encoder, 'provider', '?')} ...")
    cosine = evaluate(data, cosine_score_fn(memo))
    progress(f"  encoded in {cosine.seconds:.1f} s")
    scored = evaluate(data, encoder_score_fn(memo, params, difficulty=difficulty))
    result: dict[str, Any] = {"cosine": cosine, "match": scored, "cv": None}
    if cv:
        progress(f"  cross-validating over {len(set(data.groups))} groups ...")
        features = [match_features(r, ref, q) for q, ref, r in data.items()]
        result["cv"] = cross_validate(cosine.scores, features, data.gold, data.groups)
    return result


def plugin_score_fn(model_dir: Path, variant: str, *, threads: int | None, difficulty: int = 2) -> ScoreFn:
    """The ``embedding.similarity`` scorer itself, loaded through its entry point with the service's
    default settings (only the model directory, variant and threads set): the figure "as configured"."""
    import asyncio

    from plugins.context import PluginContext
    from plugins.manager import build_plugin_manager, collect_scorers
    from plugins.scorer import ScoreRequest

    config: dict[str, Any] = {"model_dir": str(model_dir), "variant": variant}
    if threads is not None:
        config["intra_op_threads"] = threads
    scorer: Any = collect_scorers(build_plugin_manager(["embedding"]), PluginContext(settings={"embedding": config}))[
        "embedding.similarity"
    ]

    async def run(items: Sequence[Item]) -> list[float]:
        requests = [
            ScoreRequest(
                question_id=str(index),
                kind="COMPREHENSION",
                prompt=question,
                response=response,
                answer_key=reference,
                topic=question,
                difficulty=difficulty,
            )
            for index, (question, reference, response) in enumerate(items)
        ]
        async with scorer:
            by_id: dict[str, float] = {}
            for start in range(0, len(requests), 64):  # the size of a busy moment's micro-batches
                for result in await scorer.score(requests[start : start + 64]):
                    by_id[result.question_id] = result.score
        return [by_id[r.question_id] for r in requests]

    return lambda items: asyncio.run(run(items))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scorers.embedding.asag_eval",
        description=(
            "Pearson/Spearman of the comprehension score vs human grades on the Mohler 2011 short-answer set "
            f"(paper's best Pearson: {PAPER_PEARSON}): plain cosine, match_score with default parameters, and "
            "leave-one-assignment-out cross-validation of its parameters. The data is read from --data at run "
            "time and never copied (licence unclear)."
        ),
    )
    parser.add_argument("--data", type=Path, required=True, help="mohler_unt_v2.tsv (tab-separated, header row)")
    parser.add_argument("--model-dir", type=Path, default=Path("var/models"), help="models (default: %(default)s)")
    parser.add_argument("--variant", choices=["fp32", "int8", "all"], default="all", help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--max-length", type=int, default=256, help="truncation in tokens (default: %(default)s)")
    parser.add_argument(
        "--difficulty", type=int, default=2, help="difficulty whose ramp match_score uses (default: %(default)s)"
    )
    parser.add_argument("--paper-set", action="store_true", help="only in_paper_set == 1 rows (the paper's 2,273)")
    parser.add_argument("--no-cv", action="store_true", help="skip the cross-validation")
    parser.add_argument("--folds", action="store_true", help="print the parameters fitted in each fold")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building missing models")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    progress: Progress = _quiet if args.quiet else _stderr

    if not args.data.is_file():
        print(
            f"error: data file {args.data} not found; pass --data with the path of mohler_unt_v2.tsv "
            "(e.g. ../shared/data/asag/mohler_unt_v2.tsv)",
            file=sys.stderr,
        )
        return 2
    params = MatchParams()
    try:
        params.ramp_for(args.difficulty)
        data = load_asag(args.data, paper_set=args.paper_set)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from scorers.embedding.encoder import OnnxSentenceEncoder
    from scorers.embedding.onnx_build import SourceModelMissingError, ensure_models, model_files

    variants = ["fp32", "int8"] if args.variant == "all" else [args.variant]
    try:
        if args.no_build:
            files = {v: model_files(args.model_dir, v) for v in variants}
            for v, f in files.items():
                if not f.model.is_file():
                    raise FileNotFoundError(f"{f.model} is missing ({v}); run without --no-build to build it")
        else:
            files = ensure_models(args.model_dir, variants, progress=not args.quiet)
    except (SourceModelMissingError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    questions = len(set(zip(data.questions, data.references, strict=True)))
    print(
        f"{args.data}: {len(data)} answers, {questions} questions, {len(set(data.groups))} groups"
        f"{' (paper set)' if args.paper_set else ''}; paper's best Pearson {PAPER_PEARSON}"
    )
    print(
        f"match_score defaults: lexical_weight={params.lexical_weight:g} "
        f"question_word_weight={params.question_word_weight:g} difficulty {args.difficulty} ramp "
        f"{params.ramp_for(args.difficulty)}"
    )
    print(f"{'variant':7s} {'method':44s} {'Pearson':>8s} {'Spearman':>9s}")
    for variant in variants:
        progress(f"{variant}:")
        encoder = OnnxSentenceEncoder(
            files[variant].model, files[variant].tokenizer, max_length=args.max_length, intra_op_threads=args.threads
        )
        result = run_variant(
            data, encoder, params=params, difficulty=args.difficulty, cv=not args.no_cv, progress=progress
        )
        plugin = evaluate(
            data, plugin_score_fn(args.model_dir, variant, threads=args.threads, difficulty=args.difficulty)
        )
        for label, metrics in (
            ("cosine", result["cosine"]),
            (f"match_score (defaults, difficulty {args.difficulty})", result["match"]),
            ("embedding.similarity plugin, as configured", plugin),
        ):
            print(f"{variant:7s} {label:44s} {metrics.pearson:8.4f} {metrics.spearman:9.4f}")
        cv: CvResult | None = result["cv"]
        if cv is not None:
            fit, value = cv.in_sample
            print(f"{variant:7s} {'match_score, leave-one-group-out CV':44s} {cv.pearson:8.4f} {cv.spearman:9.4f}")
            print(f"{variant:7s} {'match_score, in-sample best of the grid':44s} {value:8.4f} {'':>9s}  ({fit})")
            if args.folds:
                for label, fold_fit, fold_pearson in cv.folds:
                    print(f"{'':7s}   held out {label:>4s}: Pearson {fold_pearson:.4f}  fitted {fold_fit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
