"""Entry point ``embedding``: registers the embedding scorers, all sharing one model backend."""

from __future__ import annotations

from collections.abc import Callable

from plugins.context import PluginContext
from plugins.hookspecs import hookimpl
from plugins.scorer import Scorer
from scorers.embedding.backend import EmbeddingBackend
from scorers.embedding.config import PLUGIN_NAME, load_config
from scorers.embedding.scorers import CosineScorer, RubricScorer, SimilarityScorer

__all__ = ["register_scorers"]


@hookimpl
def register_scorers(register: Callable[[Scorer], None], context: PluginContext) -> None:
    """Register ``embedding.similarity``, ``embedding.cosine`` and ``embedding.rubric``. Nothing is
    loaded here: the model is built (if missing) and loaded when the first of them is opened."""
    config = load_config(context.config(PLUGIN_NAME))
    backend = EmbeddingBackend(config, context)
    for scorer_class in (SimilarityScorer, CosineScorer, RubricScorer):
        register(scorer_class(backend, config))
