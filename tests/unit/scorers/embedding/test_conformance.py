"""The built-in embedding scorers pass the plugin conformance suite, loaded through their entry point
with the session's prebuilt model (int8, the default variant)."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.conformance import ScorerConformance
from plugins.context import PluginContext
from scorers.embedding.onnx_build import ModelFiles


class _Embedding(ScorerConformance):
    plugin_name = "embedding"
    plugin_config = {"intra_op_threads": 2}

    @pytest.fixture
    def plugin_context(self, tmp_path: Path, built: dict[str, ModelFiles]) -> PluginContext:
        config = {**self.plugin_config, "model_dir": str(built["int8"].model.parent)}
        return PluginContext(settings={"embedding": config}, data_dir=tmp_path, environment="test")


class TestSimilarityConformance(_Embedding):
    scorer_name = "embedding.similarity"


class TestRubricConformance(_Embedding):
    scorer_name = "embedding.rubric"
