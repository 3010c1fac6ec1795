"""Registration through the hook and the entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.context import PluginContext
from plugins.manager import build_plugin_manager, collect_scorers
from plugins.scorer import Scorer
from scorers.llm_rubric.config import ConfigError
from scorers.llm_rubric.plugin import register_scorers
from scorers.llm_rubric.rubric import RubricError
from scorers.llm_rubric.scorer import LlmRubricScorer


def registered(settings: dict[str, object]) -> list[Scorer]:
    scorers: list[Scorer] = []
    register_scorers(register=scorers.append, context=PluginContext(settings={"llm_rubric": settings}))
    return scorers


def test_registers_the_scorer_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CK_LLM_API_KEY", raising=False)
    [scorer] = registered({"base_url": "http://127.0.0.1:9/v1", "model": "local"})
    assert isinstance(scorer, LlmRubricScorer)
    assert scorer.describe() == {"endpoint_configured": True, "model": "local", "circuit": "closed"}


def test_registers_unconfigured_with_no_settings() -> None:
    [scorer] = registered({})
    assert isinstance(scorer, LlmRubricScorer) and scorer.describe()["endpoint_configured"] is False


def test_invalid_settings_stop_registration() -> None:
    with pytest.raises(ConfigError, match="llm_rubric.max_retries"):
        registered({"max_retries": "many"})


def test_a_missing_rubric_stops_registration(tmp_path: Path) -> None:
    with pytest.raises(RubricError, match="cannot read"):
        registered({"rubric_file": str(tmp_path / "none.toml")})


def test_loads_through_the_entry_point() -> None:
    pm = build_plugin_manager(["llm_rubric"])
    scorers = collect_scorers(pm, PluginContext())
    assert list(scorers) == ["llm.rubric"]
