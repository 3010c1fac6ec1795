"""The embedding model as a shared, lazily opened resource: built on first start if missing, loaded
once, served through one micro-batching :class:`~scorers.embedding.service.EmbeddingService`.

Several scorers share one backend; each enters it (reference counted), so the model loads when the
first scorer in use opens and is released when the last one closes.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from plugins.context import PluginContext
from scorers.embedding.config import EmbeddingConfig, rows_per_inference

__all__ = ["EmbeddingBackend", "EmbeddingUnavailableError"]

log = structlog.get_logger(__name__)


class EmbeddingUnavailableError(RuntimeError):
    """The backend was used before it was opened, or after it closed."""


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingBackend:
    """Model files, encoder and batching service for the embedding scorers."""

    def __init__(self, config: EmbeddingConfig, context: PluginContext) -> None:
        self.config = config
        self._context = context
        self._lock = asyncio.Lock()
        self._users = 0
        self._service: Any = None
        self._encoder: Any = None
        self.model_version = ""

    # ------------------------------------------------------------------------------------ lifecycle

    def _model_paths(self) -> tuple[Path, Path]:
        config = self.config
        if config.model_path:
            return Path(config.model_path), Path(config.tokenizer_path)
        from scorers.embedding.onnx_build import ensure_models, model_files

        model_dir = config.resolved_model_dir(self._context)
        if config.build_if_missing:

            def progress(message: str) -> None:
                log.info("embedding model build", step=message)

            ensure_models(model_dir, (config.variant,), progress=progress)
        files = model_files(model_dir, config.variant)
        if not files.model.is_file():
            raise FileNotFoundError(
                f"{files.model} is missing and plugins.config.embedding.build_if_missing is off; "
                "build it with `make models`"
            )
        return files.model, files.tokenizer

    def _load(self) -> tuple[Any, str]:
        from scorers.embedding.encoder import OnnxSentenceEncoder

        model, tokenizer = self._model_paths()
        encoder = OnnxSentenceEncoder(
            model,
            tokenizer,
            providers=self.config.providers,
            max_length=self.config.max_length,
            intra_op_threads=self.config.intra_op_threads,
            batch_size=self.config.max_batch,
            allow_spinning=self.config.spin_threads,
        )
        # See EmbeddingConfig.rows_per_inference: int8 runs one sentence per call unless told otherwise.
        encoder.batch_size = rows_per_inference(encoder.variant, self.config.max_batch, self.config.rows_per_inference)
        # The cache key must change whenever the vectors could: same file bytes, same settings.
        version = f"{model.stem}:{_file_digest(model)[:16]}:{self.config.max_length}"
        return encoder, version

    async def open(self) -> None:
        """Load (building first if needed) on the first call; later calls only count users."""
        from scorers.embedding.service import EmbeddingService

        async with self._lock:
            self._users += 1
            if self._service is not None:
                return
            try:
                log.info("loading embedding model", variant=self.config.variant, custom=bool(self.config.model_path))
                encoder, version = await asyncio.to_thread(self._load)
                service = EmbeddingService(
                    encoder,
                    model_version=version,
                    max_batch=self.config.max_batch,
                    window_ms=self.config.batch_window_ms,
                    cache_entries=self.config.cache_entries,
                    shared_cache=self._context.shared_cache,
                    shared_cache_ttl_seconds=self.config.shared_cache_ttl_seconds,
                )
                await service.__aenter__()
            except BaseException:
                self._users -= 1
                raise
            self._encoder, self._service, self.model_version = encoder, service, version
            log.info(
                "embedding model ready",
                provider=encoder.provider,
                providers=encoder.providers,
                variant=encoder.variant,
                model_version=version,
            )

    async def close(self) -> None:
        """Release one user; the last one stops the service."""
        async with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._service is None:
                return
            service, self._service, self._encoder = self._service, None, None
            await service.__aexit__(None, None, None)

    # ------------------------------------------------------------------------------------ use

    async def embed(self, texts: list[str], *, cache: bool = False) -> np.ndarray:
        """Unit vectors for ``texts`` (``cache=True`` for profile-side texts that recur)."""
        if self._service is None:
            raise EmbeddingUnavailableError("the embedding model is not loaded (scorer not opened)")
        return await self._service.embed(texts, cache=cache)

    def truncated(self, text: str) -> bool:
        """Whether the model sees only the start of ``text`` (it is longer than ``max_length`` tokens)."""
        if self._encoder is None:
            raise EmbeddingUnavailableError("the embedding model is not loaded (scorer not opened)")
        encoding = self._encoder.tokenizer.encode(text)
        return bool(encoding.overflowing) or len(encoding.ids) > self._encoder.max_length

    def describe(self) -> dict[str, Any]:
        """Provider, variant and batching statistics, for ``/ready``."""
        if self._encoder is None:
            return {"loaded": False}
        return {
            "loaded": True,
            "provider": self._encoder.provider,
            "variant": self._encoder.variant,
            "modelVersion": self.model_version,
            "maxLength": self._encoder.max_length,
            "rowsPerInference": self._encoder.batch_size,
            "batching": self._service.stats(),
        }
