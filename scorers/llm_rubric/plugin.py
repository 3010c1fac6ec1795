"""Entry point ``llm_rubric``: registers the ``llm.rubric`` scorer built from ``[plugins.config.llm_rubric]``.

Invalid settings or an invalid rubric file stop start-up here with a message naming the problem. An
empty ``base_url`` still registers the scorer; it then always raises ``ScorerUnavailableError``.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from plugins.context import PluginContext
from plugins.hookspecs import hookimpl
from plugins.scorer import Scorer
from scorers.llm_rubric.config import CONFIG_NAME, load_config
from scorers.llm_rubric.rubric import load_rubric, resolve_path
from scorers.llm_rubric.scorer import LlmRubricScorer

__all__ = ["build_scorer", "register_scorers"]

log = structlog.get_logger(__name__)


def build_scorer(context: PluginContext) -> LlmRubricScorer:
    """The scorer for these settings (reads the rubric file; opens no connection)."""
    config = load_config(context.config(CONFIG_NAME))
    rubric = load_rubric(resolve_path(config.rubric_file))
    if not config.configured:
        log.info("llm rubric scorer has no endpoint (base_url empty); it will defer to the fallback scorer")
    return LlmRubricScorer(config, rubric)


@hookimpl
def register_scorers(register: Callable[[Scorer], None], context: PluginContext) -> None:
    """Register ``llm.rubric``."""
    register(build_scorer(context))
