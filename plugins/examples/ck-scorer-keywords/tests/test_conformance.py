"""keywords.overlap against the Connection Key scorer conformance suite (needs the package installed)."""

from __future__ import annotations

from plugins.conformance import ScorerConformance


class TestKeywordOverlap(ScorerConformance):
    plugin_name = "keywords"
    scorer_name = "keywords.overlap"
    plugin_config = {"min_word_length": 3, "extra_stop_words": ["ada"]}
