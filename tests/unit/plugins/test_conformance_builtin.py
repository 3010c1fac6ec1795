"""The built-in rule scorers pass the scorer conformance suite, loaded through their entry point."""

from __future__ import annotations

from plugins.conformance import ScorerConformance


class TestRuleChoice(ScorerConformance):
    plugin_name = "rule"
    scorer_name = "rule.choice"


class TestRuleFreeResponse(ScorerConformance):
    plugin_name = "rule"
    scorer_name = "rule.free_response"


class TestRuleOverlap(ScorerConformance):
    plugin_name = "rule"
    scorer_name = "rule.overlap"
