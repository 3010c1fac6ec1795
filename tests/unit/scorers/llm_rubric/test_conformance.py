"""llm.rubric passes the scorer conformance suite, against the local fake chat-completions server."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, ClassVar

import pytest

from plugins.conformance import ScorerConformance
from plugins.context import PluginContext
from scorers.llm_rubric.config import load_config
from scorers.llm_rubric.plugin import build_scorer
from scorers.llm_rubric.rubric import Rubric
from scorers.llm_rubric.scorer import LlmRubricScorer
from tests.unit.scorers.llm_rubric.conftest import FakeChatServer


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TestLlmRubric(ScorerConformance):
    plugin_name = "llm_rubric"
    scorer_name = "llm.rubric"
    plugin_config: ClassVar[dict[str, Any]] = {"api_key": "sk-conformance-secret", "timeout_seconds": 2.0}
    can_be_unavailable = True

    @pytest.fixture
    def plugin_context(self, tmp_path: Path, llm_server: FakeChatServer) -> PluginContext:
        settings = {"llm_rubric": {**self.plugin_config, "base_url": llm_server.base_url}}
        return PluginContext(settings=settings, data_dir=tmp_path, environment="test")

    @pytest.fixture
    def scorer(self, plugin_context: PluginContext) -> Any:
        return lambda: build_scorer(plugin_context)

    @pytest.fixture
    def unavailable_scorer(self, rubric: Rubric) -> Any:
        raw = {"base_url": f"http://127.0.0.1:{_closed_port()}/v1", "backoff_base_seconds": 0.01}
        return lambda: LlmRubricScorer(load_config(raw, environ={}), rubric)
